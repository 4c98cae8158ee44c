"""Light tasks, parking, and the stall check: the host half of ``moonlet.task`` and ``moonlet.sync``.

The Lua side keeps the data (queue items, semaphore counts, a task's results table); the host keeps only
what must not be forgeable or lost: which coroutine runs, which are parked, which have ended and how. Every
blocking primitive in Lua is built from two requests:

* ``PARK(timeout)`` suspends the running task until somebody calls ``UNPARK(task, value)`` (the reply is
  ``value``) or the timeout passes (``nil, "timeout"``). A task is woken at most once per park, and a killed
  task cannot be woken at all (``UNPARK`` returns false, so a queue hands its item to the next getter).
* ``WATCH(task)`` parks-on-end: the watcher is unparked when ``task`` ends.

Stall protection (a *run* is one resume: the task and its ``Task.runs``): :class:`StallGuard`'s thread
samples which run the loop thread is in; when one run has lasted the budget it marks that run stalled and
arms the count hook of the running task's coroutine (``runtime/lua/interrupt.py``), so tasks pay nothing
per instruction until then. Coroutines the app creates itself keep a periodic count hook (the watchdog
cannot tell which of them is running). Either hook asks ``STALL_CHECK`` whether the current run is the
stalled one; if so it records the traceback (``STALLED``) and makes every later instruction of that
coroutine raise, so no ``pcall`` loop can keep it alive; the task ends with that traceback as its error.
Without an interrupter (a lupa build it cannot read) every coroutine gets the periodic hook and
``STALL_CHECK`` times runs itself, as before.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import ClassVar, cast

from runtime.config import Limits
from runtime.kernel.core import SUSPEND, Kernel, bad_argument, one_line
from runtime.kernel.ops import Op
from runtime.kernel.task import PARKED, Extra, Task
from runtime.lua.interrupt import Interrupter
from runtime.services import Quiet
from runtime.services.metrics import Figures
from runtime.threadclock import ThreadClock

log = logging.getLogger("moonlet")

_TIMEOUT_REPLY = (None, b"timeout")
RUNNING, DONE, FAILED = 0, 1, 2  # RESULT's first value
CANCELLED = b"cancelled"


class TaskService(Quiet):
    """Owner of the tasks Lua spawns; serves the task, park and stall requests."""

    SERVES: ClassVar[frozenset[Op]] = frozenset(
        {
            Op.CANCEL,
            Op.CURRENT,
            Op.DRAINING,
            Op.ON_DRAIN,
            Op.DETACH,
            Op.JOIN,
            Op.PARK,
            Op.RESULT,
            Op.SPAWN,
            Op.STALLED,
            Op.STALL_CHECK,
            Op.TASK_FAILURES,
            Op.UNPARK,
            Op.UNWATCH,
            Op.WATCH,
        }
    )  # (its ops)

    def __init__(
        self, kernel: Kernel, loop: asyncio.AbstractEventLoop, limits: Limits, figures: Figures | None = None
    ) -> None:
        self.kernel = kernel
        self.figures = figures or Figures()  # (the runtime's metrics: stalls stopped)
        self.loop = loop
        self.stall_budget = limits.stall_budget
        self._run: tuple[Task | None, int] = (None, 0)  # the run the stall check last saw begin
        self._run_since = 0.0
        self.guard: StallGuard | None = None  # set by the host when the budget is on and arming works
        self.draining = False  # (a drain began: SIGTERM, or the old worker of a reload)
        self.drain_jobs: list[tuple[int, str]] = []  # workers.ondrain's functions, run when it begins
        self.failures = 0  # spawned tasks that failed with nobody waiting for them (moonlet test reads it)
        self.last_failure = ""
        # what the number of a task that ended and was forgotten names (kernel/handles.py)
        gone = Task(None, self)  # type: ignore[arg-type]
        gone.extra = Extra("a task that ended")
        gone.extra.result = (False, b"cancelled: the task ended and its handle was let go")
        kernel.handles.set_gone(Task, gone)
        kernel.wire(self)  # (the ops in SERVES, each by its handler _<op>)

    # -- owner of spawned tasks ------------------------------------------------------------------
    def describe(self) -> str:
        return "task"

    def task_exited(self, task: Task, ok: bool, error: bytes | None) -> None:
        if ok or error is None or error.startswith(CANCELLED):
            return
        extra = task.extra
        if extra is not None and extra.stall is None and extra.watchers:
            return  # somebody is waiting: wait() returns the error to them
        self.failures += 1
        self.last_failure = f"{task.describe()} failed: {one_line(error)}"
        log.error("%s", self.last_failure)

    def drain(self) -> None:
        """The server begins to drain: the app's drain hooks run, each a task (workers.ondrain)."""
        self.draining = True
        jobs, self.drain_jobs = self.drain_jobs, []
        for job, name in jobs:
            self.kernel.spawn(self, job, False, body=self.kernel.job_body, extra=Extra(name), soon=True)

    # -- requests --------------------------------------------------------------------------------
    def _on_drain(self, job: object, where: object, _c: object) -> bool:
        if not isinstance(job, int):
            raise TypeError("ondrain: bad job id")
        name = "drain hook set at " + (where.decode("utf-8", "replace") if isinstance(where, bytes) else "?")
        self.drain_jobs.append((job, name))
        if self.draining:  # (set after the drain began: it runs now)
            self.drain()
        return True

    def _draining(self, _a: object, _b: object, _c: object) -> bool:
        return self.draining

    def _spawn(self, job: object, where: object, _c: object) -> int:
        assert self.kernel.job_body is not None
        if not isinstance(job, int):
            raise TypeError("spawn: bad job id")
        name = "task spawned at " + (where.decode("utf-8", "replace") if isinstance(where, bytes) else "?")
        task = self.kernel.spawn(self, job, False, body=self.kernel.job_body, extra=Extra(name), soon=True)
        return self.kernel.handles.hold(task)  # (task.lua's table gives it back when collected)

    def _current(self, held: object, _b: object, _c: object) -> int | None:
        task = self.kernel.current
        if task is None:
            return None
        handles = self.kernel.handles
        return handles.hold(task) if held else handles.number(task)

    def _task(self, n: object, fn: str) -> Task:
        """The task number ``n`` names (a stand-in for one that ended and was forgotten), or Lua's argument
        error for ``fn``."""
        handles = self.kernel.handles
        task = handles.resolve(n, Task)
        if task is None:
            raise bad_argument(1, fn, "task", handles.found(n))
        return cast(Task, task)

    def _park(self, task: Task, timeout: object, _b: object, _c: object) -> object:
        if timeout is not None:
            delay = float(timeout) if isinstance(timeout, int | float) else 0.0
            if delay <= 0:
                return _TIMEOUT_REPLY
            if delay != math.inf:
                task.timer = self.loop.call_later(delay, self._park_expired, task, task.runs)
        task.waiting = PARKED
        return SUSPEND

    def _join(self, task: Task, n: object, timeout: object, _c: object) -> object:
        target = self._task(n, "wait")
        if target.co is None:
            return self._outcome(target)
        if target is task:
            raise ValueError("a task cannot wait for itself")
        self.kernel.watch(target, task)
        return self._park(task, timeout, None, None)

    def _park_expired(self, task: Task, runs: int) -> None:
        if task.waiting is PARKED and task.runs == runs:
            task.waiting = task.timer = None
            self.kernel.resume(task, _TIMEOUT_REPLY)

    def _unpark(self, n: object, value: object, _c: object) -> bool:
        return self.kernel.wake(self._task(n, "unpark"), True if value is None else value)

    def _cancel(self, n: object, _b: object, _c: object) -> object:
        if not self.kernel.kill(self._task(n, "cancel"), CANCELLED):
            return (None, b"a task cannot cancel itself (return from it instead)")
        return True

    def _detach(self, n: object, _b: object, _c: object) -> bool:
        task = self._task(n, "detach")
        root = task.root
        if root is not None and root is not task:
            task.root = None
            if root.extra is not None and root.extra.children:
                root.extra.children.discard(task)
        return True

    def _result(self, n: object, _b: object, _c: object) -> object:
        return self._outcome(self._task(n, "result"))

    @staticmethod
    def _outcome(task: Task) -> object:
        extra = task.extra
        if task.co is not None or extra is None or extra.result is None:
            return RUNNING
        ok, value = extra.result
        return (DONE, value) if ok else (FAILED, value)

    def _watch(self, n: object, _b: object, _c: object) -> bool:
        watcher = self.kernel.current
        task = self._task(n, "watch")
        if watcher is None:
            raise bad_argument(1, "watch", "task", n)
        if task is watcher:
            raise ValueError("a task cannot wait for itself")
        if task.co is None:
            return False
        self.kernel.watch(task, watcher)
        return True

    def _unwatch(self, n: object, _b: object, _c: object) -> None:
        watcher = self.kernel.current
        task = self.kernel.handles.resolve(n, Task)
        if task is not None and task.extra is not None and task.extra.watchers:
            watchers = task.extra.watchers
            if watcher in watchers:
                watchers.remove(watcher)

    def _stall_check(self, _a: object, _b: object, _c: object) -> bytes | None:
        task = self.kernel.current
        if task is None or self.stall_budget <= 0:
            return None
        guard = self.guard
        if guard is not None:  # the watchdog decides; a hook armed for an earlier run finds nothing
            if guard.stalled_task is not task or guard.stalled_runs != task.runs:
                return None
            return self._stall_message(guard.stalled_for)
        now = time.thread_time()  # (the loop thread's CPU: this runs on it, from the count hook)
        run = self._run
        if run[0] is not task or run[1] != task.runs:
            self._run, self._run_since = (task, task.runs), now
            return None
        used = now - self._run_since
        if used < self.stall_budget:
            return None
        return self._stall_message(used)

    def _stall_message(self, used: float) -> bytes:
        budget = self.stall_budget
        return f"stalled: ran {used:.2f}s without yielding (the CPU budget is {budget:g}s)".encode()

    def _task_failures(self, _a: object, _b: object, _c: object) -> object:
        return self.failures, self.last_failure.encode()

    def _stalled(self, traceback: object, _b: object, _c: object) -> None:
        task = self.kernel.current
        if task is None:
            return
        if task.extra is None:
            task.extra = Extra()
        if task.extra.stall is None and isinstance(traceback, bytes):
            task.extra.stall = traceback
            self.figures.stalls += 1


class StallGuard:
    """The watchdog thread of the stall budget: finds a run that has used ``budget`` seconds of the loop
    thread's CPU and arms the hook of the coroutine running it.

    It samples ``Kernel.current`` and that task's ``runs`` every ``budget / 10`` seconds (at most 0.1 s) and
    times a run by the loop thread's CPU clock from the first sample that saw it, so a stall is stopped
    between ``budget`` and ``budget`` + two periods of CPU after it began, and a run that waits for a core
    (a busy machine) or is stopped (SIGSTOP, a debugger) is never judged stuck (runtime/threadclock.py).
    Lua releases the GIL while it runs, so this thread reads the kernel's fields while the loop thread is
    busy in Lua. The loop thread counts a task's run before it makes the task ``current``, and this thread
    reads ``current`` before its count, so the count it reads is at least that of the run it saw current:
    two samples that read the same task and count saw one run (no other run of that task began between
    them), and a sample is used only when ``current`` is still the task after its count was read.

    LuaJIT runs no hook inside a loop it has compiled to machine code. With ``unstoppable`` given (the
    host's exit, on LuaJIT) a run that goes on for another ``max(budget, 1)`` seconds of CPU after its
    hook was armed is taken for such a loop: ``unstoppable`` logs it and ends the process, so that the
    supervisor replaces the worker (nothing else can stop it short of the block limit).
    """

    def __init__(
        self,
        kernel: Kernel,
        budget: float,
        interrupter: Interrupter,
        clock: ThreadClock,
        unstoppable: Callable[[str], None] | None = None,
    ) -> None:
        self._kernel = kernel
        self._unstoppable = unstoppable
        self._clock = clock  # the loop thread's
        self._budget = budget
        self._interrupter = interrupter
        self._period = min(0.1, budget / 10)
        self._stopped = threading.Event()
        # the run found over budget, its task and count (read by STALL_CHECK on the loop thread)
        self.stalled_task: Task | None = None
        self.stalled_runs = 0
        self.stalled_for = 0.0  # how long it had run when found

    def start(self) -> None:
        threading.Thread(target=self._watch, name="moonlet-stall-guard", daemon=True).start()

    def stop(self) -> None:
        self._stopped.set()

    def _watch(self) -> None:
        kernel = self._kernel
        seen_task: Task | None = None
        seen_runs, seen_cpu = 0, 0.0
        while not self._stopped.wait(self._period):
            task = kernel.current
            if task is None:
                seen_task = None
                continue
            runs = task.runs
            if kernel.current is not task:
                seen_task = None
                continue
            cpu = self._clock.cpu()
            if task is not seen_task or runs != seen_runs:
                seen_task, seen_runs, seen_cpu = task, runs, cpu
                continue
            if self.stalled_task is task and self.stalled_runs == runs:
                grace = max(self._budget, 1.0)
                if self._unstoppable is not None and cpu - seen_cpu >= self.stalled_for + grace:
                    self._unstoppable(
                        f"{task.describe()} has run {cpu - seen_cpu:.1f}s of CPU without yielding, and went "
                        f"on {grace:.3g}s after its stall hook was armed: a loop LuaJIT compiled, where "
                        "no hook runs (--engine luajit)"
                    )
                continue
            if cpu - seen_cpu < self._budget:
                continue
            co = task.co  # (held while arming: the coroutine's state stays alive)
            if co is not None:
                self.stalled_for = cpu - seen_cpu
                self.stalled_task, self.stalled_runs = task, runs
                self._interrupter.arm(co)
