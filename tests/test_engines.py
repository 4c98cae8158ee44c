"""The two engines: choosing one, what the compat layer gives LuaJIT, and the guarantees that hold on both.

Each test names its engine with ``--engine`` (a process of its own), so the whole file runs the same on
either leg of the CI matrix: the guarantees are checked on LuaJIT even when the suite runs on Lua 5.4.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_workers import ask, wait_count

from conftest import ROOT, free_port, run_script

ENGINES = ["lua54", "luajit"]

# What the compat layer adds on LuaJIT, printed the same on both engines.
COMPAT = r"""
local out = {}
local function say(...) local t = table.pack(...) for i = 1, t.n do t[i] = tostring(t[i]) end
  out[#out + 1] = table.concat(t, " ", 1, t.n) end
say("type", math.type(3), math.type(3.5), math.type("3"), math.type(2 ^ 53))
say("tointeger", math.tointeger(7), math.tointeger(7.5), math.tointeger("8"))
say("pack", select("#", table.unpack(table.pack(1, nil, 3), 1, 3)), table.pack(nil, nil).n)
say("utf8", utf8.len("café"), utf8.len("caf\xE9"), utf8.char(233, 0x20AC) == "é€", #utf8.char(0x10FFFF))
say("codepoint", utf8.codepoint("é€", 1, -1))
local codes = {}
for at, c in utf8.codes("aé") do codes[#codes + 1] = at .. ":" .. c end
say("codes", table.concat(codes, ","))
say("surrogate", utf8.len("\xED\xA0\x80"), utf8.len("\xC0\x80"))
local packed = string.pack(">I2<i4>I8", 258, -2, 2 ^ 40)
say("spack", #packed, packed:byte(1, 2), string.unpack(">I2<i4>I8", packed))
say("sformat", (pcall(string.pack, ">d", 1)))
local co = coroutine.create(function() coroutine.yield() end)
coroutine.resume(co)
say("close", coroutine.close(co), coroutine.status(co), coroutine.resume(co))
say("rawlen", rawlen({ 1, 2 }), rawlen("abc"))
print(table.concat(out, "\n"))
"""

COMPAT_OUT = [
    "type integer float nil float",
    "tointeger 7 nil 8",
    "pack 3 2",
    "utf8 4 nil true 4",
    "codepoint 233 8364",
    "codes 1:97,2:233",
    "surrogate nil nil",
    "spack 14 1 258 -2 1099511627776 15",
    "sformat true",
    "close true dead false cannot resume dead coroutine",
    "rawlen 2 3",
]


@pytest.mark.parametrize("engine", ENGINES)
def test_the_compat_layer_gives_both_engines_the_same_answers(tmp_path: Path, engine: str) -> None:
    result = run_script(tmp_path, COMPAT, options=["--engine", engine])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode("utf-8", "replace").splitlines()
    # (math.type(2^53): a float on Lua 5.4, where 2^ is float arithmetic; integral, so "integer", on LuaJIT)
    expected = list(COMPAT_OUT)
    if engine == "luajit":  # (and a format the compat string.pack does not take is an error there)
        expected[0] = "type integer float nil integer"
        expected[8] = "sformat false"
    # (utf8.len of bad bytes: nil and the position; the failing unpack format's message differs by engine)
    assert [re.sub(r" \d+$", "", x) if x.startswith(("utf8", "surrogate")) else x for x in lines] == [
        re.sub(r" \d+$", "", x) if x.startswith(("utf8", "surrogate")) else x for x in expected
    ]


def test_an_app_that_declares_lua54_is_refused_on_luajit_with_a_reason(tmp_path: Path) -> None:
    source = """
    -- counts in 64 bits
    -- moonlet: engine lua54
    print(math.maxinteger)
    """
    jit = run_script(tmp_path, source, options=["--engine", "luajit"])
    assert jit.returncode == 1
    assert b"needs Lua 5.4" in jit.stderr and b"--engine lua54" in jit.stderr
    plain = run_script(tmp_path, source, options=["--engine", "lua54"])
    assert plain.returncode == 0 and plain.stdout == b"9223372036854775807\n"


def test_lua54_syntax_on_luajit_says_which_engine_would_parse_it(tmp_path: Path) -> None:
    result = run_script(tmp_path, "print(7 // 2)\n", options=["--engine", "luajit"])
    assert result.returncode == 1
    assert b"unexpected symbol near '/'" in result.stderr and b"need --engine lua54" in result.stderr


def test_an_unknown_engine_is_an_error(tmp_path: Path) -> None:
    result = run_script(tmp_path, "print(1)\n", options=["--engine", "lua53"])
    assert result.returncode == 2 and b"invalid choice: 'lua53'" in result.stderr
    env_run = subprocess.run(
        [sys.executable, "-m", "runtime", "run", "--workers", "1", str(tmp_path / "script.lua")],
        cwd=ROOT,
        capture_output=True,
        env={"MOONLET_ENGINE": "lua53", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert env_run.returncode == 2 and b"unknown Lua engine 'lua53'" in env_run.stderr


@pytest.mark.parametrize("engine", ENGINES)
def test_the_sandbox_is_the_same_on_both_engines(tmp_path: Path, engine: str) -> None:
    source = r"""
    local out = {}
    local function try(name, f) out[#out + 1] = name .. "=" .. (pcall(f) and "OPEN" or "closed") end
    try("jit", function() return assert(rawget(_G, "jit")) end)
    try("ffi", function() return require "ffi" end)
    try("bit", function() return assert(rawget(_G, "bit")) end)
    try("bytecode", function() return assert(load(string.dump(function() end))) end)
    try("bytecode-b", function() return assert(load(string.dump(function() end), "x", "b")) end)
    try("setfenv", function() return assert(rawget(_G, "setfenv")) end)
    try("debug", function() return rawget(_G, "debug").getinfo end)
    try("newproxy", function() return assert(rawget(_G, "newproxy")) end)
    print(table.concat(out, " "))
    """
    result = run_script(tmp_path, source, options=["--engine", engine])
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().split() == [
        "jit=closed", "ffi=closed", "bit=closed", "bytecode=closed", "bytecode-b=closed", "setfenv=closed",
        "debug=closed", "newproxy=closed",
    ]  # fmt: skip


# A handler that spins without yielding beside one that answers: on LuaJIT the stall hook fires only in
# code it runs interpreted (gsub with a function is not compiled), and must stop the spinner alone.
SPIN_BESIDE = """
local net = require "moonlet.net"
net.listen { port = 0, handler = function(conn)
  local line = conn:readline()
  if line == "spin" then
    local s = "x"
    while true do s = s:gsub("x", function() return "x" end) end
  end
  while line do conn:write("echo " .. line .. "\\n") line = conn:readline() end
end }
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_a_stalled_handler_is_stopped_and_no_other_task_with_it(lua_server, engine: str) -> None:  # type: ignore[no-untyped-def]
    server = lua_server(SPIN_BESIDE, options=["--engine", engine, "--stall-budget", "0.3"])
    calm = server.connect()
    calm.send(b"one\n")
    assert calm.line() == b"echo one"
    spinner = server.connect()
    spinner.send(b"spin\n")
    server.wait_log(b"stalled", timeout=20)
    for word in (b"two", b"three"):  # the hook fired in the spinner only: this handler goes on
        calm.send(word + b"\n")
        assert calm.line() == b"echo " + word
    assert spinner.read_all() == b""  # (its handler ended: the connection closed)
    assert server.running()


def test_a_loop_luajit_compiled_ends_the_worker_with_one_line(tmp_path: Path) -> None:
    started = time.monotonic()
    result = run_script(
        tmp_path,
        "local n = 0\nwhile true do n = n + 1 end\n",
        options=["--engine", "luajit", "--stall-budget", "0.2"],
        timeout=60,
    )
    assert result.returncode == 70
    critical = [line for line in result.stderr.splitlines() if b"CRITICAL" in line]
    assert len(critical) == 1 and b"a loop LuaJIT compiled, where no hook runs" in critical[0]
    assert b"exiting so that the worker is replaced" in critical[0]
    assert time.monotonic() - started < 30  # (the budget and a second's grace, not the 30 s block limit)


# An echo whose "hog" allocates until the heap is full without waiting, and whose "keep" does so waiting now
# and then (what it keeps is live data each time it waits).
ALLOCATING = """
local net = require "moonlet.net"
net.listen { port = 0, handler = function(conn)
  local line = conn:readline()
  while line do
    if line == "hog" then
      local t = {}
      for i = 1, 1e9 do t[i] = ("x"):rep(100) .. i end
    elseif line == "keep" then
      local t = {}
      for i = 1, 1e9 do t[i] = ("y"):rep(1000) .. i if i % 1000 == 0 then sleep(0) end end
    end
    conn:write("echo " .. line .. "\\n")
    line = conn:readline()
  end
end }
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_running_out_of_lua_memory_ends_a_task_never_the_process(lua_server, engine: str) -> None:  # type: ignore[no-untyped-def]
    server = lua_server(ALLOCATING, options=["--engine", engine, "--max-memory", str(48 << 20)])
    calm = server.connect()
    for _ in range(3):
        hog = server.connect()
        hog.send(b"hog\n")
        assert hog.read_all() == b""  # its handler failed: the connection closed
        # the host hands a big value in right after (the unprotected push that panics LuaJIT when full)
        calm.send(b"y" * 60_000 + b"\n")
        assert calm.line() == b"echo " + b"y" * 60_000
    assert b"not enough memory" in server.log_text().encode()
    assert server.running() and b"PANIC" not in server.log_text().encode()


@pytest.mark.parametrize("engine", ENGINES)
def test_live_data_at_the_limit_fails_the_task_that_waits_not_the_process(lua_server, engine: str) -> None:  # type: ignore[no-untyped-def]
    # a task that keeps what it allocates, waiting now and then: on LuaJIT the host then has no room to hand
    # it the reply it waits for, and refuses it as a failed allocation (the task ends; the server goes on)
    server = lua_server(ALLOCATING, options=["--engine", engine, "--max-memory", str(64 << 20)])
    calm = server.connect()
    keeper = server.connect()
    keeper.send(b"keep\n")
    assert keeper.read_all() == b""
    calm.send(b"after\n")
    assert calm.line() == b"echo after"
    log = server.log_text()
    assert "not enough memory" in log and "PANIC" not in log and server.running()


@pytest.mark.parametrize(("engine", "version"), [("lua54", "Lua 5.4"), ("luajit", "Lua 5.1")])
def test_moonlet_test_runs_lua_tests_on_the_engine_asked_for(
    tmp_path: Path, engine: str, version: str
) -> None:
    (tmp_path / "engine_test.lua").write_text(
        'local t = require "moonlet.testing"\n'
        f't.it("runs on {engine}", function() t.expect(_VERSION).to_be("{version}") end)\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "runtime", "test", "--engine", engine, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and b"1 passed, 0 failed" in result.stdout, result.stdout + result.stderr


def test_a_worker_that_ran_a_compiled_loop_is_replaced_while_the_others_serve(lua_server) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    source = """
    local net = require "moonlet.net"
    net.listen { port = tonumber(arg[1]), handler = function(conn)
      local line = conn:readline()
      if line == "spin" then local n = 0 while true do n = n + 1 end end
      conn:write("hi ", line or "", "\\n")
    end }
    """
    server = lua_server(
        source, str(port), options=["--engine", "luajit", "--workers", "2", "--stall-budget", "0.2"]
    )
    wait_count(server, "listening on", 2)
    spinner = socket.create_connection(("127.0.0.1", port))
    spinner.sendall(b"spin\n")
    server.wait_log(b"a loop LuaJIT compiled, where no hook runs", timeout=20)
    dead = server.wait_log(re.compile(rb"worker (\d) \(pid \d+\) exited with status 70"), timeout=20)
    for _ in range(10):  # the other worker serves meanwhile
        assert ask(port, b"x") == b"hi x\n"
    server.wait_log(re.compile(rb"worker %s started \(pid" % dead.group(1)), timeout=20)  # (after a back-off)
    assert spinner.recv(100) == b""
    spinner.close()
    for _ in range(10):
        assert ask(port, b"x") == b"hi x\n"


@pytest.mark.parametrize("engine", ENGINES)
def test_misuse_reaches_its_task_though_others_start_before_it_resumes(tmp_path: Path, engine: str) -> None:
    # (on LuaJIT the error travels by the state's one hook, which every task's start used to reset)
    source = """
    local net = require "moonlet.net"
    local t = spawn(function() sleep(10) end)
    local l = net.listen { port = 0, handler = print }
    local forged = setmetatable({ _py = l._py }, getmetatable(t))  -- a task around another handle
    for _ = 1, 5 do spawn(function() end) end                    -- tasks that start first
    print(pcall(forged.wait, forged))
    t:cancel() l:close()
    """
    result = run_script(tmp_path, source, options=["--engine", engine])
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"false\tbad argument #1 to 'wait' (task expected, got listener)\n"


def test_live_data_no_task_holds_filling_the_heap_ends_the_worker_on_luajit(tmp_path: Path) -> None:
    # a global filled to the limit: its task fails, but the data stays, and the host would have no room for
    # its own allocations (which LuaJIT cannot fail safely): the worker says so and exits, to be replaced
    source = """
    keep = {}
    for i = 1, 1e9 do keep[i] = ("x"):rep(100) .. i end
    """
    result = run_script(tmp_path, source, options=["--engine", "luajit", "--max-memory", str(48 << 20)])
    assert b"PANIC" not in result.stderr
    assert result.returncode == 70, result.stderr
    critical = [line for line in result.stderr.splitlines() if b"CRITICAL" in line]
    assert len(critical) == 1 and b"MiB of live data after a full collection" in critical[0]
