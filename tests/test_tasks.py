"""Concurrency inside Lua: tasks, timers, sync primitives, yields everywhere, stall protection.

Most tests are transcripts: a Lua script prints what each call returned and the test compares the lines.
Durations are short real times with wide margins (the host's clock is the event loop's).
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest

from conftest import ENGINE, run_in_process, run_script


def lines(tmp_path: Path, source: str, options: list[str] | None = None) -> list[str]:
    """What the script printed, run in this process on the virtual clock (the in-process harness), with
    ``moonlet run``'s options if given."""
    code, out = run_in_process(tmp_path, source, name="script.lua", options=options)
    assert code == 0, out
    return out


def test_spawn_and_wait_return_results_errors_and_timeouts(tmp_path: Path) -> None:
    out = lines(
        tmp_path,
        """
        local task = require "moonlet.task"
        local t = spawn(function(a, b) sleep(0.01) return a + b, "x", nil end, 1, 2)
        print("wait", t:wait())
        print("status", t:status())
        local bad = spawn(function() error({ code = 7 }) end)
        local ok, e = bad:wait()
        print("error value", ok, type(e), e.code)
        local slow = spawn(function() sleep(5) return "late" end)
        print("timeout", slow:wait(0.02))
        print("still", slow:status())
        print("cancel", slow:cancel(), slow:status(), slow:wait())
        print("self", task.current():cancel())
        print("zero", spawn(sleep, 1):wait(0))
        """,
    )
    assert out == [
        "wait\ttrue\t3\tx\tnil",
        "status\tdone",
        "error value\tfalse\ttable\t7",
        "timeout\tnil\ttimeout",
        "still\trunning",
        "cancel\ttrue\tfailed\tfalse\tcancelled",
        "self\tnil\ta task cannot cancel itself (return from it instead)",
        "zero\tnil\ttimeout",
    ]


def test_an_error_nobody_waits_for_is_logged_with_where_the_task_started(tmp_path: Path) -> None:
    proc = run_script(
        tmp_path,
        """
        spawn(function() sleep(0.01) error("lost in the background") end)
        sleep(0.05)
        print("main goes on")
        """,
    )
    assert proc.returncode == 0
    assert proc.stdout == b"main goes on\n"
    log = proc.stderr.decode()
    assert "task spawned at" in log and "script.lua:1 failed" in log and "lost in the background" in log


def test_cancel_during_every_kind_of_wait_frees_what_it_waited_on(tmp_path: Path) -> None:
    out = lines(
        tmp_path,
        """
        local sync = require "moonlet.sync"
        local q, ev, sem = sync.queue(), sync.event(), sync.semaphore(0)
        local other = spawn(sleep, 5)
        local waits = {
          sleep = function() sleep(5) end,
          queue = function() return q:get() end,
          event = function() ev:wait() end,
          semaphore = function() sem:acquire() end,
          task = function() other:wait() end,
        }
        for _, name in ipairs { "sleep", "queue", "event", "semaphore", "task" } do
          local t = spawn(waits[name])
          sleep(0.01)
          t:cancel()
          print(name, t:wait())
        end
        -- nothing handed over after the cancel is lost: the next waiter gets it
        local t = spawn(function() return q:get() end)
        q:put("kept")
        sem:release()
        local ok, v = t:wait()
        print("queue after", ok, v, sem:acquire(0))
        other:cancel()
        """,
    )
    assert out == [
        "sleep\tfalse\tcancelled",
        "queue\tfalse\tcancelled",
        "event\tfalse\tcancelled",
        "semaphore\tfalse\tcancelled",
        "task\tfalse\tcancelled",
        "queue after\ttrue\tkept\ttrue",
    ]


def test_cancelling_a_reader_lets_another_task_read_the_connection(lua_host) -> None:
    server = lua_host(
        """
        local net = require "moonlet.net"
        net.listen { host = "127.0.0.1", port = 0, handler = function(conn)
          local reader = spawn(function() return conn:readline() end)
          sleep(0.05)
          reader:cancel()
          conn:write("cancelled ", tostring(reader:status()), "\\n")
          conn:flush()
          conn:write("then read ", conn:readline(), "\\n")
        end }
        """
    )
    c = server.connect()
    assert c.line() == b"cancelled failed"
    c.send(b"hello\n")
    assert c.line() == b"then read hello"


def test_tasks_of_a_connection_end_with_it_unless_detached(lua_host) -> None:
    server = lua_host(
        """
        local net = require "moonlet.net"
        local log = require "moonlet.log"
        local kept, lost
        net.listen { host = "127.0.0.1", port = 0, handler = function(conn)
          local cmd = conn:readline()
          if cmd == "start" then
            lost = spawn(function() spawn(sleep, 5) sleep(5) end)  -- a grandchild too
            kept = spawn(function() sleep(0.2) log.info("detached task finished") end):detach()
            return
          end
          sleep(0.05)
          conn:write(lost:status(), " ", kept:status(), "\\n")
        end }
        """
    )
    first = server.connect()
    first.send(b"start\n")
    assert first.read_all() == b""
    probe = server.connect()
    probe.send(b"status\n")
    assert probe.line() == b"failed running"
    server.wait_log(b"detached task finished")


def test_timers_after_every_cancel_and_errors(tmp_path: Path) -> None:
    proc = run_script(
        tmp_path,
        """
        local time = require "moonlet.time"
        local n = 0
        local beat = time.every(0.01, function(step) n = n + step end, 1)
        time.after(0.02, function(who) print("after", who) end, "fired")
        local never = time.after(0.01, function() print("never") end)
        print("cancel", never:cancel(), never:cancel())
        time.after(0, function() sleep(0.01) error("timer broke") end)
        sleep(0.105)
        print("beats", n >= 7 and n <= 11)
        print("stop", beat:cancel())
        time.after(0.03, function() print("keeps the app alive") end)
        """,
    )
    assert proc.returncode == 0
    assert proc.stdout.decode().splitlines() == [
        "cancel\ttrue\tfalse",
        "after\tfired",
        "beats\ttrue",
        "stop\ttrue",
        "keeps the app alive",
    ]
    assert "timer (after) set at" in proc.stderr.decode() and "timer broke" in proc.stderr.decode()


def test_pending_timers_are_bounded_with_a_clear_error(tmp_path: Path) -> None:
    out = lines(
        tmp_path,
        """
        local time = require "moonlet.time"
        local timers, n, err = {}, 0, nil
        while true do
          local t, e = time.after(60, print)
          if not t then err = e break end
          n = n + 1
          timers[n] = t
        end
        print(n, err)
        for i = 1, n do timers[i]:cancel() end
        local again = time.after(60, print)
        print("after cancelling", again ~= nil)
        again:cancel()
        """,
        options=["--stall-budget", "0"],
    )
    assert out[0].startswith("100000\ttoo many timers (100000 pending")
    assert out[1] == "after cancelling\ttrue"


def test_queue_semaphore_event(tmp_path: Path) -> None:
    out = lines(
        tmp_path,
        """
        local sync = require "moonlet.sync"
        local q = sync.queue(2)
        local order = {}
        local producer = spawn(function()
          for i = 1, 5 do q:put(i) order[#order + 1] = "put" .. i end
          q:close()
        end)
        sleep(0.01)
        print("full", q:len(), table.concat(order, " "))
        local got = {}
        while true do
          local v, err = q:get()
          if v == nil then got[#got + 1] = err break end
          got[#got + 1] = v
        end
        print("got", table.concat(got, " "), producer:wait())
        print("closed put", q:put(1))
        print("empty get", sync.queue():get(0.01))
        print("full put", (function() local s = sync.queue(1) s:put(1) return s:put(2, 0.01) end)())

        local lock, inside, most = sync.semaphore(1), 0, 0
        local workers = {}
        for i = 1, 4 do
          workers[i] = spawn(function()
            return lock:with(function()
              inside = inside + 1
              if inside > most then most = inside end
              sleep(0.005)
              inside = inside - 1
              return i
            end)
          end)
        end
        local task = require "moonlet.task"
        local ok, all = task.wait_all(workers)
        print("lock", ok, most, all[4][2], lock:available())

        local ev = sync.event()
        local waiters = {}
        for i = 1, 3 do waiters[i] = spawn(function() return ev:wait(1) end) end
        print("event before", ev:is_set(), ev:wait(0.01))
        ev:set()
        local _, res = task.wait_all(waiters)
        print("event after", res[1][2], res[2][2], res[3][2], ev:wait())
        """,
    )
    assert out == [
        "full\t2\tput1 put2",
        "got\t1 2 3 4 5 closed\ttrue",
        "closed put\tnil\tclosed",
        "empty get\tnil\ttimeout",
        "full put\tnil\ttimeout",
        "lock\ttrue\t1\t4\t1",
        "event before\tfalse\tnil\ttimeout",
        "event after\ttrue\ttrue\ttrue\ttrue",
    ]


def test_wait_any_returns_the_first_to_finish(tmp_path: Path) -> None:
    out = lines(
        tmp_path,
        """
        local task = require "moonlet.task"
        local slow = spawn(function() sleep(0.2) return "slow" end)
        local fast = spawn(function() sleep(0.01) return "fast" end)
        local first, ok, v = task.wait_any({ slow, fast })
        print(first == fast, ok, v, slow:status())
        print(task.wait_any({ slow }, 0.01))
        print(task.wait_all({ slow, fast }, 0.01))
        """,
    )
    assert out == ["true\ttrue\tfast\trunning", "nil\ttimeout", "nil\ttimeout"]


def test_yields_work_in_pcall_metamethods_user_coroutines_and_require(tmp_path: Path) -> None:
    (tmp_path / "slowmod.lua").write_text('sleep(0.01)\nreturn { ready = "module ready" }\n')
    out = lines(
        tmp_path,
        """
        print("pcall", pcall(function() sleep(0.001) error("inside", 0) end))
        local lazy = setmetatable({}, { __index = function(_, k) sleep(0.001) return k .. "!" end })
        print("metamethod", lazy.hello)
        -- a generator that waits between values, driven by a for loop
        local function ticks(n)
          return coroutine.wrap(function()
            for i = 1, n do sleep(0.001) coroutine.yield(i) end
          end)
        end
        local got = {}
        for i in ticks(3) do got[#got + 1] = i end
        print("wrap", table.concat(got, ","))
        -- nested user coroutines, each mixing its own yields with host waits
        local outer = coroutine.create(function()
          local inner = coroutine.create(function(x)
            sleep(0.001)
            local y = coroutine.yield(x + 1)
            sleep(0.001)
            return y * 2
          end)
          local _, a = coroutine.resume(inner, 1)
          local b = coroutine.yield(a)
          local _, c = coroutine.resume(inner, b)
          return c
        end)
        local _, a = coroutine.resume(outer)
        local _, c = coroutine.resume(outer, 10)
        print("nested", a, c, coroutine.status(outer))
        print("require", require("slowmod").ready)
        """,
    )
    assert out == [
        "pcall\tfalse\tinside",
        "metamethod\thello!",
        "wrap\t1,2,3",
        "nested\t2\t20\tdead",
        "require\tmodule ready",
    ]


def test_waiting_where_lua_cannot_yield_names_the_boundary(tmp_path: Path) -> None:
    out = lines(
        tmp_path,
        """
        local function try(name, f)
          local ok, err = pcall(f)
          print(name, ok, err)
        end
        try("sort", function() table.sort({ 3, 1, 2 }, function(a, b) sleep(0) return a < b end) end)
        try("gsub", function() return ("abc"):gsub(".", function(c) sleep(0) return c end) end)
        try("tostring", function()
          return tostring(setmetatable({}, { __tostring = function() sleep(0) return "x" end }))
        end)
        """,
    )
    assert len(out) == 3
    if ENGINE == "luajit":  # LuaJIT yields across a __tostring that tostring calls
        assert out.pop() == "tostring\ttrue\tx"
    for line in out:
        assert line.split("\t")[1] == "false"
        assert "script.lua:" in line  # the position of the call that tried to wait
        assert "cannot wait here" in line and "table.sort comparator" in line


@pytest.mark.lua54("loops LuaJIT compiles end the worker there instead: tests/test_engines.py")
def test_a_stalled_handler_is_stopped_while_others_are_served(lua_host) -> None:
    server = lua_host(
        """
        local net = require "moonlet.net"
        net.listen { host = "127.0.0.1", port = 0, handler = function(conn)
          while true do
            local line = conn:readline()
            if not line then return end
            if line == "spin" then while true do end
            elseif line == "pcall" then while true do pcall(function() while true do end end) end
            elseif line == "child" then
              local co = coroutine.create(function() while true do end end)
              while true do coroutine.resume(co) end
            elseif line == "timer" then
              require("moonlet.time").after(0, function() while true do end end)
            end
            conn:write(line, "\\n")
          end
        end }
        """,
        options=["--stall-budget", "0.2"],
    )
    echo = server.connect()
    for case in (b"spin", b"pcall", b"child"):
        bad = server.connect()
        bad.send(case + b"\n")
        assert bad.read_all() == b""  # stopped: its connection is closed
        echo.send(b"still here\n")
        assert echo.line() == b"still here"
    server.wait_log(re.compile(rb"handler error on connection [^\n]*: stalled: ran 0\.2\ds without yielding"))
    assert "app0.lua:6: in function <" in server.log_text()  # where it was spinning
    echo.send(b"timer\n")
    assert echo.line() == b"timer"
    server.wait_log(re.compile(rb"timer \(after\) set at [^\n]*app0\.lua:\d+ failed: stalled"))
    echo.send(b"after all that\n")
    assert echo.line() == b"after all that"
    assert server.log_text().count("stalled: ran") == 4


def test_a_long_c_call_past_the_budget_stops_its_task_when_it_returns(lua_host) -> None:
    server = lua_host(
        """
        local net = require "moonlet.net"
        net.listen { host = "127.0.0.1", port = 0, handler = function(conn)
          while true do
            local line = conn:readline()
            if not line then return end
            if line == "sort" then
              local t = {}
              for i = 1, 1e6 do t[i] = (i * 7919) % 1000003 end
              table.sort(t)  -- one C call: it cannot be interrupted, only followed
              conn:write("sorted\\n")
            end
            conn:write(line, "\\n")
          end
        end }
        """,
        options=["--stall-budget", "0.05"],
    )
    sorter, other = server.connect(), server.connect()
    sorter.send(b"sort\n")
    assert sorter.read_all() == b""  # stopped right after the sort: no reply, connection closed
    server.wait_log(re.compile(rb"handler error on connection [^\n]*: stalled: ran \d\.\d\ds without"))
    other.send(b"still here\n")
    assert other.line() == b"still here"


def test_a_long_c_call_is_reported_by_the_lag_monitor(lua_host) -> None:
    server = lua_host(
        """
        local net = require "moonlet.net"
        net.listen { host = "127.0.0.1", port = 0, handler = function(conn) conn:write("hi\\n") end }
        local t = {}
        for i = 1, 3e6 do t[i] = (i * 7919) % 1000003 end
        table.sort(t)  -- one long C call: no Lua instruction runs, so only the lag monitor sees it
        """
    )
    server.wait_log(re.compile(rb"event loop blocked for \d+\.\d\ds in main chunk"))


def test_many_sleeping_tasks_all_wake_and_none_early(tmp_path: Path) -> None:
    out = lines(
        tmp_path,
        """
        local time = require "moonlet.time"
        local woke, early = 0, 0
        for i = 1, 2000 do
          spawn(function()
            local want = (i % 10) / 1000
            local t0 = time.monotonic()
            sleep(want)
            if time.monotonic() - t0 < want - 0.002 then early = early + 1 end
            woke = woke + 1
          end)
        end
        sleep(0.2)
        print(woke, early)
        """,
    )
    assert out == ["2000\t0"]


def test_a_conn_shared_by_tasks_behind_a_lock(lua_host) -> None:
    server = lua_host(
        """
        local net = require "moonlet.net"
        local sync = require "moonlet.sync"
        local task = require "moonlet.task"
        net.listen { host = "127.0.0.1", port = 0, handler = function(conn)
          local lock = sync.semaphore(1)
          local workers = {}
          for w = 1, 3 do
            workers[w] = spawn(function()
              for i = 1, 20 do
                lock:with(function()
                  conn:write("w", w, " ", i, " ")
                  sleep(0)
                  conn:writen("done\\n")
                end)
              end
            end)
          end
          task.wait_all(workers)
        end }
        """
    )
    c = server.connect()
    data = c.read_all().decode().splitlines()
    assert len(data) == 60
    assert all(line.endswith(" done") and line.startswith("w") for line in data)


def test_the_server_answers_during_a_slow_client_and_sleeping_tasks(lua_host) -> None:
    # a smoke check that tasks and connections share the loop: 200 sleepers do not delay an echo
    server = lua_host(
        """
        local net = require "moonlet.net"
        for i = 1, 200 do spawn(function() while true do sleep(0.001) end end) end
        net.listen { host = "127.0.0.1", port = 0, handler = function(conn)
          while true do
            local line = conn:readline()
            if not line then return end
            conn:write(line, "\\n")
          end
        end }
        """
    )
    c = server.connect()
    start = time.monotonic()
    for _ in range(20):
        c.send(b"ping\n")
        assert c.line() == b"ping"
    assert time.monotonic() - start < 5
    with socket.create_connection(("127.0.0.1", server.port), timeout=5):
        pass


JOB_QUEUE = """
local net, sync, workers, log = require "moonlet.net", require "moonlet.sync", require "moonlet.workers",
  require "moonlet.log"
local jobs = sync.queue()
for i = 1, 3 do
  spawn(function()
    while true do
      local job = jobs:get()  -- waits: nothing else would end this loop
      if job == nil then log.info("runner " .. i .. " stops") return end
    end
  end)
end
if %(hook)s then
  workers.ondrain(function()
    log.info("drain began: draining() is " .. tostring(workers.draining()))
    jobs:close()  -- every runner's get returns nil
  end)
end
net.listen { port = 0, handler = function(conn) conn:write(tostring(workers.draining()), "\\n") end }
"""


def test_apps_hear_the_drain_and_it_ends_when_their_work_does(lua_host) -> None:  # type: ignore[no-untyped-def]
    server = lua_host(JOB_QUEUE % {"hook": "true"}, options=["--drain-timeout", "20"])
    assert server.connect().line() == b"false"
    start = time.monotonic()
    assert server.stop() == 0
    took = time.monotonic() - start
    log = server.log_text()
    assert took < 1.0, (took, log)  # (it waited for the 20 s drain timeout before: the runners never ended)
    assert "drain began: draining() is true" in log and log.count("stops") == 3, log
    assert "drain timeout" not in log


def test_without_a_hook_the_drain_timeout_says_what_it_waited_for(lua_host) -> None:  # type: ignore[no-untyped-def]
    server = lua_host(JOB_QUEUE % {"hook": "false"}, options=["--drain-timeout", "0.5"])
    server.stop()
    assert "drain timeout: 3 tasks still running, 0 connections open; ending them" in server.log_text()
