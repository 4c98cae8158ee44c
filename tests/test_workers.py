"""Worker processes (moonlet run --workers N) and the shared dictionary."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import ROOT, Server, run_script


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


APP = """
local net = require "moonlet.net"
local shared = require "moonlet.shared"
local hits = shared.dict("hits")
for _ = 1, 500 do hits:incr("boot", 1, 0) end   -- every worker adds 500 at start, concurrently
net.listen { host = "127.0.0.1", port = tonumber(arg[1]), handler = function(conn)
  while true do
    local line = conn:readline()
    if not line then return end
    hits:incr("requests", 1, 0)
    conn:write(line, " ", os.getenv("MOONLET_WORKER") or "0", " ", hits:get("boot"), "\\n")
  end
end }
"""


def wait_count(server, text: str, count: int, timeout: float = 20) -> None:  # type: ignore[no-untyped-def]
    """Wait until ``text`` appears ``count`` times in the server's log (every worker logs its own lines)."""
    deadline = time.monotonic() + timeout
    while server.log_text().count(text) < count:
        assert time.monotonic() < deadline, f"{text!r} not {count} times in:\n{server.log_text()}"
        server._read_log(0.1)


def ask(port: int, text: bytes = b"hi") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(text + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(100)
            if not chunk:
                break
            data += chunk
    return data


def test_workers_share_the_port_and_the_dictionary(run_app, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    app = tmp_path / f"shared_workers_{port}.lua"  # a name no other server has: moonlet repl finds it by name
    app.write_text(APP)
    server = run_app(app, str(port), options=["--workers", "2"])
    wait_count(server, "listening on", 2)
    seen = set()
    for _ in range(40):
        word, worker, boot = ask(port).split()
        assert word == b"hi" and boot == b"1000"  # 2 x 500 increments, none lost
        seen.add(worker)
    assert seen == {b"1", b"2"}
    # moonlet repl APP reaches the first worker of the app's supervisor (each worker has its own console)
    app_name = app.name
    repl = subprocess.run(
        [sys.executable, "-m", "runtime", "repl", app_name, "-e", "return os.getenv('MOONLET_WORKER')"],
        cwd=ROOT, capture_output=True, timeout=20, check=False,
    )  # fmt: skip
    assert repl.returncode == 0, repl.stderr
    assert repl.stdout.strip() == b"1" and b"worker 1 of 2" in repl.stderr


def test_a_killed_worker_is_replaced_and_clients_are_still_served(lua_server) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    server = lua_server(APP, str(port), options=["--workers", "2"])
    wait_count(server, "listening on", 2)
    first = int(server.wait_log(re.compile(rb"worker 1 started \(pid (\d+)\)")).group(1))
    os.kill(first, signal.SIGKILL)
    time.sleep(0.3)  # (connections already queued on the dead worker's socket are lost with it)
    for _ in range(20):  # the other worker serves meanwhile
        assert ask(port).startswith(b"hi ")
    server.wait_log(re.compile(rb"worker 1 \(pid %d\) exited with status -9" % first))
    server.wait_log(re.compile(rb"worker 1 started \(pid (?!%d)\d+\)" % first), timeout=15)
    wait_count(server, "listening on", 3)
    for _ in range(10):
        assert ask(port).startswith(b"hi ")


def test_sighup_reload_under_load_loses_no_connection_or_request(lua_server) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    server = lua_server(APP, str(port), options=["--workers", "2"])
    wait_count(server, "listening on", 2)
    stop = threading.Event()
    failures: list[str] = []
    done = [0]

    def client() -> None:
        while not stop.is_set():
            try:
                if not ask(port).startswith(b"hi "):
                    failures.append("bad reply")
                done[0] += 1
            except OSError as e:
                failures.append(repr(e))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    server.proc.send_signal(signal.SIGHUP)
    server.wait_log(b"SIGHUP: starting generation 1")
    wait_count(server, "listening on", 4)  # the new generation listens beside the old
    wait_count(server, "stopped listening on", 2)  # then the old one drains
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(10)
    assert failures == [] and done[0] > 50


def test_shared_dictionary_operations(tmp_path: Path) -> None:
    proc = run_script(
        tmp_path,
        """
        local d = require("moonlet.shared").dict("d")
        print(d:set("a", "x"), d:get("a"), d:get("missing"))
        print(d:add("a", "y"), d:add("b", 1), d:replace("c", 1), d:replace("b", 2.5), d:get("b"))
        print(select(2, d:add("a", "y")), select(2, d:replace("c", 1)), select(2, d:incr("absent")))
        print(d:incr("n", 5, 10), d:incr("n"), d:incr("absent"), d:incr("a"))
        d:set("t", true, 0.05)
        print(d:get("t"))
        sleep(0.1)
        print(d:get("t"), d:delete("a"), d:get("a"))
        local keys = d:keys()
        table.sort(keys)
        print(table.concat(keys, ","))
        print(pcall(d.set, d, "k", {}))
        """,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    lines = proc.stdout.decode().splitlines()
    assert lines[:6] == [
        "true\tx\tnil",
        "false\ttrue\tfalse\ttrue\t2.5",
        "exists\tnot found\tnot found",
        "15\t16\tnil\tnil\tnot a number",
        "true",
        "nil\ttrue\tnil",
    ]
    assert lines[6] == "b,n"
    assert lines[7].startswith("false\t") and "bad value" in lines[7]


def test_default_is_one_worker_per_core_once_the_app_listens(tmp_path: Path) -> None:
    script = tmp_path / "script.lua"
    script.write_text('print("ran once") error("and failed", 0)\n')
    done = subprocess.run(  # no --workers: the default
        [sys.executable, "-m", "runtime", "run", str(script)],
        cwd=ROOT,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.stdout == b"ran once\n"  # a script never listens: one worker runs it, once
    assert done.returncode == 1 and b"and failed" in done.stderr  # and its status is the command's

    app = tmp_path / "app.lua"
    app.write_text(APP)
    port = free_port()
    server = Server(app, [str(port)], options=["--workers", "auto"])  # what the default means, explicitly
    cores = os.cpu_count() or 1
    wait_count(server, "listening on", cores)
    if cores > 1:
        assert f"starting {cores - 1} more workers (one per core)" in server.log_text()
    assert {ask(port).split()[1] for _ in range(10 * cores)} <= {str(i + 1).encode() for i in range(cores)}
    assert server.stop(signal.SIGTERM) == 0


def test_workers_share_a_unix_socket_and_the_supervisor_removes_it(run_app, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "app.sock"
    app = tmp_path / "unix_app.lua"
    app.write_text(
        f'require("moonlet.net").listen {{ path = "{path}", handler = function(conn)\n'
        '  conn:write(os.getenv("MOONLET_WORKER"), "\\n") end }\n'
    )
    server = run_app(app, options=["--workers", "2"], ready=re.compile(rb"listening on (\S+)"))
    wait_count(server, "listening on", 2)
    seen = set()
    for _ in range(60):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(path))
            seen.add(s.recv(10).strip())
    assert seen == {b"1", b"2"}  # one socket, both workers accepting from it
    assert server.stop(signal.SIGTERM) == 0
    assert not path.exists()
