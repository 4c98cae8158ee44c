"""Pipes between a pool job and the task that started it (``pool.spawn``), watched by the event loop.

A ``Channel`` is two bounded queues: values the job sends (``ch:put`` in its thread, ``job:get`` in the task)
and values the task sends (``job:put``, ``ch:get``). The rules:

1. Bounded in bytes both ways (``max_bytes`` each, by ``plain_size``'s rule): a value that would take a
   queue past its bound waits, the job's thread in a condition wait, the task in a park, so a slow reader
   never grows memory. A value bigger than the whole bound passes alone (into an empty queue), so each
   queue holds at most ``max(max_bytes, one value)``.
2. The thread never touches the loop's objects: it wakes the loop with ``call_soon_threadsafe``, and the
   loop wakes it through the condition. Values cross as plain values (runtime/lua/values.py).
3. Either side may close; the other's next ``get`` gives ``nil`` once what was sent is taken, its next
   ``put`` gives ``nil, "closed"``. The job returning (or failing) closes its side: ``job:get`` then gives
   ``nil`` (or ``nil, err`` with the job's traceback), and ``job:wait`` its results.
4. A large value reaches Lua in slices (``from_plain_in_slices``): other connections are served between them.
5. The task that started the job owns it: when that task ends or is cancelled, the channel is cancelled,
   and the job is stopped at its next channel operation (an error it cannot catch for long: its count hook
   fails every instruction from then on, as a timeout does).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from runtime.kernel.core import Kernel
from runtime.kernel.task import Task
from runtime.lua.values import NotPlainError, is_large, plain_size
from runtime.services.background import Background

CLOSED = (None, b"closed")
TIMEOUT = (None, b"timeout")


async def _as_is(value: Any) -> Any:
    return value


class CancelledError(Exception):
    """Raised in the job's thread at a channel operation once its starting task has ended."""


class Channel:
    KIND = "pool job"  # (what a misuse error calls it)

    __slots__ = (
        "background",
        "cancelled",
        "closed",
        "cond",
        "converting",
        "from_bytes",
        "from_job",
        "getter",
        "handle",
        "job",
        "kernel",
        "loop",
        "max_bytes",
        "putter",
        "result",
        "timer",
        "to_bytes",
        "to_job",
        "to_lua",
        "to_lua_in_slices",
        "waiter",
    )

    def __init__(
        self, kernel: Kernel, loop: asyncio.AbstractEventLoop, max_bytes: int, background: Background
    ) -> None:
        self.kernel = kernel
        self.loop = loop
        self.background = background  # the pool's: a conversion in slices runs there (in_flight sees it)
        self.max_bytes = max_bytes
        self.cond = threading.Condition()
        self.from_job: collections.deque[tuple[Any, int]] = collections.deque()  # (plain value, its size)
        self.to_job: collections.deque[tuple[Any, int]] = collections.deque()
        self.from_bytes = 0  # the sizes queued each way
        self.to_bytes = 0
        self.closed = False  # no more values either way (either side closed, or the job ended)
        self.cancelled = False  # the starting task ended: the job must stop
        self.result: tuple[bool, Any] | None = None  # the job's outcome, once it has ended
        self.job: Any = None  # the pool's Job (its deadline stops a cancelled job)
        # loop side: at most one task waiting in each of job:get, job:put, job:wait
        self.getter: Task | None = None
        self.putter: tuple[Task, Any, int] | None = None  # (task, plain value, its size)
        self.waiter: Task | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.handle = 0  # Lua's number for it (runtime/kernel/handles.py), held by pool.lua's job table
        self.to_lua: Callable[[Any], Any] = lambda v: v  # plain values into the loop's Lua state (the pool's)
        self.to_lua_in_slices: Callable[[Any], Awaitable[Any]] = _as_is
        self.converting = False  # a large value is on its way into Lua for the getter

    # -- the job's thread -----------------------------------------------------------------------------
    def thread_put(self, value: Any) -> bool:
        """Block while the value does not fit; False once the channel is closed. Raises CancelledError."""
        size = plain_size(value)
        with self.cond:
            while self.from_job and self.from_bytes + size > self.max_bytes and not self.closed:
                self.cond.wait(0.5)
            if self.cancelled:
                raise CancelledError
            if self.closed:
                return False
            self.from_job.append((value, size))
            self.from_bytes += size
            first = len(self.from_job) == 1
        if first:  # (a task finding the queue empty waits for this wake; later values it takes by itself)
            self._wake_loop()
        return True

    def thread_get(self, timeout: float | None) -> tuple[bool, Any]:
        """(True, value); (False, None) once closed and drained; (False, b"timeout"). May raise
        CancelledError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            while not self.to_job and not self.closed:
                if deadline is None:
                    self.cond.wait(0.5)
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False, b"timeout"
                    self.cond.wait(min(left, 0.5))
            if self.cancelled:
                raise CancelledError
            if not self.to_job:
                return False, None
            value, size = self.to_job.popleft()
            self.to_bytes -= size
            putter_waits = self.putter is not None  # (set under this lock: see offer)
        if putter_waits:
            self._wake_loop()
        return True, value

    def thread_close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self._wake_loop()

    def thread_finished(self, outcome: tuple[bool, Any]) -> None:
        """The job has returned or failed (from the thread): its side is closed."""
        with self.cond:
            if self.result is None:  # (a timeout said first stays)
                self.result = outcome
            self.closed = True
            self.cond.notify_all()
        self._wake_loop()

    def _wake_loop(self) -> None:
        with contextlib.suppress(RuntimeError):  # (the loop is closed: shutting down)
            self.loop.call_soon_threadsafe(self.serve_waiters)

    # -- the loop -----------------------------------------------------------------------------------
    def serve_waiters(self) -> None:
        """Answer the tasks waiting on this channel that can be answered now."""
        if self.getter is not None and not self.converting:
            reply = self.take()
            if reply is not None:
                task, self.getter = self.getter, None
                self._stop_timer()
                reply = self.answer(task, reply)
                if reply is not None:
                    self.kernel.resume(task, reply)
        if self.putter is not None:
            task, value, size = self.putter
            reply = self.offer(value, size)
            if reply is not None:
                self.putter = None
                self._stop_timer()
                self.kernel.resume(task, reply)
        if self.waiter is not None and self.result is not None:
            task, self.waiter = self.waiter, None
            self._stop_timer()
            reply = self.outcome(task)
            if reply is not None:
                self.kernel.resume(task, reply)

    def outcome(self, task: Task) -> Any:
        """job:wait's reply: the job's results, or nil, err; None if large results are being converted
        (``task`` is resumed with them once they are)."""
        assert self.result is not None
        ok, value = self.result
        if not ok:
            return (None, value)
        if any(map(is_large, value)):
            self.waiter = task
            self._convert_for(task, value, lambda results: (True, *results))
            return None
        return (True, *(self.to_lua(v) for v in value))

    def take(self) -> Any:
        """A value the job sent (as (True, plain value)), the end (nil, or nil, err), or None: nothing yet."""
        with self.cond:
            if self.from_job:
                value, size = self.from_job.popleft()
                self.from_bytes -= size
                self.cond.notify_all()
                return True, value
            if self.result is not None and not self.result[0]:
                return None, self.result[1]  # the job failed: its error
            if self.closed:
                return (None,)
        return None

    def answer(self, task: Task, taken: Any) -> Any:
        """What ``take`` gave, as ``task``'s reply; None if a large value is being converted (``task`` waits
        in the getter's slot and is resumed with it once it is)."""
        if taken[0] is not True:
            return taken
        value = taken[1]
        if not is_large(value):
            return True, self.to_lua(value)
        self.getter = task
        task.waiting = self
        self._convert_for(task, [value], lambda converted: (True, converted[0]))
        return None

    def _convert_for(self, task: Task, values: list[Any], reply: Callable[[list[Any]], Any]) -> None:
        self.converting = True
        self.background.run(self._convert(task, values, reply))

    async def _convert(self, task: Task, values: list[Any], reply: Callable[[list[Any]], Any]) -> None:
        try:
            converted = [await self.to_lua_in_slices(v) for v in values]
            answer = reply(converted)
        except NotPlainError as e:
            answer = (None, f"results: {e}".encode())
        finally:
            self.converting = False
        if self.getter is task:
            self.getter = None
        elif self.waiter is task:
            self.waiter = None
        else:
            return  # (the task was killed meanwhile: forgotten)
        self.kernel.resume(task, answer)

    def offer(self, value: Any, size: int, task: Task | None = None) -> Any:
        """Queue a value for the job: True, nil "closed", or None: no room yet (then ``task``, if given,
        becomes the putter, under the lock the job's thread checks it under)."""
        with self.cond:
            if self.closed:
                return CLOSED
            if not self.to_job or self.to_bytes + size <= self.max_bytes:
                self.to_job.append((value, size))
                self.to_bytes += size
                self.cond.notify_all()
                return True
            if task is not None:
                self.putter = (task, value, size)
        return None

    def close(self) -> None:
        """Either side's close (the task's job:close)."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.serve_waiters()

    def expire(self) -> None:
        """The job ran past its pool's timeout (on the loop): the task hears so; its count hook stops it."""
        with self.cond:
            if self.result is None:
                self.result = (False, b"timeout")
            self.closed = True
            self.cond.notify_all()
        self.serve_waiters()

    def cancel(self) -> None:
        """The starting task has ended: stop the job at its next channel operation, and by its count hook."""
        with self.cond:
            self.cancelled = True
            self.closed = True
            self.cond.notify_all()
        job = self.job
        if job is not None:
            job.deadline = -math.inf

    def park(self, task: Task, slot: str, timeout: object) -> None:
        if slot == "getter":
            self.getter = task
        elif slot == "waiter":
            self.waiter = task  # (a putter is set by offer)
        task.waiting = self
        delay = float(timeout) if isinstance(timeout, int | float) else math.inf
        if delay != math.inf:
            self.timer = self.loop.call_later(max(delay, 0.0), self._expire)

    def forget(self, task: Task) -> None:
        if self.getter is task:
            self.getter = None
        if self.putter is not None and self.putter[0] is task:
            self.putter = None
        if self.waiter is task:
            self.waiter = None
        self._stop_timer()

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expire(self) -> None:
        self.timer = None
        for task in (self.getter, self.putter[0] if self.putter else None, self.waiter):
            if task is not None:
                self.forget(task)
                self.kernel.resume(task, TIMEOUT)


__all__ = ["CLOSED", "TIMEOUT", "CancelledError", "Channel"]
