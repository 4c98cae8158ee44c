"""Faults against resources: a connection flood past the maximum, runaway allocation by one handler.

Each checks that the fault is contained (the offender is refused or ended, one log line says so), that
well-behaved clients beside it are served, and that the server's numbers come back to their baseline.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time

from conftest import ROOT

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
    out = subprocess.run(
        [sys.executable, "-m", "runtime", "repl", "-e", "\\stats", str(server.proc.pid)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return {k: int(v) for k, v in re.findall(r"^(\w+): (\d+)$", out, re.M)}


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
