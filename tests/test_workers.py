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

import pytest

from conftest import ROOT, Server, run_script


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_pair() -> int:
    """A port P such that P and P + 1 are both free now."""
    for _ in range(50):
        first = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", first + 1))
            except OSError:
                continue
            return first
    raise AssertionError("no two consecutive free ports")


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
        return ask_on(s, text)


def ask_on(s: socket.socket, text: bytes) -> bytes:
    """Send one line on ``s`` and read the one-line answer (b"" if the server closed first)."""
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
    assert repl.stdout.strip() == b'"1"' and b"worker 1 of 2" in repl.stderr


def test_a_killed_worker_is_replaced_and_clients_are_still_served(lua_server) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    server = lua_server(APP, str(port), options=["--workers", "2"])
    wait_count(server, "listening on", 2)
    first = int(server.wait_log(re.compile(rb"worker 1 started \(pid (\d+)\)")).group(1))
    os.kill(first, signal.SIGKILL)
    time.sleep(0.3)  # (connections already queued on the dead worker's socket are lost with it)
    for _ in range(20):  # the other worker serves meanwhile
        assert ask(port).startswith(b"hi ")
    server.wait_log(re.compile(rb"worker 1 \(pid %d\) was killed by SIGKILL" % first))
    server.wait_log(re.compile(rb"worker 1 started \(pid (?!%d)\d+\)" % first), timeout=15)
    wait_count(server, "listening on", 3)
    for _ in range(10):
        assert ask(port).startswith(b"hi ")


def test_a_worker_killed_from_outside_is_started_again_at_once_every_time(lua_server) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL (the OOM killer, an operator) is not a crash loop: no back-off, however often and however
    young the worker was."""
    port = free_port()
    server = lua_server(APP, str(port), options=["--workers", "2"])
    wait_count(server, "listening on", 2)
    started = re.compile(r"worker 1 started \(pid (\d+)\)")
    seen: list[int] = []

    def next_worker_1() -> int:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            server.wait_log(b"started", timeout=1)  # (reads what the server has logged so far)
            fresh = [int(p) for p in started.findall(server.log_text()) if int(p) not in seen]
            if fresh:
                seen.append(fresh[0])
                return fresh[0]
            time.sleep(0.05)
        raise AssertionError(server.log_text()[-2000:])

    pid = next_worker_1()
    for _ in range(3):
        os.kill(pid, signal.SIGKILL)
        server.wait_log(re.compile(rb"worker 1 \(pid %d\) was killed by SIGKILL after [\d.]+s; starting it "
                                   rb"again now" % pid))  # fmt: skip
        pid = next_worker_1()
    assert "backing off" not in server.log_text()
    wait_count(server, "listening on", 3)  # (at least: a replacement killed before it listened did not)
    for _ in range(5):
        assert ask(port).startswith(b"hi ")


CRASH_APP = """
local net = require "moonlet.net"
net.listen { host = "127.0.0.1", port = tonumber(arg[1]), handler = function(c) c:write("hi\\n") end }
sleep(0.3)
error("crashing on purpose")  -- (after it listened: a crash loop)
"""


def test_while_no_worker_listens_connections_are_refused_at_once_not_left_waiting(lua_server) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    server = lua_server(CRASH_APP, str(port), options=["--workers", "2"])
    server.wait_log(b"no worker is listening: new connections are refused", timeout=10)
    started = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            answer = s.recv(10)
    except ConnectionResetError:  # (during connect, too, when this process waited for a core meanwhile)
        answer = b"(reset)"
    took = time.monotonic() - started
    # reset by the supervisor at once, instead of waiting in the queue for the worker started a second later
    assert answer in (b"", b"(reset)") and took < 0.5, (answer, took)
    server.wait_log(b"a worker listens again: new connections are served", timeout=10)


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

    threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        server.proc.send_signal(signal.SIGHUP)
        server.wait_log(b"SIGHUP: starting generation 1")
        wait_count(server, "listening on", 4)  # the new generation listens beside the old
        wait_count(server, "stopped listening on", 2)  # then the old one drains
        time.sleep(0.5)
    finally:
        stop.set()  # (whatever happened: the clients must not outlive the test)
        for t in threads:
            t.join(10)
    assert failures == [] and done[0] > 50


SLOW_APP = """
local net, log = require "moonlet.net", require "moonlet.log"
net.listen { host = "127.0.0.1", port = tonumber(arg[1]), handler = function(conn)
  while true do
    local line = conn:readline()
    if not line then return end
    if line == "slow" then log.info("a slow request is in its handler") sleep(1) end
    conn:write(line, " ", os.getenv("MOONLET_WORKER") or "0", "\\n")
  end
end }
"""


def in_flight(port: int, count: int) -> tuple[list[threading.Thread], list[bytes]]:
    """``count`` clients, each sending one slow request (answered after 1 s) on its own connection."""
    answers: list[bytes] = []
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)]

    def one(s: socket.socket) -> None:
        with s:
            try:
                answers.append(ask_on(s, b"slow"))
            except OSError as e:
                answers.append(repr(e).encode())

    threads = [threading.Thread(target=one, args=(s,)) for s in socks]
    for t in threads:
        t.start()
    return threads, answers


def test_a_signal_to_the_process_group_drains_like_one_to_the_supervisor(lua_server) -> None:  # type: ignore[no-untyped-def]
    # Ctrl-C in a terminal, `timeout` and systemd signal every process of the group: supervisor and workers
    port = free_port()
    server = lua_server(SLOW_APP, str(port), options=["--workers", "2"])
    wait_count(server, "listening on", 2)
    threads, answers = in_flight(port, 6)
    wait_count(server, "a slow request is in its handler", 6)
    os.killpg(server.proc.pid, signal.SIGINT)
    for t in threads:
        t.join(10)
    assert len(answers) == 6 and all(a.startswith(b"slow ") for a in answers), answers
    assert server.proc.wait(10) == 0
    server._read_log(0.5)
    assert b"stopping now" not in b"".join(server.log_lines), server.log_text()


def test_a_dead_workers_share_of_new_connections_is_served_at_once(lua_server) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    server = lua_server(SLOW_APP, str(port), options=["--workers", "2"])
    wait_count(server, "listening on", 2)
    first = int(server.wait_log(re.compile(rb"worker 1 started \(pid (\d+)\)")).group(1))
    os.kill(first, signal.SIGKILL)
    slow = []
    for _ in range(40):  # every new connection answered within 1 s while worker 1 is down
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.settimeout(1)
            assert ask_on(s, b"hi").startswith(b"hi 2")
        slow += [time.monotonic() - started] if time.monotonic() - started > 0.5 else []
    assert slow == []
    server.wait_log(b"takes the connections of slot 1")
    server.wait_log(re.compile(rb"worker 1 \(pid %d\) was killed by SIGKILL" % first))
    wait_count(server, "listening on", 3, timeout=15)  # the replacement
    server.wait_log(b"slot 1 has its worker again", timeout=5)  # and the stand-in lets its socket go


def test_sighup_with_an_app_that_no_longer_starts_keeps_the_old_generation(run_app, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    app = tmp_path / "reload_app.lua"
    app.write_text(SLOW_APP)
    server = run_app(app, str(port), options=["--workers", "2"])
    wait_count(server, "listening on", 2)
    app.write_text("local x = = 1\n")  # a syntax error
    server.proc.send_signal(signal.SIGHUP)
    server.wait_log(b"SIGHUP: generation 1 did not start", timeout=15)
    assert b"unexpected symbol" in b"".join(server.log_lines)  # the app's own error is in the log
    for _ in range(10):
        assert ask(port).startswith(b"hi ")
    app.write_text(SLOW_APP)  # fixed: a later SIGHUP goes through
    server.proc.send_signal(signal.SIGHUP)
    server.wait_log(b"SIGHUP: generation 1 listens; draining generation 0", timeout=15)
    for _ in range(10):
        assert ask(port).startswith(b"hi ")


def test_a_connection_made_during_a_drain_is_refused_at_once(lua_server) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    server = lua_server(SLOW_APP, str(port), options=["--workers", "2"])
    wait_count(server, "listening on", 2)
    threads, answers = in_flight(port, 2)
    wait_count(server, "a slow request is in its handler", 2)
    server.proc.send_signal(signal.SIGTERM)
    wait_count(server, "draining", 3)  # (the supervisor's line and each worker's)
    started = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.settimeout(5)
            refused = ask_on(s, b"hi") == b""
    except (ConnectionRefusedError, ConnectionResetError):
        refused = True
    assert refused and time.monotonic() - started < 0.5
    for t in threads:
        t.join(10)
    assert [a[:5] for a in answers] == [b"slow "] * 2  # those in flight finish


def test_each_worker_has_its_tcp_console_and_leaves_no_socket_file(lua_server) -> None:  # type: ignore[no-untyped-def]
    from runtime.console.files import runtime_dir

    port, console = free_port(), free_port_pair()
    server = lua_server(APP, str(port), options=["--workers", "2", "--console-tcp", str(console)])
    wait_count(server, "listening on", 2)
    wait_count(server, "console also on tcp", 2)
    text = server.log_text()
    assert f"127.0.0.1:{console} " in text and f"127.0.0.1:{console + 1} " in text
    assert "in use" not in text
    second = int(server.wait_log(re.compile(rb"worker 2 started \(pid (\d+)\)")).group(1))
    assert (runtime_dir() / f"{second}.sock").exists()
    os.kill(second, signal.SIGKILL)
    server.wait_log(re.compile(rb"worker 2 \(pid %d\) was killed" % second))
    time.sleep(0.2)
    assert not [p for p in runtime_dir().iterdir() if p.stem == str(second)]


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
    assert lines[7].startswith("false\t")
    assert "bad argument #2 to 'set' (string, number or boolean expected, got table)" in lines[7]


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
    for _ in range(300):  # (which worker wins an accept is the kernel's choice: ask until both answered)
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(path))
            seen.add(s.recv(10).strip())
        if len(seen) == 2:
            break
        time.sleep(0.005)
    assert seen == {b"1", b"2"}  # one socket, both workers accepting from it
    assert server.stop(signal.SIGTERM) == 0
    assert not path.exists()


SINGLE_APP = """
local net, workers = require "moonlet.net", require "moonlet.workers"
workers.single("the counter is a Lua number in this process")
local count = 0
net.listen { host = "127.0.0.1", port = tonumber(arg[1]), handler = function(conn)
  while conn:readline() do
    count = count + 1
    conn:write("hi ", workers.id(), " ", count, "\\n")
  end
end }
"""


@pytest.mark.parametrize("workers", ["auto", "3"])
def test_an_app_that_declares_state_in_memory_runs_as_one_process(tmp_path: Path, workers: str) -> None:
    app = tmp_path / "single.lua"
    app.write_text(SINGLE_APP)
    port = free_port()
    server = Server(app, [str(port)], options=["--workers", workers])
    try:
        server.wait_log(b"the app runs as one process: the counter is a Lua number in this process")
        if workers == "3" or (os.cpu_count() or 1) > 1:
            server.wait_log(re.compile(rb"1 worker instead of (--workers 3|one per core)"))
        # every new connection reaches the one store: 30 answers numbered 1..30, none lost or stranded
        answers = [ask(port).split() for _ in range(30)]
        assert [int(a[2]) for a in answers] == list(range(1, 31)), answers
        assert {a[1] for a in answers} == {answers[0][1]}
        assert "more workers" not in server.log_text()
    finally:
        assert server.stop(signal.SIGTERM) == 0


def test_declaring_one_process_after_listening_is_an_error(tmp_path: Path) -> None:
    script = tmp_path / "late.lua"
    script.write_text(
        'local net = require "moonlet.net"\n'
        "local l = net.listen { port = 0, handler = function() end }\n"
        'print(pcall(require("moonlet.workers").single, "too late"))\n'
        'print(pcall(require("moonlet.workers").single))\n'
        "l:close()\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "runtime", "run", "--workers", "1", str(script)],
        cwd=ROOT, capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    lines = done.stdout.decode().splitlines()
    assert lines[0].startswith("false\t") and "before the app listens" in lines[0], lines
    assert "bad argument #1 to 'single'" in lines[1], lines
    assert b"1 worker process (--workers 1)" in done.stderr


TWO_ANY_PORTS = """
local net = require "moonlet.net"
net.listen { port = 0, handler = function(conn) conn:write("first\\n") end }
net.listen { port = 0, handler = function(conn) conn:write("second\\n") end }
"""


def test_each_listener_on_port_0_gets_a_port_of_its_own_shared_by_every_worker(lua_server) -> None:  # type: ignore[no-untyped-def]
    server = lua_server(TWO_ANY_PORTS, options=["--workers", "2"])
    deadline = time.monotonic() + 15
    while len(ports := re.findall(rb"listening on 127\.0\.0\.1:(\d+)", server.log_text().encode())) < 4:
        assert time.monotonic() < deadline, server.log_text()
        time.sleep(0.05)
    assert len(set(ports)) == 2, ports  # (the Nth port 0 of each worker is the same port: not one for all)
    first, second = ports[0], next(p for p in ports if p != ports[0])
    for port, said in ((first, b"first"), (second, b"second")):
        for _ in range(6):  # (either worker may take it: each answers as the listener it opened)
            with socket.create_connection(("127.0.0.1", int(port)), timeout=5) as s:
                assert s.makefile("rb").readline() == said + b"\n"
