"""Unit tests of host parts that need no server: value conversion, the deadline wheel, virtual time's clock,
the op vocabulary's invariants. In process, no sockets, no sleeps."""

from __future__ import annotations

import math
import weakref
from typing import Any

import pytest

from runtime.kernel.ops import CALLS, YIELDING, Op
from runtime.lua.state import new_lua_runtime
from runtime.lua.values import MAX_DEPTH, NotPlainError, from_plain, to_plain
from runtime.services.clock import TICK, Deadlines
from runtime.services.stream import _seconds
from runtime.virtualtime import VirtualTimeLoop, monotonic_clock, wall_clock


@pytest.fixture(scope="module")
def lua() -> Any:
    return new_lua_runtime(0)


def test_lua_values_become_plain_python_and_back(lua: Any) -> None:
    table = lua.eval('{1, 2, {a = "x", [true] = 1.5}, n = nil}')
    assert to_plain(table) == [1, 2, {b"a": b"x", True: 1.5}]
    assert to_plain(lua.eval('{[1] = "a", [3] = "c"}')) == {1: b"a", 3: b"c"}  # a hole: not an array
    assert to_plain(lua.eval("{}")) == []  # (an empty table reads as an empty array)
    assert to_plain("text") == b"text" and to_plain(b"\xff") == b"\xff"
    back = from_plain(lua, {b"k": [1, {b"x": b"y"}], 2: False})
    assert lua.eval("function(t) return t.k[1], t.k[2].x, t[2] end")(back) == (1, b"y", False)


def test_python_containers_cross_as_tables() -> None:
    assert to_plain({"name": "ann", "tags": ["a", "b"], "n": (1, 2)}) == {
        b"name": b"ann",
        b"tags": [b"a", b"b"],
        b"n": [1, 2],
    }


@pytest.mark.parametrize(
    "source, message",
    [
        ("print", "a function cannot cross"),
        ("{[{}] = 1}", "table keys must be"),
    ],
)
def test_what_cannot_cross_says_why(lua: Any, source: str, message: str) -> None:
    with pytest.raises(NotPlainError, match=message):
        to_plain(lua.eval(source))


def test_nesting_is_bounded_both_ways(lua: Any) -> None:
    make = "function(n) local top = {} local t = top for _ = 1, n do t.x = {} t = t.x end return top end"
    deep = lua.eval(make)(MAX_DEPTH + 2)
    with pytest.raises(NotPlainError, match="nested deeper"):
        to_plain(deep)
    cycle = lua.eval("(function() local t = {} t.self = t return t end)()")
    with pytest.raises(NotPlainError, match="nested deeper"):
        to_plain(cycle)
    nested: list[Any] = []
    for _ in range(MAX_DEPTH + 2):
        nested = [nested]
    with pytest.raises(NotPlainError):
        from_plain(lua, nested)
    with pytest.raises(NotPlainError, match="cannot cross into Lua"):
        from_plain(lua, object())


class FakeLoop:
    """A loop whose clock the test moves and whose timers it runs."""

    def __init__(self) -> None:
        self.now = 100.0
        self.timers: list[tuple[float, Any]] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, fn: Any) -> Any:
        entry = (when, fn)
        self.timers.append(entry)
        loop = self

        class Handle:
            def cancel(self) -> None:
                if entry in loop.timers:
                    loop.timers.remove(entry)

        return Handle()

    def call_later(self, delay: float, fn: Any) -> Any:
        return self.call_at(self.now + delay, fn)

    def advance(self, to: float) -> None:
        """Move the clock to ``to``, running each timer due on the way (at its own time)."""
        while True:
            due = sorted((w, f) for w, f in self.timers if w <= to)
            if not due:
                break
            when, fn = due[0]
            self.timers.remove((when, fn))
            self.now = max(self.now, when)
            fn()
        self.now = to


class Waiter:
    def __init__(self) -> None:
        self.deadline_key = 0
        self.fired_at: float | None = None

    def on_deadline(self, now: float) -> None:
        self.fired_at = now


def test_a_deadline_fires_never_early_and_at_most_a_tick_late() -> None:
    loop = FakeLoop()
    wheel = Deadlines(loop)  # type: ignore[arg-type]
    waiters = [Waiter() for _ in range(50)]
    for i, w in enumerate(waiters):
        wheel.add(w, loop.now + 0.001 * i + 0.0003)
    loop.advance(loop.now + 1.0)
    for i, w in enumerate(waiters):
        due = 100.0 + 0.001 * i + 0.0003
        assert w.fired_at is not None and due <= w.fired_at <= due + TICK + 1e-9, (i, w.fired_at, due)


def test_a_moved_deadline_fires_only_at_its_new_time() -> None:
    loop = FakeLoop()
    wheel = Deadlines(loop)  # type: ignore[arg-type]
    w = Waiter()
    wheel.add(w, loop.now + 0.010)
    wheel.add(w, loop.now + 0.500)  # (a read that got bytes and waits again)
    loop.advance(loop.now + 0.100)
    assert w.fired_at is None
    loop.advance(loop.now + 1.0)
    assert w.fired_at is not None and w.fired_at >= 100.5


def test_the_wheel_holds_an_object_once_and_lets_it_go_when_removed() -> None:
    loop = FakeLoop()
    wheel = Deadlines(loop)  # type: ignore[arg-type]
    early, late = Waiter(), Waiter()
    wheel.add(early, loop.now + 75)  # (a keep-alive reminder far ahead ...)
    wheel.add(early, loop.now + 0.010)  # (... then a header timeout before it)
    wheel.add(late, loop.now + 75)
    wheel.remove(late)  # (a connection lost: nothing of it may stay until the keep-alive's time)
    gone = weakref.ref(late)
    del late
    assert gone() is None
    loop.advance(loop.now + 0.100)
    assert early.fired_at is not None  # once, at the earlier time ...
    early.fired_at = None
    held = weakref.ref(early)
    del early
    assert held() is None  # ... and the later bucket let go of it when it moved
    loop.advance(loop.now + 100)


def test_a_connection_keeps_the_shared_float_for_a_default_or_never_timeout() -> None:
    # (each Lua number reaches the host as a new float: kept per idle connection, 24 bytes each)
    default = 60.0
    assert _seconds(float("inf"), default) is math.inf
    assert _seconds(float("60"), default) is default and _seconds(60, default) is default
    assert _seconds(2.5, default) == 2.5 and _seconds(3, default) == 3.0


def test_the_virtual_clock_moves_only_forward_and_time_follows_it() -> None:
    loop = VirtualTimeLoop()
    try:
        wall, mono = wall_clock(loop), monotonic_clock(loop)
        before_wall, before_mono = wall(), mono()
        loop.offset += 3600.0
        assert wall() - before_wall >= 3600.0 and mono() - before_mono >= 3600.0
        assert loop.time() == pytest.approx(mono(), abs=0.01)
    finally:
        loop.close()


def test_the_op_vocabulary_is_closed_and_split_by_kind() -> None:
    values = [op.value for op in Op]
    assert len(values) == len(set(values))  # no number twice
    assert YIELDING.isdisjoint(CALLS) and set(Op) == YIELDING | CALLS
    assert all(op.signature.startswith("(") for op in Op)  # (each declares what it takes and answers)
    assert math.isfinite(TICK) and 0 < TICK <= 0.01
