"""A wake-up reaches only the wait it answers, a request worker only the connection it was given (issue 28).

The cause, in lupa 2.8: a Python object handed to Lua is wrapped in a userdata remembered by the object's
address in a weak table; once the collector clears a wrapper's slot and another wrapper takes it before the
first one's finalizer ran, the same object handed to Lua again arrives as the other object's wrapper. The
host hands Lua numbers instead (runtime/kernel/handles.py). The first test shows the hazard in lupa alone,
so a lupa that fixes it is noticed; the others hold moonlet to the rule under the load that broke it.
"""

from __future__ import annotations

import asyncio
import resource
from pathlib import Path

import pytest

from bench.handover import APP, drive, start_server
from conftest import run_script
from runtime.kernel.core import SUSPEND, Kernel
from runtime.kernel.ops import Op
from runtime.kernel.task import Task
from runtime.lua.state import lupa_of_this_engine as lupa


@pytest.mark.lua54("a study of lupa.lua54's wrappers, stepping Lua 5.4's incremental collector")
def test_lupa_hands_back_another_objects_wrapper_once_a_slot_is_reused() -> None:
    """Why no host object may cross into Lua twice (the rule of runtime/kernel/handles.py)."""

    class Thing:
        pass

    lua = lupa.LuaRuntime(encoding=None)
    lua.execute("collectgarbage('incremental', 100, 1, 0) collectgarbage('stop')")  # (small steps, by hand)
    keep = lua.eval("function(t, i, o) t[i] = o end")
    same = lua.eval("function(o) return o end")
    step = lua.eval("function() collectgarbage('step', 0) end")
    cleared = lua.eval(
        "function(n) local refs = debug.getregistry().LUPA_PYTHON_REFERENCES_TABLE "
        "for i = 1, n do if refs[i] == nil then return true end end return false end"
    )
    held = lua.table()
    things = [Thing() for _ in range(200)]
    for i, thing in enumerate(things):
        keep(held, i + 1, thing)
    for i in range(100, 200):  # Lua lets go of half of them (Python keeps them all)
        keep(held, i + 1, None)
    for _ in range(1000):  # until the collector has cleared their slots, their finalizers not yet run
        step()
        if cleared(200):
            break
    for i, thing in enumerate(Thing() for _ in range(50)):  # new wrappers take the cleared slots
        keep(held, 1000 + i, thing)
    back = [same(thing) for thing in things[100:]]
    wrong = sum(b is not t for b, t in zip(back, things[100:], strict=True))
    assert wrong > 0, "lupa no longer mixes up wrappers: see runtime/kernel/handles.py"


def test_host_objects_reach_lua_as_numbers_that_resolve_to_their_kind(tmp_path: Path) -> None:
    done = run_script(
        tmp_path,
        """
        local net, task, db = require "moonlet.net", require "moonlet.task", require "moonlet.db"
        local l = assert(net.listen { port = 0, handler = function() end })
        local t = task.spawn(function() return 42 end)
        print(math.type(l._py), math.type(t._py), math.type(task.current()._py))
        print(t:wait())
        t = nil collectgarbage() collectgarbage()      -- the task's table gives its number back
        local d = assert(db.open("sqlite:" .. arg[1]))
        print(math.type(d._py), d:query("select 1 as one")[1].one)
        l:close()
        print(pcall(l.close, l))                        -- a closed listener's number: still a listener
        """,
        str(tmp_path / "x.db"),
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    lines = done.stdout.decode().splitlines()
    assert lines == ["integer\tinteger\tinteger", "true\t42", "integer\t1", "true"], lines


def test_a_put_off_wake_up_for_a_wait_that_already_ended_is_dropped_and_counted() -> None:
    """A resume put off to a later loop turn belongs to the suspension it was made for: if the task was
    resumed meanwhile, it is dropped (and counted), never delivered to the task's next wait."""

    class Owner:
        ended: list[bool] = []  # noqa: RUF012

        def describe(self) -> str:
            return "test task"

        def task_exited(self, task: Task, ok: bool, error: bytes | None) -> None:
            self.ended.append(ok)

    loop = asyncio.new_event_loop()
    try:
        kernel = Kernel(loop.call_soon)
        kernel.register(Op.SLEEP, lambda task, a, b, c: SUSPEND)  # (a wait that only a resume ends)
        lua = lupa.LuaRuntime(encoding=None)
        got = lua.table()
        body = lua.eval(
            "function(got) for i = 1, 2 do got[i] = coroutine.yield(4, 1, nil, nil) end "
            "return 0, true, nil, nil end"
        )
        owner = Owner()
        task = kernel.spawn(owner, got, body=body)  # runs to its first wait
        kernel.resume_soon(task, b"stale")  # a wake-up for that first wait, put off ...
        kernel.resume(task, b"first")  # ... and the wait ends another way before it fires
        loop.call_soon(loop.stop)
        loop.run_forever()  # the put-off wake-up fires now, for a wait that has ended
        assert kernel.stale_wakeups == 1
        kernel.resume(task, b"second")
        assert [got[1], got[2]] == [b"first", b"second"] and owner.ended == [True]
    finally:
        loop.close()


def raise_open_files(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


@pytest.mark.slow  # (a helper starts its processes)
def test_every_answer_goes_to_the_request_that_asked_for_it_beside_slow_clients(tmp_path: Path) -> None:
    """Keep-alive clients whose every request carries an id the handler echoes, beside 300 connections that
    never finish their head (answered 408 after a second, then opened again), console sessions and request
    workers starting and retiring: every answer matches its request, no connection is dropped that the
    client did not close, no ERROR line. (On lupa's wrappers this lost ~2 connections a second.)"""
    raise_open_files(4096)
    app, log = tmp_path / "app.lua", tmp_path / "server.log"
    app.write_text(APP)
    proc, port = start_server(app, log)
    try:
        figures, stats = asyncio.run(drive(port, proc.pid, seconds=4, clients=8, slow=300))
    finally:
        proc.terminate()
        proc.wait(30)
    text = log.read_text(errors="replace")
    assert figures.answered > 500, figures.as_dict()
    assert figures.timeouts_408 > 0 and figures.console_sessions > 0, figures.as_dict()  # (they happened)
    assert figures.mismatches == 0 and figures.dropped == 0, figures.as_dict()
    assert " ERROR " not in text, [line for line in text.splitlines() if " ERROR " in line][:3]
    assert stats.get("stale_wakeups") is not None and stats.get("handles") is not None, stats


pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")
