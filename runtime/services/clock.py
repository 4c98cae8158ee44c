"""Time: sleeping tasks, and the deadline wheel that times out waits on connections.

Timeouts on reads and writes use a coarse wheel rather than one loop timer per wait: a wait only records its
deadline and, at most once per tick, appends its owner to a bucket. A busy connection that waits a hundred
thousand times a second touches the wheel a handful of times, and an idle connection costs one list slot
instead of a timer handle. A deadline fires at most one tick late and never early.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from typing import Protocol

from runtime.kernel.core import SUSPEND, Kernel
from runtime.kernel.ops import Op
from runtime.kernel.task import Task

TICK = 0.05  # seconds between the buckets of the deadline wheel


class HasDeadline(Protocol):
    deadline_key: int

    def on_deadline(self, now: float) -> None: ...


class Deadlines:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._buckets: dict[int, list[HasDeadline]] = {}
        self._keys: list[int] = []  # heap of bucket keys
        self._timer: asyncio.TimerHandle | None = None
        self._timer_key = 0
        self._fired = 0  # every key up to this one has fired

    def add(self, obj: HasDeadline, when: float) -> None:
        """Make sure ``obj.on_deadline`` is called at or after ``when`` (one tick late at most)."""
        key = math.ceil(when / TICK)
        if key <= self._fired:
            key = self._fired + 1
        if obj.deadline_key == key:
            return
        obj.deadline_key = key
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.append(obj)
            return
        self._buckets[key] = [obj]
        heapq.heappush(self._keys, key)
        if self._timer is None or key < self._timer_key:
            self._schedule(key)

    def _schedule(self, key: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_key = key
        self._timer = self._loop.call_at(key * TICK, self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = self._loop.time()
        limit = math.floor(now / TICK)
        keys, buckets = self._keys, self._buckets
        while keys and keys[0] <= limit:
            key = heapq.heappop(keys)
            self._fired = key
            for obj in buckets.pop(key):
                if obj.deadline_key == key:  # not moved to a later bucket since
                    obj.deadline_key = 0
                    obj.on_deadline(now)
        if keys:
            self._schedule(keys[0])


class ClockService:
    def __init__(self, kernel: Kernel, loop: asyncio.AbstractEventLoop) -> None:
        self._kernel = kernel
        self._loop = loop
        kernel.register(Op.SLEEP, self.sleep)
        kernel.register_call(Op.NOW, lambda a, b, c: time.time())
        kernel.register_call(Op.MONOTONIC, lambda a, b, c: time.monotonic())

    def sleep(self, task: Task, seconds: object, _b: object, _c: object) -> object:
        delay = float(seconds) if isinstance(seconds, int | float) else 0.0
        if delay <= 0:
            self._loop.call_soon(self._kernel.resume, task, True)
        else:
            self._loop.call_later(delay, self._kernel.resume, task, True)
        return SUSPEND
