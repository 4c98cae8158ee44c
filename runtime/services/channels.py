"""Pipes between a pool job and the task that started it (``pool.spawn``), watched by the event loop.

A ``Channel`` is two bounded queues: values the job sends (``ch:put`` in its thread, ``job:get`` in the task)
and values the task sends (``job:put``, ``ch:get``). The rules:

1. Bounded both ways (``size`` values each): a full queue blocks the producer, the job's thread in a
   condition wait, the task in a park, so a slow reader never grows memory.
2. The thread never touches the loop's objects: it wakes the loop with ``call_soon_threadsafe``, and the
   loop wakes it through the condition. Values cross as plain values (runtime/lua/values.py).
3. Either side may close; the other's next ``get`` gives ``nil`` once what was sent is taken, its next
   ``put`` gives ``nil, "closed"``. The job returning (or failing) closes its side: ``job:get`` then gives
   ``nil`` (or ``nil, err`` with the job's traceback), and ``job:wait`` its results.
4. The task that started the job owns it: when that task ends or is cancelled, the channel is cancelled,
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
from collections.abc import Callable
from typing import Any

from runtime.kernel.core import Kernel
from runtime.kernel.task import Task

CLOSED = (None, b"closed")
TIMEOUT = (None, b"timeout")


class CancelledError(Exception):
    """Raised in the job's thread at a channel operation once its starting task has ended."""


class Channel:
    KIND = "pool job"  # (what a misuse error calls it)

    __slots__ = (
        "cancelled",
        "closed",
        "cond",
        "from_job",
        "getter",
        "handle",
        "job",
        "kernel",
        "loop",
        "putter",
        "result",
        "size",
        "timer",
        "to_job",
        "to_lua",
        "waiter",
    )

    def __init__(self, kernel: Kernel, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self.kernel = kernel
        self.loop = loop
        self.size = size
        self.cond = threading.Condition()
        self.from_job: collections.deque[Any] = collections.deque()  # plain values the job sent
        self.to_job: collections.deque[Any] = collections.deque()  # plain values for the job
        self.closed = False  # no more values either way (either side closed, or the job ended)
        self.cancelled = False  # the starting task ended: the job must stop
        self.result: tuple[bool, Any] | None = None  # the job's outcome, once it has ended
        self.job: Any = None  # the pool's Job (its deadline stops a cancelled job)
        # loop side: at most one task waiting in each of job:get, job:put, job:wait
        self.getter: Task | None = None
        self.putter: tuple[Task, Any] | None = None
        self.waiter: Task | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.handle = 0  # Lua's number for it (runtime/kernel/handles.py), held by pool.lua's job table
        self.to_lua: Callable[[Any], Any] = lambda v: v  # plain values into the loop's Lua state (the pool's)

    # -- the job's thread -----------------------------------------------------------------------------
    def thread_put(self, value: Any) -> bool:
        """Block while the queue is full; False once the channel is closed. Raises CancelledError."""
        with self.cond:
            while len(self.from_job) >= self.size and not self.closed:
                self.cond.wait(0.5)
            if self.cancelled:
                raise CancelledError
            if self.closed:
                return False
            self.from_job.append(value)
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
            was_full = len(self.to_job) >= self.size
            value = self.to_job.popleft()
        if was_full:  # (only then can a task be waiting to put)
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
        if self.getter is not None:
            reply = self.take()
            if reply is not None:
                task, self.getter = self.getter, None
                self._stop_timer()
                self.kernel.resume(task, reply)
        if self.putter is not None:
            task, value = self.putter
            reply = self.offer(value)
            if reply is not None:
                self.putter = None
                self._stop_timer()
                self.kernel.resume(task, reply)
        if self.waiter is not None and self.result is not None:
            task, self.waiter = self.waiter, None
            self._stop_timer()
            self.kernel.resume(task, self.outcome())

    def outcome(self) -> Any:
        """job:wait's reply: the job's results, or nil, err."""
        assert self.result is not None
        ok, value = self.result
        if not ok:
            return (None, value)
        results = tuple(self.to_lua(v) for v in value)
        return (True, *results)

    def take(self) -> Any:
        """A value the job sent (as (True, value)), the end (nil, or nil, err), or None: nothing yet."""
        with self.cond:
            if self.from_job:
                value = self.from_job.popleft()
                self.cond.notify_all()
                return True, self.to_lua(value)
            if self.result is not None and not self.result[0]:
                return None, self.result[1]  # the job failed: its error
            if self.closed:
                return (None,)
        return None

    def offer(self, value: Any) -> Any:
        """Queue a value for the job: True, nil "closed", or None: no room yet."""
        with self.cond:
            if self.closed:
                return CLOSED
            if len(self.to_job) < self.size:
                self.to_job.append(value)
                self.cond.notify_all()
                return True
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

    def park(self, task: Task, slot: str, value: Any, timeout: object) -> None:
        if slot == "getter":
            self.getter = task
        elif slot == "putter":
            self.putter = (task, value)
        else:
            self.waiter = task
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
