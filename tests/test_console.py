"""The console (moonlet repl): protocol transcripts, -e, stdin, security, stalls, and a pty session."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ENGINE, ROOT

APP = """
local net = require "moonlet.net"
counter = 0
net.listen { host = "127.0.0.1", port = 0, handler = function(conn)
  while true do
    local line = conn:readline()
    if not line then return end
    counter = counter + 1
    conn:write(line, "\\n")
  end
end }
spawn(function() sleep(3600) end)
"""


def repl(server, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return subprocess.run(
        [sys.executable, "-m", "runtime", "repl", *args, str(server.proc.pid)],
        cwd=ROOT,
        input=stdin.decode() if stdin else None,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def console_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR")
    return Path(base) / "moonlet" if base else Path("/tmp") / f"moonlet-{os.getuid()}"


def test_eval_prints_values_runs_waiting_code_and_reports_errors(lua_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "greet.lua").write_text('return { word = "hello" }\n')
    server = lua_server(APP)
    c = server.connect()
    c.send(b"one\n")
    assert c.line() == b"one"
    assert repl(server, "-e", "1 + 1").stdout == "2\n"
    assert repl(server, "-e", "return counter, 'x', {1, 2, k = true}, nil").stdout.splitlines() == [
        "1",
        '"x"',
        "{ 1, 2, k = true }",
        "nil",
    ]
    waited = repl(
        server,
        "-e",
        "local t = require('moonlet.time') local a = t.monotonic() sleep(0.1) "
        "return t.monotonic() - a >= 0.09",
    )
    assert waited.stdout == "true\n"
    assert repl(server, "-e", "return require('greet').word").stdout == '"hello"\n'
    failed = repl(server, "-e", "error('boom')")
    # (LuaJIT names no position for an error raised by a function called in a tail call: `return error(...)`)
    where = "console:1: boom" if ENGINE == "lua54" else "boom"
    assert failed.returncode == 1 and where in failed.stdout and "stack traceback" in failed.stdout
    assert repl(server, stdin=b"local x = 20\nreturn x + 1\n").stdout == "21\n"
    server.wait_log(re.compile(rb"console \(uid \d+ pid \d+\): return counter"))


def test_values_are_written_as_lua_and_print_comes_back(lua_server) -> None:  # type: ignore[no-untyped-def]
    server = lua_server(APP)
    shown = repl(
        server,
        "-e",
        "return 0.1, 1.0, 1/0, 0/0, math.mininteger, 'a\\nb\\0\\27\"', 'caf\\xE9', 'café', "
        "{ [true] = 1, [{}] = 2, [2.5] = 'f', ['end'] = 1, ['a b'] = 2, ok = false, 10, 20 }",
    )
    assert shown.stdout.splitlines() == [
        "0.1",
        "1.0" if ENGINE == "lua54" else "1",  # (LuaJIT's numbers are doubles: 1.0 is 1)
        "math.huge",
        "0/0",
        "-9223372036854775808" if ENGINE == "lua54" else "nil",  # (and it has no math.mininteger)
        r'"a\nb\x00\x1B\""',
        r'"caf\xE9"',
        '"café"',
        '{ 10, 20, [2.5] = "f", ["a b"] = 2, ["end"] = 1, ok = false, [true] = 1, [{}] = 2 }',
    ], shown.stdout
    code = "local t = { name = 'x' } for i = 1, 40 do t[i] = i end t.me = t return t"
    big = repl(server, "-e", code).stdout
    assert big.startswith("{\n  1, 2, 3,") and big.endswith(' 40,\n  me = <cycle>,\n  name = "x"\n}\n'), big
    many = repl(server, "-e", "local t = {} for i = 1, 70 do t[i] = i end return t").stdout
    assert many.endswith(" 50,\n  --[[ 20 more ]]\n}\n") or many.endswith(" 50, --[[ 20 more ]]\n}\n"), many
    code = "local json = require 'moonlet.json' return { note = json.null }, json.null"
    null = repl(server, "-e", code).stdout
    assert null.splitlines() == ["{ note = json.null }", "json.null"]  # (it showed as {})
    deep = repl(server, "-e", "return { a = { b = { c = { d = { e = 1 } } } } }, print").stdout
    assert deep.splitlines()[0] == "{ a = { b = { c = { d = {...} } } } }"
    assert re.fullmatch(r"<function: 0x[0-9a-f]+>", deep.splitlines()[1])
    # print in a chunk, and in a task it started, comes back to the console, in order
    printed = repl(server, "-e", "print('one', 1, nil) spawn(function() print('two') end):wait() return 3")
    assert printed.stdout == "one\t1\tnil\ntwo\n3\n"
    assert server.proc.stdout is not None  # (and nothing on the server's standard output)
    assert not select.select([server.proc.stdout.fileno()], [], [], 0.2)[0]
    # `x = ...` stays in the session; `_G.x = ...` sets the app's global
    assert repl(server, "-e", "counter = 100 return counter").stdout == "100\n"
    assert repl(server, "-e", "return counter").stdout == "0\n"
    assert repl(server, "-e", "_G.counter = 41 return counter").stdout == "41\n"
    c = server.connect()
    c.send(b"x\n")
    assert c.line() == b"x"
    assert repl(server, "-e", "return counter").stdout == "42\n"


def test_backslash_commands(lua_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "mod.lua").write_text("return { version = 1 }\n")
    server = lua_server(APP)
    c = server.connect()
    c.send(b"hi\n")
    assert c.line() == b"hi"
    assert "\\connections" in repl(server, "-e", "\\help").stdout
    conns = repl(server, "-e", "\\connections").stdout
    assert "reading" in conns and "in 3B out 3B" in conns
    tasks = repl(server, "-e", "\\tasks").stdout
    assert "task spawned at" not in tasks or "sleeping" in tasks
    assert "waiting to read from connection 127.0.0.1:" in tasks, tasks  # (in the app's terms)
    stats = repl(server, "-e", "\\stats").stdout
    assert "lua_memory_bytes" in stats and "worst_loop_lag_ms" in stats
    assert f"\nengine: {ENGINE}\n" in stats  # (the server's engine, which its console runs on)
    assert int(re.search(r"^python_heap_blocks: (\d+)$", stats, re.M)[1]) > 1000  # type: ignore[index]
    assert int(re.search(r"^c_heap_bytes: (\d+)$", stats, re.M)[1]) > 1 << 20  # type: ignore[index]
    # \gc frees what nothing holds: a 4 MiB string the app dropped (with Lua's own collector stopped)
    repl(server, "-e", "collectgarbage('stop') _G.big = ('x'):rep(4 * 1024 * 1024) _G.big = nil")
    freed = re.search(r"^lua_memory_bytes: (\d+) -> (\d+)$", repl(server, "-e", "\\gc").stdout, re.M)
    repl(server, "-e", "collectgarbage('restart')")
    assert freed is not None and int(freed[1]) - int(freed[2]) >= 4 << 20, freed
    assert "cpu:" in repl(server, "-e", "\\pools").stdout
    conn_id = conns.split()[0]
    assert "closed connection" in repl(server, "-e", f"\\kill {conn_id}").stdout
    assert c.read_all() == b""
    assert repl(server, "-e", "return require('mod').version").stdout == "1\n"
    assert repl(server, "-e", "_G.held = require('mod')").returncode == 0  # an app global holds the old one
    (tmp_path / "mod.lua").write_text("return { version = 2 }\n")
    repl(server, "-e", "\\reload mod")
    assert repl(server, "-e", "return require('mod').version, held.version").stdout == "2\n1\n"
    (tmp_path / "mod.lua").write_text("return { version = \n")
    broken = repl(server, "-e", "\\reload mod")
    assert broken.returncode == 1 and "mod.lua" in broken.stdout, broken.stdout
    assert repl(server, "-e", "return require('mod').version").stdout == "2\n"
    assert "unknown command" in repl(server, "-e", "\\nonsense").stdout


def test_a_handler_is_listed_before_and_after_its_connection_is_gone(lua_server) -> None:  # type: ignore[no-untyped-def]
    # (an open connection lists its handler, the kernel every other task: a handler that goes on after its
    # connection is lost must move from one list to the other, and stay cancellable)
    server = lua_server("""
        local net = require "moonlet.net"
        net.listen { host = "127.0.0.1", port = 0, handler = function(conn)
          conn:readline()
          conn:close()
          sleep(3600)
        end }
    """)
    c = server.connect()
    assert "waiting to read from connection 127.0.0.1:" in repl(server, "-e", "\\tasks").stdout
    c.send(b"go\n")
    assert c.read_all() == b""  # (closed by the handler, which sleeps on)
    deadline = time.monotonic() + 10
    while "no connections" not in repl(server, "-e", "\\connections").stdout:
        assert time.monotonic() < deadline
    rows = [row for row in repl(server, "-e", "\\tasks").stdout.splitlines() if "connection (closed)" in row]
    assert len(rows) == 1 and rows[0].endswith("sleeping or waiting with a timeout"), rows  # (no stale wait)
    assert "cancelled connection (closed)" in repl(server, "-e", f"\\kill {rows[0].split()[0]}").stdout
    assert not [row for row in repl(server, "-e", "\\tasks").stdout.splitlines() if "connection" in row]


# a chunk that never yields, in a form LuaJIT runs interpreted (a loop it compiled would end the worker)
SPIN = 'local s = "x" while true do s = s:gsub("x", function() return "x" end) end'


def test_a_spinning_chunk_is_stopped_while_clients_are_served(lua_server) -> None:  # type: ignore[no-untyped-def]
    server = lua_server(APP, options=["--stall-budget", "0.3"])
    c = server.connect()
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime", "repl", "-e", SPIN, str(server.proc.pid)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1 and "stalled" in out
    c.send(b"still served\n")
    assert c.line() == b"still served"


HUGE = """
local net = require "moonlet.net"
local big = {}
for i = 1, 1000000 do big["k" .. i] = i if i % 100000 == 0 then sleep(0) end end
local rows = {}
for i = 1, 50 do rows[i] = {} for j = 1, 50 do rows[i][j] = big end end
shared_rows = rows            -- 2,500 references to a table of a million keys
net.listen { host = "127.0.0.1", port = 0, handler = function(conn)
  while true do
    local line = conn:readline()
    if not line then return end
    if line == "spinner" then  -- a table whose finalizer never returns, dropped at once
      setmetatable({}, { __gc = function() while true do end end })
    end
    conn:write(line, "\\n")
  end
end }
"""


def test_showing_a_huge_value_stops_within_its_budget_and_says_so(lua_server) -> None:  # type: ignore[no-untyped-def]
    server = lua_server(HUGE)
    t0 = time.monotonic()
    out = repl(server, "-e", "return shared_rows").stdout
    took = time.monotonic() - t0
    assert re.search(r"--\[\[ more than 99\d\d \]\]", out) and "{--[[ not shown ]]}" in out, out[-500:]
    assert out.endswith("} --[[ stopped after visiting 200000 keys ]]\n"), out[-500:]
    assert took < 5, took  # (counting every key of every reference: 30 s, and the watchdog)
    c = server.connect()
    c.send(b"still served\n")
    assert c.line() == b"still served"
    done = repl(server, "-e", "\\gc").stdout
    assert "lua_memory_bytes:" in done and "unreachable objects" in done, done


@pytest.mark.lua54("LuaJIT runs no __gc of a table the app made (the stdlib gives its own a userdata)")
def test_a_finalizer_that_never_returns_ends_the_worker_by_the_watchdog(lua_server) -> None:  # type: ignore[no-untyped-def]
    server = lua_server(HUGE.replace("1000000", "10"), options=["--block-limit", "1"])
    c = server.connect()
    c.send(b"spinner\n")
    assert c.line() == b"spinner"
    subprocess.run(
        [sys.executable, "-m", "runtime", "repl", "-e", "\\gc", str(server.proc.pid)],
        cwd=ROOT, capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    assert server.proc.wait(30) == 70  # (a collection started from Python held its lock: hung for good)
    assert "(--block-limit)" in server.log_text(), server.log_text()[-2000:]


def cpu_seconds(pid: int) -> float:
    """User and system CPU time process ``pid`` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_print_output_a_console_does_not_read_is_dropped_not_kept(lua_server) -> None:  # type: ignore[no-untyped-def]
    server = lua_server(APP)
    before = server.rss()
    s = socket.socket(socket.AF_UNIX)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(str(console_dir() / f"{server.proc.pid}.sock"))
    chunk = 'for i = 1, 300000 do print(("x"):rep(1000)) if i % 1000 == 0 then sleep(0) end end return "done"'
    s.sendall(json.dumps({"op": "eval", "code": chunk}).encode() + b"\n")
    # printing 300 MB to a console that reads nothing, until the chunk is done: the server then uses no
    # more CPU (its CPU time, not a wall-clock pause, which a busy machine may fill with other work); the
    # count of lines dropped comes before the chunk's result even though no line follows it
    cpu, deadline = cpu_seconds(server.proc.pid), time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = cpu_seconds(server.proc.pid)
        if now - cpu < 0.01:
            break
        cpu = now
    grown = server.rss() - before
    s.settimeout(30)
    got = b""
    while b'"ok": true' not in got:
        data = s.recv(1 << 20)
        assert data, got[-300:]
        got += data
    s.close()
    assert grown < 50 * 1024 * 1024, grown
    assert re.search(rb"\[\d+ lines of output dropped: the console was not reading\]", got)
    assert got.rstrip().endswith(b'"values": ["\\"done\\""]}'), got[-200:]


def test_socket_and_directory_modes_hold_under_umask_000(run_app) -> None:  # type: ignore[no-untyped-def]
    old = os.umask(0)
    try:
        server = run_app("apps/echo.lua", "--port", "0")
    finally:
        os.umask(old)
    sock = console_dir() / f"{server.proc.pid}.sock"
    assert stat.S_IMODE(console_dir().stat().st_mode) == 0o700
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to connect as another user")
def test_a_peer_with_another_uid_is_refused_and_logged(run_app) -> None:  # type: ignore[no-untyped-def]
    server = run_app("apps/echo.lua", "--port", "0")
    sock = console_dir() / f"{server.proc.pid}.sock"
    os.chmod(console_dir(), 0o755)  # let the other user reach the socket: the uid check must still refuse
    os.chmod(sock, 0o666)
    try:
        code = "\n".join(
            [
                "import os, socket",
                "try:",
                " os.setgid(65534); os.setuid(65534); s = socket.socket(socket.AF_UNIX)",
                f' s.connect({str(sock)!r}); s.sendall(b\'{{"op": "eval", "code": "1"}}\\n\')',
                " print(repr(s.recv(100)))",
                "except (ConnectionResetError, BrokenPipeError):",
                " print('refused')",
            ]
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=10, check=False
        )
        assert out.returncode == 0, out.stderr
    finally:
        os.chmod(console_dir(), 0o700)
    assert out.stdout.strip() in ("b''", "refused")
    server.wait_log(b"console: refused a peer with uid 65534")


def test_interactive_session_through_a_pty(lua_server) -> None:  # type: ignore[no-untyped-def]
    server = lua_server(APP)
    pid, fd = pty.fork()
    if pid == 0:  # the child: moonlet repl on the pty
        os.chdir(ROOT)
        os.environ["HOME"] = "/tmp"
        os.environ["NO_COLOR"] = "1"
        os.execv(sys.executable, [sys.executable, "-m", "runtime", "repl", str(server.proc.pid)])
    output = b""

    def expect(pattern: bytes, timeout: float = 10) -> None:
        nonlocal output
        deadline = time.monotonic() + timeout
        while not re.search(pattern, re.sub(rb"\x1b\[[0-9;]*m", b"", output)):
            left = deadline - time.monotonic()
            assert left > 0, f"never saw {pattern!r} in {output[-500:]!r}"
            if select.select([fd], [], [], left)[0]:
                try:
                    output += os.read(fd, 4096)
                except OSError:
                    break

    def send(data: bytes) -> None:
        os.write(fd, data)

    try:
        expect(rb"> $")
        send(b"return 6 * 7\r")
        expect(rb"42\r\n> $")
        send(b"for i = 1, 2 do\r")  # incomplete: continues
        expect(rb"\.\. $")
        send(b"counter = counter + i end\r")
        expect(rb"> $")
        send(b"return counter\r")
        expect(rb"\r\n3\r\n> $")
        send(b"string.for\t")  # completion from the live server
        expect(rb"string\.format")
        send(b"\x15")  # clear the line
        send(b"sleep(30)\r")
        time.sleep(0.3)
        send(b"\x03")  # Ctrl-C cancels the chunk, not the server
        expect(rb"cancelled at the console")
        expect(rb"> $")
        send(b"\x04")  # Ctrl-D leaves
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        os.close(fd)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"alive\n")
        assert s.recv(100) == b"alive\n"


def test_a_tcp_console_needs_the_token(run_app) -> None:  # type: ignore[no-untyped-def]
    server = run_app("apps/echo.lua", "--port", "0", options=["--console-tcp", "0"])
    m = server.wait_log(re.compile(rb"console also on tcp 127\.0\.0\.1:(\d+) \(token in (\S+)\)"))
    port, token_path = int(m.group(1)), Path(m.group(2).decode())
    assert stat.S_IMODE(token_path.stat().st_mode) == 0o600
    token = token_path.read_text()
    target = f"tcp://127.0.0.1:{port}"
    good = subprocess.run(
        [sys.executable, "-m", "runtime", "repl", "--token", token, "-e", "6 * 7", target],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert good.stdout == "42\n", good.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "runtime", "repl", "--token", "nope", "-e", "1", target],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert bad.returncode != 0 and "refused" in bad.stderr
    server.wait_log(re.compile(rb"console: refused tcp 127\.0\.0\.1:\d+ \(no valid token\)"))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:  # no auth first: closed
        s.sendall(b'{"op": "eval", "code": "1"}\n')
        assert s.recv(100) == b""


SETTING = """
local net = require "moonlet.net"
config = { word = "old" }  -- (a global table: the console changes what the handlers read)
net.listen { port = 0, handler = function(conn)
  conn:write(config.word, " ", require("moonlet.workers").id(), "\\n")
end }
"""


def test_one_console_reaches_every_worker_through_the_supervisors_pid(lua_server) -> None:  # type: ignore[no-untyped-def]
    server = lua_server(SETTING, options=["--workers", "2"])
    deadline = time.monotonic() + 20
    seen: set[bytes] = set()
    while len(seen) < 2:  # (the second worker starts once the first listens: both answer before the change)
        c = server.connect()
        seen.add(c.line())
        c.close()
        assert time.monotonic() < deadline, seen
    assert {line.split()[0] for line in seen} == {b"old"}
    # A process killed outright leaves its console files, and its pid is reused (32,768 of them): here by
    # the supervisor itself. Such files name a dead console, not the process that has the number now.
    stale = console_dir() / f"{server.proc.pid}.json"
    stale.write_text(json.dumps({"pid": server.proc.pid, "process_start": "1", "app": "app.lua", "worker": 1,
                                 "supervisor": server.proc.pid}))  # fmt: skip
    every = repl(server, "--all", "-e", "return config.word")
    lines = [re.sub(r"pid \d+", "pid N", line) for line in every.stdout.splitlines()]
    assert lines == ['worker 1 (pid N): "old"', 'worker 2 (pid N): "old"'], every
    # one chunk on every worker, through the supervisor's pid
    changed = repl(server, "--all", "-e", 'config.word = "new"; return config.word')
    lines = [re.sub(r"pid \d+", "pid N", line) for line in changed.stdout.splitlines()]
    assert changed.returncode == 0, (changed, server.log_text()[-3000:])
    assert lines == ['worker 1 (pid N): "new"', 'worker 2 (pid N): "new"'], changed
    seen = set()
    for _ in range(40):  # the kernel spreads connections over both workers: every one answers "new"
        c = server.connect()
        seen.add(c.line())
        c.close()
    assert {line.split()[0] for line in seen} == {b"new"} and len(seen) == 2, seen
    one = repl(server, "--worker", "2", "-e", "\\stats")  # (a command, on one chosen worker)
    assert re.search(r"^connections: \d+$", one.stdout, re.M), one
    missing = repl(server, "--worker", "3", "-e", "1")
    assert missing.returncode == 2 and "no worker 3 among: worker 1 (pid" in missing.stderr, missing


def test_a_starting_console_removes_the_files_of_dead_consoles_only(tmp_path: Path) -> None:
    from runtime.console.files import process_start, remove_stale

    def gone() -> int:  # the pid of a process that has ended
        done = subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True
        )
        return int(done.stdout)

    me, old = os.getpid(), time.time() - 3600

    def plant(pid: int, info: dict[str, object], mtime: float) -> None:
        for suffix in (".json", ".sock"):
            path = tmp_path / f"{pid}{suffix}"
            path.write_text(json.dumps(info) if suffix == ".json" else "")
            os.utime(path, (mtime, mtime))

    dead, young = gone(), gone()
    plant(dead, {"pid": dead}, old)  # its process is gone
    plant(me, {"pid": me, "process_start": "1"}, old)  # its pid now belongs to another process (this one)
    plant(young, {"pid": young}, time.time())  # (new files: maybe a console starting with that pid; kept)
    assert remove_stale(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{young}.json", f"{young}.sock"]
    plant(me, {"pid": me, "process_start": process_start(me)}, old)  # a live console's
    assert remove_stale(tmp_path) == 0
