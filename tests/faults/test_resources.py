"""Faults against resources: a connection flood past the maximum, runaway allocation by one handler.

Each checks that the fault is contained (the offender is refused or ended, one log line says so), that
well-behaved clients beside it are served, and that the server's numbers come back to their baseline.
"""

from __future__ import annotations

import re
import select
import socket
import subprocess
import sys
import time

from conftest import ROOT, console

ECHO_AND_GROW = """
local net = require "moonlet.net"
net.listen { host = "127.0.0.1", port = 0, handler = function(conn)
  while true do
    local line = conn:readline()
    if not line then return end
    if line == "grow" then
      local t = {}
      for i = 1, 1e9 do t[i] = ("x"):rep(1000) .. i end   -- runs out of the Lua heap
    end
    conn:write(line, "\\n")
  end
end }
"""


def stats(server) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return {k: int(v) for k, v in re.findall(r"^(\w+): (\d+)$", console(server, "\\stats"), re.M)}


def test_a_flood_past_max_connections_is_accepted_and_closed_with_one_log_line(lua_server) -> None:  # type: ignore[no-untyped-def]
    server = lua_server(ECHO_AND_GROW, options=["--max-connections", "5"])
    kept = [server.connect() for _ in range(5)]
    for c in kept:
        c.send(b"ping\n")
        assert c.line() == b"ping"
    flood = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(50)]
    for s in flood:
        assert s.recv(10) == b""  # closed at once
        s.close()
    server.wait_log(re.compile(rb"refusing connections: 5 open \(max_connections 5\)"))
    assert server.log_text().count("refusing connections") == 1  # one line per interval, not per connection
    kept[0].send(b"still\n")
    assert kept[0].line() == b"still"
    assert stats(server)["connections"] == 5  # the console still works
    kept[1].close()
    time.sleep(0.2)
    again = server.connect()
    again.send(b"room again\n")
    assert again.line() == b"room again"


def test_runaway_allocation_ends_only_its_handler_and_memory_comes_back(lua_server) -> None:  # type: ignore[no-untyped-def]
    server = lua_server(ECHO_AND_GROW, options=["--max-memory", str(96 << 20)])
    calm = server.connect()
    calm.send(b"hello\n")
    assert calm.line() == b"hello"
    before = stats(server)["lua_memory_bytes"]
    greedy = server.connect()
    greedy.send(b"grow\n")
    assert greedy.read_all() == b""  # its handler ended, its connection closed
    server.wait_log(re.compile(rb"not enough memory"))
    calm.send(b"still here\n")
    assert calm.line() == b"still here"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "runtime",
            "repl",
            "-e",
            "collectgarbage() collectgarbage()",
            str(server.proc.pid),
        ],
        cwd=ROOT,
        capture_output=True,
        timeout=30,
        check=True,
    )
    after = stats(server)["lua_memory_bytes"]
    assert after < before * 1.5 + 200_000, (before, after)  # the greedy table was released


HTTP_AND_LINES = """
local net, http = require "moonlet.net", require "moonlet.http"
net.listen { host = "127.0.0.1", port = 0, handler = function(conn)
  while true do
    local line = conn:readline()
    if not line then return end
    conn:write(line, "\\n")
  end
end }
assert(http.serve { host = "127.0.0.1", port = 0, handler = function() return 200, nil, "ok" end })
"""


def test_http_connections_count_against_max_connections_and_can_be_killed(lua_server) -> None:  # type: ignore[no-untyped-def]
    server = lua_server(HTTP_AND_LINES, options=["--max-connections", "4"])
    http_port = int(server.wait_log(re.compile(rb"listening on \S+:(\d+) \(http\)")).group(1))
    lines = [server.connect() for _ in range(2)]
    held = []
    for _ in range(2):  # two keep-alive HTTP connections, answered once and kept open
        s = socket.create_connection(("127.0.0.1", http_port), timeout=5)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(1000).endswith(b"ok")
        held.append(s)
    time.sleep(0.2)
    for port in (server.port, http_port):  # 4 open, stream and HTTP together: both kinds are refused
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        assert s.recv(10) == b""
        s.close()
    server.wait_log(re.compile(rb"refusing connections: 4 open \(max_connections 4\)"))
    rows = console(server, "\\connections")
    http_row = next(row for row in rows.splitlines() if " http " in row)
    killed = console(server, f"\\kill {http_row.split()[0]}")
    assert "closed http" in killed
    readable, _, _ = select.select(held, [], [], 5)
    assert len(readable) == 1 and readable[0].recv(10) == b""  # that connection is gone, the other is not
    lines[0].send(b"still\n")
    assert lines[0].line() == b"still"
    for s in held:
        s.close()
