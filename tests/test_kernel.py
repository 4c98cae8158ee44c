"""The kernel's rules (runtime/kernel/core.py), each shown by a small Lua app run in this process by the
in-process harness (``lua_run`` in conftest.py: a Host on the virtual clock, so its sleeps take no real
time) with its printed transcript."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from conftest import InProcess


def test_tasks_run_in_the_order_they_were_spawned_and_hand_back_results(lua_run: InProcess) -> None:
    code, out = lua_run(
        """
        local order = {}
        local tasks = {}
        for i = 1, 5 do tasks[i] = spawn(function(n) order[#order + 1] = n return n * 10, "x" end, i) end
        for i = 1, 5 do assert(select(2, tasks[i]:wait()) == i * 10) end
        print(table.concat(order, ","))
        print(tasks[3]:wait())
        print(spawn(function() error("boom", 0) end):wait())
        print(spawn(function() error({ code = 7 }) end):wait() == false)
        """,
    )
    assert code == 0
    assert out == ["1,2,3,4,5", "true\t30\tx", "false\tboom", "true"]


def test_a_cancelled_task_is_never_resumed_and_cannot_cancel_itself(lua_run: InProcess) -> None:
    code, out = lua_run(
        """
        local task = require "moonlet.task"
        local reached, child_reached = false, false
        local child
        local parent = spawn(function()
          child = spawn(function() sleep(0.05) child_reached = true end)
          sleep(0.05)
          reached = true
        end)
        sleep(0.01)
        print(parent:cancel(), parent:status(), child:status())
        sleep(0.1)
        print(reached, child_reached)
        local ok, err = parent:wait()
        print(ok, err)
        print(task.current():cancel())
        """,
    )
    assert code == 0
    # (its child goes on: only the tasks a connection's handler started end with it, unless detached)
    assert out[0] == "true\tfailed\trunning"
    assert out[1] == "false\ttrue"
    assert out[2].startswith("false\tcancelled")
    assert out[3] == "nil\ta task cannot cancel itself (return from it instead)"


def test_waits_time_out_and_waits_where_lua_cannot_yield_are_refused(lua_run: InProcess) -> None:
    code, out = lua_run(
        """
        local slow = spawn(function() sleep(10) end)
        print(slow:wait(0.01))
        slow:cancel()
        local ok, err = pcall(table.sort, { 3, 1, 2 }, function(a, b) sleep(0) return a < b end)
        print(ok, err:match("cannot wait here") ~= nil)
        """,
    )
    assert code == 0
    assert out == ["nil\ttimeout", "false\ttrue"]


def test_an_error_in_the_main_chunk_ends_the_process_with_status_1(
    lua_run: InProcess, caplog: pytest.LogCaptureFixture
) -> None:
    code, out = lua_run('print("before") error("the main chunk broke")\n')
    assert code == 1 and out == ["before"]
    assert "the main chunk broke" in caplog.text


def test_misuse_the_host_finds_is_an_error_at_the_apps_line_that_pcall_catches(lua_run: InProcess) -> None:
    code, out = lua_run(
        """
        local t = spawn(function() sleep(10) end)
        local function try(f) local r = { pcall(f) } print(r[1], r[2]) end
        try(function() local r = t.cancel({}) return r end)          -- a method called with . for : (Lua)
        local l = require("moonlet.net").listen { port = 0, handler = print }
        local forged = setmetatable({ _py = l._py }, getmetatable(t))  -- a task around another handle
        try(function() local r = forged:cancel() return r end)       -- refused by the host: a call
        try(function() local r = forged:wait() return r end)         -- and a waiting request
        try(function() local r = t:wait("soon") return r end)
        local caught = 0
        for _ = 1, 3000 do caught = caught + (pcall(forged.wait, forged) and 0 or 1) end  -- no recursion
        print(caught, t:status())
        t:cancel() l:close()
        """
    )
    assert code == 0
    assert [line.split("\t")[0] for line in out[:4]] == ["false"] * 4
    assert out[0].endswith("app.lua:4: calling 'cancel' on bad self (task expected, got table)"), out[0]
    assert out[1].endswith("app.lua:7: bad argument #1 to 'cancel' (task expected, got listener)"), out[1]
    assert out[2].endswith("app.lua:8: bad argument #1 to 'wait' (task expected, got listener)"), out[2]
    assert out[3].endswith("app.lua:9: bad argument #1 to 'wait' (seconds >= 0 or nil expected, got string)")
    assert out[4] == "3000\trunning"


def test_argument_errors_have_one_form_options_included(lua_run: InProcess) -> None:
    code, out = lua_run(
        """
        local net, http = require "moonlet.net", require "moonlet.http"
        local function try(f) local ok, err = pcall(f) print(ok, (err:gsub("^.-app%.lua:", "app.lua:"))) end
        try(function() local r = net.listen { port = -5, handler = print } return r end)
        try(function() local r = net.udp { port = "z" } return r end)
        try(function() local r = http.serve { port = 0, handler = print, max_body = 0 } return r end)
        try(function() local r = net.connect("127.0.0.1", 1.5) return r end)
        local l = assert(net.listen { port = 0, handler = function(c) c:write(c:readline(), "\\n") end })
        local c = assert(net.connect("127.0.0.1", l.port))
        try(function() local r = c.readn({}, 4) return r end)     -- a method called with . for :
        try(function() local r = c.peer(nil) return r end)
        try(function() local r = c.flush("x") return r end)
        c:write("still served\\n") print(c:readline()) c:close() l:close()
        local time, task, sync = require "moonlet.time", require "moonlet.task", require "moonlet.sync"
        try(function() local r = time.after(1, 42) return r end)     -- (the sites that built the message by
        try(function() local r = task.wait_any({ 1 }) return r end)   --  hand, each its own way)
        try(function() local r = sync.queue():put(nil) return r end)
        try(function() local r = http.request { method = "GET" } return r end)
        try(function() local r = net.connect("127.0.0.1", 1, 5) return r end)
        try(function() local u = net.udp() local r = u:sendto("x", "127.0.0.1", 0) return r end)
        """,
    )
    assert code == 0
    assert out[8:] == [
        "false\tapp.lua:15: bad argument #2 to 'after' (function expected, got 42)",
        "false\tapp.lua:16: bad argument #1 to 'wait_any' (array of tasks (element 1) expected, got 1)",
        "false\tapp.lua:17: bad argument #1 to 'put' (a value (nil cannot be queued) expected, got nil)",
        "false\tapp.lua:18: bad argument #1 to 'request' ('url': string expected, got nil)",
        "false\tapp.lua:19: bad argument #3 to 'connect' (options table expected, got 5)",
        "false\tapp.lua:20: bad argument #3 to 'sendto' (integer from 1 to 65535 expected, got 0)",
    ]
    assert out[:8] == [
        "false\tapp.lua:4: bad argument #1 to 'listen' ('port': integer from 0 to 65535 expected, got -5)",
        "false\tapp.lua:5: bad argument #1 to 'udp' ('port': integer from 0 to 65535 expected, got string)",
        "false\tapp.lua:6: bad argument #1 to 'serve' ('max_body': number > 0 expected, got 0)",
        "false\tapp.lua:7: bad argument #2 to 'connect' (port from 1 to 65535 expected, got 1.5)",
        "false\tapp.lua:10: calling 'readn' on bad self (connection expected, got table)",
        "false\tapp.lua:11: calling 'peer' on bad self (connection expected, got nil)",
        "false\tapp.lua:12: calling 'flush' on bad self (connection expected, got string)",
        "still served",
    ]


def test_the_harness_clock_jumps_over_waits_and_real_sockets_still_work(lua_run: InProcess) -> None:
    started = time.monotonic()
    code, out = lua_run(
        """
        local net, clock = require "moonlet.net", require "moonlet.time"
        local t0, fired = clock.monotonic(), {}
        clock.after(3600, function() fired[#fired + 1] = "hour" end)
        clock.after(60, function() fired[#fired + 1] = "minute" end)
        sleep(7200)
        print(table.concat(fired, ","), math.floor(clock.monotonic() - t0))
        local l = assert(net.listen { port = 0, handler = function(c)
          c:write(c:readline(), "\\n")
          sleep(100)                                 -- then silent: the client's read times out
        end })
        local c = assert(net.connect("127.0.0.1", l.port))
        c:settimeouts(nil, nil, 30)
        c:write("ping\\n")
        print(c:readline())
        local t1 = clock.monotonic()
        local _, first = c:readline()
        local _, second = c:readline()
        print(first, second)
        print(math.floor(clock.monotonic() - t1))
        c:close() l:close()
        """
    )
    assert code == 0
    assert out == ["minute,hour\t7200", "ping", "timeout\ttimeout", "60"]  # (two reads of 30 s each)
    assert time.monotonic() - started < 5  # (two hours and more of the app's time)


def test_the_crossing_check_finds_a_call_handler_that_keeps_a_lua_object() -> None:
    from runtime.kernel.core import check_not_kept, lua_objects, references
    from runtime.lua.state import new_lua_runtime

    lua = new_lua_runtime(1 << 26)
    table = lua.eval(b"{}")
    kept: list[object] = []

    def call(op: str, handler: Callable[[object], object]) -> None:  # (as Kernel.call checks a handler)
        handed = lua_objects(table, 1, None)
        before = references(handed)
        check_not_kept(handed, before, handler(table), op)

    call("USED", lambda t: list(t.items()))  # type: ignore[attr-defined]  # (read and let go: fine)
    call("RETURNED", lambda t: (1, t))  # (given back in the reply: fine)
    with pytest.raises(RuntimeError, match="KEPT: the host kept a Lua object handed to it in a call"):
        call("KEPT", kept.append)
