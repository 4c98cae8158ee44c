"""Virtual time for ``moonlet test``: an event loop whose clock jumps ahead when nothing else can happen.

``it(name, fn, { virtual_time = true })`` runs a test on this clock, so an hour of sleeps or a 30 s read
timeout takes a moment, while real sockets on 127.0.0.1 keep working. The rules (as trio's ``MockClock``
with an automatic jump, adapted to an asyncio loop that also talks to threads and other processes):

1. The loop's ``time()`` is ``time.monotonic() + offset``; ``offset`` only grows, so time never goes back.
   Everything that waits (``sleep``, timers, I/O deadlines, ``task:wait`` timeouts) is scheduled on the loop's
   clock, and ``time.now``/``time.monotonic`` add the same offset: they all follow the jumps.
2. Jumping is on only while a virtual-time test runs; otherwise this is asyncio's selector loop, unchanged.
3. When the loop is about to wait for I/O until its next timer, it first polls without waiting. Only if
   nothing is ready does it jump, and not while work is in flight outside the loop (a pool job, a query, a
   connect or name lookup in progress: ``Host`` says so through ``in_flight``), because that work's answer
   is on real time. A peer in this same process has written before the loop polls, but one in another
   process (a database server, a client started by the test) answers in real time: while a task waits on
   such a peer (or on a datagram), the loop waits ``IO_GRACE`` real seconds before it jumps; otherwise it
   jumps at once.

uvloop's clock cannot be moved, so ``moonlet test`` runs every test file on this loop (asyncio's own
selector loop underneath) and ``moonlet run`` on uvloop; the Lua API is the same on both.
"""

from __future__ import annotations

import asyncio
import selectors
import time
from collections.abc import Callable, Mapping
from typing import Any

IO_GRACE = 0.05  # real seconds a peer in another process gets to answer before the clock jumps

Events = list[tuple[selectors.SelectorKey, int]]


def _never() -> bool:
    return False


class _JumpingSelector(selectors.BaseSelector):
    """The loop's selector, which turns a wait that nothing can end early into a jump of the clock."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        self._loop = loop
        self._real = selectors.DefaultSelector()

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()

    def select(self, timeout: float | None = None) -> Events:
        loop, real = self._loop, self._real
        if not loop.jumping or timeout is None or timeout <= 0:  # (None: no timer to jump to)
            return real.select(timeout)
        target = loop.time() + timeout
        events = real.select(0)
        if events or loop.in_flight():
            return events or real.select(timeout)
        if loop.waits_on_io():
            events = real.select(min(IO_GRACE, timeout))
            if events or loop.in_flight():
                return events
        loop.offset += max(0.0, target - loop.time())
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self, jumping: bool = False) -> None:
        self.offset = 0.0  # seconds this loop's clock is ahead of time.monotonic()
        self.jumping = jumping
        # set by the host: is work in flight outside the loop? does a task wait on a socket?
        self.in_flight: Callable[[], bool] = _never
        self.waits_on_io: Callable[[], bool] = _never
        super().__init__(_JumpingSelector(self))

    def time(self) -> float:
        return time.monotonic() + self.offset


def wall_clock(loop: asyncio.AbstractEventLoop) -> Callable[[], float]:
    """``time.time`` for this loop: moved by the same jumps as the loop's clock on a virtual-time loop."""
    if isinstance(loop, VirtualTimeLoop):
        return lambda: time.time() + loop.offset
    return time.time


def monotonic_clock(loop: asyncio.AbstractEventLoop) -> Callable[[], float]:
    """``time.monotonic`` for this loop (the loop's own ``time()`` may be coarser, as uvloop's is)."""
    if isinstance(loop, VirtualTimeLoop):
        return loop.time
    return time.monotonic


__all__ = ["IO_GRACE", "VirtualTimeLoop", "monotonic_clock", "wall_clock"]
