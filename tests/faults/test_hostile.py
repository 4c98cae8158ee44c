"""Hostile input from clients and from app code: nothing freezes a worker or gets past the host door.

Each client-side attack runs beside a probe connection whose round trips must stay fast; app-side attacks
must end as ordinary, catchable Lua errors.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import threading
import time
from pathlib import Path

import redis

from conftest import run_script


class Probe:
    """Round trips of one echo line on an app connection, timed, in a thread, until stopped."""

    def __init__(self, port: int, greeting: bool = False) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rb")
        if greeting:
            self.file.readline()
        self.worst = 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            self.sock.sendall(b"PING\r\n")
            self.file.readline()
            self.worst = max(self.worst, time.monotonic() - started)
            time.sleep(0.02)

    def finish(self) -> float:
        self.stop.set()
        self.thread.join(10)
        self.sock.close()
        return self.worst


def test_a_line_of_spaces_at_the_dialog_prompt_is_answered_at_once(run_app) -> None:  # type: ignore[no-untyped-def]
    server = run_app("apps/conversation.lua", "--port", "0")
    probe = Probe(server.port, greeting=True)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        f = s.makefile("rb")
        f.readline()  # HELLO
        started = time.monotonic()
        s.sendall(b"L " + b" " * 65000 + b"y\n")  # froze the worker 21.7 s when split with a pattern
        assert f.readline().startswith(b"ERR expected LOGIN")
        assert time.monotonic() - started < 1
    assert probe.finish() < 0.5


def test_kv_keys_follows_redis_glob_rules_in_linear_time(run_app, redis_server: int) -> None:  # type: ignore[no-untyped-def]
    server = run_app("apps/kv.lua", "--port", "0")
    ours = redis.Redis(port=server.port, socket_timeout=10)
    real = redis.Redis(port=redis_server, socket_timeout=10)
    keys = [
        b"a",
        b"b",
        b"ab",
        b"a-b",
        b"[x]",
        b"x\\y",
        b"\\",
        b"^",
        b"!a",
        b"z",
        b"?",
        b"*",
        b"hello",
        b"hallo",
    ]
    keys += [b"a" * 200]
    for k in keys:
        ours.set(k, b"1")
        real.set(k, b"1")
    patterns = [b"*", b"h?llo", b"h[ae]llo", b"h[^e]llo", b"h[!e]llo", b"[z-a]", b"[a-z]", b"\\a", b"a\\-b",
                b"[\\]]", b"[[]x]", b"x\\\\y", b"[", b"[]", b"[^]", b"*a*a*a*a*b", b"a*", b"*b", b"\\*",
                b"[a", b"[^a", b"a[-]b", b"?", b"\\", b"[\\"]  # fmt: skip
    for pattern in patterns:
        assert sorted(ours.keys(pattern)) == sorted(real.keys(pattern)), pattern
    probe = Probe(server.port)
    started = time.monotonic()
    assert ours.keys(b"*a*a*a*a*a*a*a*a*a*a*b") == []  # ran 474 s over a 200-byte key as a Lua pattern
    assert time.monotonic() - started < 1
    assert probe.finish() < 0.5


APP_DOOR = """
local net = require "moonlet.net"
local results = {}
local function try(name, f, ...)
  local ok, err = pcall(f, ...)
  results[#results + 1] = name .. "=" .. tostring(ok) .. ":" .. tostring(err)
end
try("yield", coroutine.yield, 4, 0.05, nil, nil)            -- a forged SLEEP request, from the main chunk
try("isyieldable", function() assert(not coroutine.isyieldable()) return "no" end)
local co = coroutine.create(function() coroutine.yield(coroutine.isyieldable()) end)
local ok, inside = coroutine.resume(co)                      -- inside an app coroutine: standard Lua
results[#results + 1] = "app-coroutine=" .. tostring(ok) .. ":" .. tostring(inside)
local me = coroutine.running()
try("resume-task", function() return assert(coroutine.resume(me)) end)
try("close-task", coroutine.close, me)
local l = assert(net.listen { port = 0, handler = function() end })
try("metatable", function() return getmetatable(l._py) end)
try("setfield", function() getmetatable(l._py).__gc = print end)
try("require-nul", require, "moonlet.net\\0")
try("require-path", require, "../etc/passwd")
try("require-long", require, string.rep("a", 300))
l:close()
print(table.concat(results, "\\n"))
"""


def test_app_code_cannot_reach_the_host_behind_the_stdlib(tmp_path: Path) -> None:
    done = run_script(tmp_path, APP_DOOR)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    lines = done.stdout.decode().splitlines()
    got = dict(line.split("=", 1) for line in lines)
    assert got["yield"].startswith("false:") and "attempt to yield from outside a coroutine" in got["yield"]
    assert got["isyieldable"] == "true:no"
    assert got["app-coroutine"] == "true:true"
    # a task's own coroutine is, to the app, running (as Lua's main thread): neither resumed nor closed
    assert got["resume-task"].startswith("false:")
    assert "cannot resume non-suspended coroutine" in got["resume-task"]
    assert "cannot close a running coroutine" in got["close-task"]
    # a host handle is a number (runtime/kernel/handles.py): no metatable, nothing of the host to walk to
    assert got["metatable"] == "true:nil"
    assert got["setfield"].startswith("false:")
    for name in ("require-nul", "require-path", "require-long"):
        assert got[name].startswith("false:") and "module name is dot-separated words" in got[name], got[name]
    assert b"internal error" not in done.stderr and b"Traceback" not in done.stderr


def test_redis_clients_for_other_databases_or_users_get_their_own_connections(
    tmp_path: Path, redis_server: int
) -> None:
    done = run_script(
        tmp_path,
        """
        local redis = require "moonlet.redis"
        local port = tonumber(arg[1])
        local one, two = redis.new { port = port, db = 1 }, redis.new { port = port, db = 2 }
        assert(one:call("SET", "where", "db1"))
        assert(two:call("SET", "where", "db2"))
        for _ = 1, 3 do print(one:call("GET", "where"), two:call("GET", "where")) end
        print(redis.new({ port = port }):call("GET", "where") == redis.null)  -- db 0, fresh
        """,
        str(redis_server),
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert done.stdout.decode().splitlines() == ["db1\tdb2"] * 3 + ["true"]


FREEZE_APP = """
local net = require "moonlet.net"
net.listen { host = "127.0.0.1", port = 0, handler = function(conn)
  local line = conn:readline()
  if line == "freeze" then  -- quadratic inside one C call: the stall budget cannot stop it
    local s = "L x" .. string.rep(" ", 60000) .. "y"
    conn:write(tostring(s:match("^(%S+)%s*(.-)%s*$")), "\\n")
  end
  conn:write("pong\\n")
end }
"""


def test_a_loop_frozen_inside_a_c_call_ends_the_worker_after_the_block_limit(lua_server) -> None:  # type: ignore[no-untyped-def]
    server = lua_server(FREEZE_APP, options=["--block-limit", "1.5"])
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        started = time.monotonic()
        s.sendall(b"freeze\n")
        status = server.proc.wait(15)
        took = time.monotonic() - started
    assert status == 70 and 1.4 < took < 5, (status, took)
    server.wait_log(b"the event loop has been blocked for")
    assert "stuck inside a C call" in server.log_text() and "connection 127.0.0.1:" in server.log_text()


def test_sigterm_during_a_frozen_loop_ends_it_within_the_drain_timeout(lua_server) -> None:  # type: ignore[no-untyped-def]
    server = lua_server(FREEZE_APP, options=["--block-limit", "60", "--drain-timeout", "1"])
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"freeze\n")
        time.sleep(0.5)  # frozen now
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        status = server.proc.wait(15)
        took = time.monotonic() - started
    assert status == 70 and took < 3, (status, took)
    server.wait_log(b"(the drain timeout) for the blocked loop")


def test_tcp_console_peers_without_the_token_get_little(lua_server) -> None:  # type: ignore[no-untyped-def]
    from conftest import free_port

    server = lua_server(
        'require("moonlet.net").listen { port = 0, handler = function(c) '
        "while true do local l = c:readline() if not l then return end c:write(l, '\\n') end end }",
        options=["--console-tcp", str(free_port())],
    )
    port = int(server.wait_log(re.compile(rb"console also on tcp 127\.0\.0\.1:(\d+)")).group(1))
    probe = Probe(server.port)
    # a peer that sends a quarter GiB without a newline: cut off after a few KiB
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        sent = 0
        with contextlib.suppress(OSError):
            while sent < 256 << 20:
                s.sendall(b"x" * 65536)
                sent += 65536
        assert sent < 4 << 20, sent
    server.wait_log(b"a request over 4096 bytes")
    # many peers that never authenticate: a few are held (for 5 s), the rest refused at once
    crowd = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(20)]
    server.wait_log(b"peers are waiting to authenticate")
    closed = 0
    for s in crowd:
        s.settimeout(0.2)
        with contextlib.suppress(TimeoutError):
            closed += s.recv(1) == b""
    assert closed >= 10
    server.wait_log(b"no token within 5s", timeout=10)
    for s in crowd:
        s.close()
    assert probe.finish() < 0.5


def test_a_forged_handle_is_refused_without_a_host_traceback(tmp_path: Path) -> None:
    done = run_script(
        tmp_path,
        """
        local net, task = require "moonlet.net", require "moonlet.task"
        local l = assert(net.listen { port = 0, handler = function() end })
        -- a connection table made by hand around the listener's handle
        local c = setmetatable({ l._py, "", 1, {}, 0, 0, { line = 256, read = 256 }, false }, net.Conn)
        print(pcall(c.peer, c))                                   -- a call: a Lua error
        local t = task.spawn(function() local r = c:read() return r end)  -- a request: an error in that task
        print(t:wait())
        l:close()
        """,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    out = done.stdout.decode().splitlines()
    # both raised as Lua's argument errors, at the script's line that made them (":5:", ":6:")
    refused = r"bad argument #1 to '{}' \(connection expected, got listener\)"
    assert re.fullmatch(r"false\t.*:5: " + refused.format("peer"), out[0]), out[0]
    assert re.fullmatch(r"false\t.*:6: " + refused.format("recv"), out[1]), out[1]
    assert b"Traceback" not in done.stderr


def test_console_completion_runs_no_app_code(lua_server) -> None:  # type: ignore[no-untyped-def]
    from runtime.console.files import runtime_dir

    server = lua_server(
        """
        trap = setmetatable({ field = 1 }, { __index = function() while true do end end })
        require("moonlet.net").listen { port = 0, handler = function(c)
          while true do local l = c:readline() if not l then return end c:write(l, "\\n") end end }
        """
    )
    pid = int(server.wait_log(re.compile(rb"moonlet repl (\d+)")).group(1))
    probe = Probe(server.port)
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(runtime_dir() / f"{pid}.sock"))
        f = s.makefile("rb")
        s.sendall(b'{"op": "complete", "text": "trap.nothing.x"}\n')  # used to spin in __index forever
        first = f.readline()
        s.sendall(b'{"op": "complete", "text": "trap.f"}\n')
        second = f.readline()
    assert b"[]" in first and b"trap.field" in second, (first, second)
    assert probe.finish() < 0.5
