"""Time: sleeping tasks, timers, the deadline wheel that times out waits on connections, the lag monitor.

Timeouts on reads and writes use a coarse wheel rather than one loop timer per wait: a wait only records its
deadline and, at most once per tick, appends its owner to a bucket. A busy connection that waits a hundred
thousand times a second touches the wheel a handful of times, and an idle connection costs one list slot
instead of a timer handle. A deadline fires at most one tick late and never early.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import heapq
import logging
import math
import os
import struct
import termios
import threading
import time
from collections.abc import Callable
from typing import ClassVar, Protocol

from runtime.kernel.core import SUSPEND, Kernel, one_line
from runtime.kernel.ops import Op
from runtime.kernel.task import Task
from runtime.services import Defaults, Quiet
from runtime.services.metrics import Figures
from runtime.threadclock import ThreadClock, Work
from runtime.virtualtime import VirtualTimeLoop, monotonic_clock, wall_clock

log = logging.getLogger("moonlet")

TICK = 0.005  # seconds between the buckets of the deadline wheel: an I/O timeout fires at most this late


class HasDeadline(Protocol):
    deadline_key: int

    def on_deadline(self, now: float) -> None: ...


LATE = 0.05  # seconds late a deadline check may run before it waits for one I/O poll first


class Deadlines:
    """A wheel of 5 ms buckets. An object is in one bucket at most, its ``deadline_key``'s: moving it to an
    earlier one takes it out of the later, and ``remove`` takes it out at once, so a closed connection is
    not held until a keep-alive or send timeout far ahead would have fired."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._buckets: dict[int, dict[HasDeadline, None]] = {}  # (dicts: ordered sets, O(1) removal)
        self._keys: list[int] = []  # heap of bucket keys
        self._timer: asyncio.TimerHandle | None = None
        self._timer_key = 0
        self._fired = 0  # every key up to this one has fired
        self._polled = False  # a late firing was put off until the loop had polled for I/O once

    def add(self, obj: HasDeadline, when: float) -> None:
        """Make sure ``obj.on_deadline`` is called at or after ``when`` (one tick late at most)."""
        key = math.ceil(when / TICK)
        if key <= self._fired:
            key = self._fired + 1
        old = obj.deadline_key
        if old == key:
            return
        if old:
            self.remove(obj)
        obj.deadline_key = key
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket[obj] = None
            return
        self._buckets[key] = {obj: None}
        heapq.heappush(self._keys, key)
        if self._timer is None or key < self._timer_key:
            self._schedule(key)

    def remove(self, obj: HasDeadline) -> None:
        """No call for ``obj`` after all."""
        bucket = self._buckets.get(obj.deadline_key)
        if bucket is not None:
            bucket.pop(obj, None)  # (an emptied bucket stays until its time: one per 5 ms slot at most)
        obj.deadline_key = 0

    def _schedule(self, key: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_key = key
        self._timer = self._loop.call_at(key * TICK, self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = self._loop.time()
        if not self._polled and now - self._timer_key * TICK > LATE:
            # The loop was blocked: bytes that would reset these deadlines may be waiting in the sockets,
            # and libuv runs timers before it polls. Expire nothing until the next turn, after the poll.
            self._polled = True
            self._timer = self._loop.call_later(0.001, self._fire)  # (0 would run in this same timer phase)
            return
        self._polled = False
        limit = math.floor(now / TICK)
        keys, buckets = self._keys, self._buckets
        while keys and keys[0] <= limit:
            key = heapq.heappop(keys)
            self._fired = key
            for obj in buckets.pop(key):
                if obj.deadline_key == key:  # (not removed by an earlier one's on_deadline)
                    obj.deadline_key = 0
                    obj.on_deadline(now)
        if keys:
            self._schedule(keys[0])


class TestGuard:
    """Ends a test that runs in virtual time (whose clock jumps, so it cannot time the test itself) once the
    loop thread has worked ``limit`` seconds on it (runtime/threadclock.py: never time spent waiting for a
    core). If the loop does not get to ending it within ``GRACE`` more seconds of work (stuck inside a C
    call, where no Lua runs), it ends the process with status 70: ``moonlet test`` reports the file."""

    GRACE = 2.0
    PERIOD = 0.05

    def __init__(
        self, loop: asyncio.AbstractEventLoop, clock: ThreadClock, limit: float, expire: Callable[[], None]
    ):
        self._loop, self._clock, self._limit, self._expire = loop, clock, limit, expire
        self._stopped = threading.Event()
        self.ended = False  # expire ran (on the loop thread)
        threading.Thread(target=self._watch, name="moonlet-test-guard", daemon=True).start()

    def cancel(self) -> None:
        self._stopped.set()

    def _end(self) -> None:
        self.ended = True
        self._expire()

    def _watch(self) -> None:
        work = Work(self._clock, self.PERIOD)
        work.start()
        while not self._stopped.wait(self.PERIOD):
            if work.sample() >= self._limit:
                break
        else:
            return
        self._loop.call_soon_threadsafe(self._end)
        until = work.done + self.GRACE
        while not self._stopped.wait(self.PERIOD):
            if self.ended:
                return
            if work.sample() >= until:
                log.critical(
                    "a test in virtual time is stuck %.1fs past its timeout of %gs inside a C call (no Lua "
                    "runs there to stop): ending the test process",
                    work.done - self._limit,
                    self._limit,
                )
                logging.shutdown()
                os._exit(70)


class ClockService(Quiet):
    SERVES: ClassVar[frozenset[Op]] = frozenset(
        {Op.SLEEP, Op.NOW, Op.MONOTONIC, Op.VIRTUAL_TIME}
    )  # (its ops)

    def __init__(self, kernel: Kernel, loop: asyncio.AbstractEventLoop) -> None:
        self._kernel = kernel
        self._loop = loop
        self._guard: TestGuard | None = None  # ends a virtual-time test that runs too long for real
        self._guard_expired = False
        self._loop_clock = ThreadClock.here()  # (made on the loop thread: runtime/services/registry.py)
        kernel.wire(self)  # (the ops in SERVES, each by its handler _<op>)
        self._wall_clock, self._monotonic_clock = wall_clock(loop), monotonic_clock(loop)

    def _now(self, _a: object, _b: object, _c: object) -> float:
        return self._wall_clock()

    def _monotonic(self, _a: object, _b: object, _c: object) -> float:
        return self._monotonic_clock()

    def _virtual_time(self, on: object, real_limit: object, task: object) -> object:
        """Turn the jumping clock of ``moonlet test`` on (for a test run as ``task``) or off.

        A test in virtual time cannot be timed out by the clock it moves: ``real_limit`` seconds of real time
        later, a thread ends ``task``. Turning the clock off says whether that happened."""
        loop = self._loop
        if not isinstance(loop, VirtualTimeLoop):
            return (None, b"virtual time needs the loop of moonlet test")
        if self._guard is not None:
            self._guard.cancel()
            self._guard = None
        loop.jumping = bool(on)
        if not on:
            expired, self._guard_expired = self._guard_expired, False
            return expired
        task = self._kernel.handles.get(task)
        if isinstance(real_limit, int | float) and isinstance(task, Task) and real_limit != math.inf:
            why = f"timed out after {real_limit:g}s of real time (the test runs in virtual time)".encode()

            def expire() -> None:
                self._guard_expired = True
                self._kernel.kill(task, why)

            self._guard = TestGuard(loop, self._loop_clock, float(real_limit), expire)
        return True

    def _sleep(self, task: Task, seconds: object, _b: object, _c: object) -> object:
        delay = float(seconds) if isinstance(seconds, int | float) else 0.0
        if delay <= 0:
            self._kernel.resume_soon(task, True)
        elif delay != math.inf:
            task.timer = self._loop.call_later(delay, self._kernel.resume_if, task, task.runs, True)
        return SUSPEND


class Timer:
    """A ``time.after``/``time.every`` timer: runs its Lua function as a new task each time it fires."""

    __slots__ = ("handle", "interval", "job", "service", "when", "where")

    def __init__(self, service: TimerService, job: int, interval: float, where: str) -> None:
        self.service = service
        self.job = job  # what to run, kept on the Lua side (see _host.lua)
        self.interval = interval  # 0 for a one-shot timer
        self.where = where
        self.when = 0.0
        self.handle: asyncio.TimerHandle | None = None

    def describe(self) -> str:
        kind = f"every {self.interval:g}s" if self.interval else "after"
        return f"timer ({kind}) set at {self.where}"

    def task_exited(self, task: Task, ok: bool, error: bytes | None) -> None:
        if not ok:
            log.error("%s failed: %s", self.describe(), one_line(error))

    def fire(self) -> None:
        service = self.service
        if self.interval:
            # fixed rate; after a stall, skip the missed beats rather than run them back to back
            now = service.loop.time()
            self.when += self.interval
            if self.when < now:
                self.when = now + self.interval
            self.handle = service.loop.call_at(self.when, self.fire)
        else:
            self.handle = None
            service.active.pop(self.job, None)
        service.kernel.spawn(self, self.job, bool(self.interval), body=service.kernel.job_body)
        if not service.active:
            service.kernel.check_idle()

    def cancel(self) -> bool:
        if self.handle is None:
            return False
        self.handle.cancel()
        self.handle = None
        self.service.active.pop(self.job, None)
        if not self.service.active:
            self.service.kernel.check_idle()
        return True


class TimerService(Defaults):
    """``TIMER`` and ``TIMER_CANCEL``: at most ``max_timers`` pending at once."""

    SERVES: ClassVar[frozenset[Op]] = frozenset({Op.TIMER, Op.TIMER_CANCEL})  # (its ops)

    def __init__(self, kernel: Kernel, loop: asyncio.AbstractEventLoop, max_timers: int) -> None:
        self.kernel = kernel
        self.loop = loop
        self.max_timers = max_timers
        # pending timers by job id: they keep an app without listeners running. Lua holds the id, not the
        # Timer: every Python object handed to Lua costs a slot in lupa's reference table until Lua's
        # collector finalises its wrapper, and a burst of timers would leave that table at the burst's size.
        self.active: dict[int, Timer] = {}
        kernel.wire(self)  # (the ops in SERVES, each by its handler _<op>)

    def _timer(self, delay: object, interval: object, job: object, where: object = None) -> object:
        if len(self.active) >= self.max_timers:
            return (None, f"too many timers ({self.max_timers} pending; see Limits.max_timers)".encode())
        if (
            not isinstance(delay, int | float)
            or not isinstance(interval, int | float)
            or not isinstance(job, int)
        ):
            raise TypeError("timer: bad arguments")
        name = where.decode("utf-8", "replace") if isinstance(where, bytes) else "?"
        timer = Timer(self, job, float(interval), name)
        timer.when = self.loop.time() + float(delay)
        timer.handle = self.loop.call_at(timer.when, timer.fire)
        self.active[job] = timer
        return job

    def _timer_cancel(self, job: object, _b: object, _c: object) -> bool:
        if not isinstance(job, int):
            raise TypeError("not a timer")
        timer = self.active.get(job)
        return timer is not None and timer.cancel()

    def cancel_all(self) -> None:
        """On drain: timers stop firing, so the app can finish."""
        for timer in list(self.active.values()):
            timer.cancel()

    # -- the service's lifecycle (runtime/services/__init__.py) -------------------------------------
    def keeps_alive(self) -> bool:
        return bool(self.active)

    def drain(self) -> None:
        self.cancel_all()

    async def close(self) -> None:
        self.cancel_all()

    def statistics(self) -> dict[str, int | float]:
        return {"timers": len(self.active)}

    def console_rows(self, topic: str) -> list[str]:
        if topic != "tasks":
            return []
        now = self.loop.time()
        return [f"timer  {t.describe()}  next in {t.when - now:.2f}s" for t in list(self.active.values())]


class LagMonitor:
    """Warns when the event loop was blocked (a long C call, blocking work on the loop thread), naming what
    blocked it: a watchdog thread notices the loop's heartbeat is late *while* it is blocked and asks
    ``running()`` what the loop thread is running (Lua and blocking calls release the GIL, so it can).

    It is also the last resort against a block nothing else can end (a C call on client input, where the
    stall budget cannot interrupt): after ``block_limit`` seconds of the loop thread's work (its CPU time,
    and time asleep inside the call: runtime/threadclock.py) it logs what was running and exits the process
    (status 70), so the supervisor replaces the worker. A SIGTERM that arrives meanwhile cannot run its
    handler on the blocked loop; the watchdog sees a signal waiting unread on the loop's signal socket (its
    write end: the bytes still queued, TIOCOUTQ; which signal is not visible) and exits once the loop has
    worked ``drain_timeout`` seconds since, as a drain would have ended by then.

    A late loop that did not work (the process waited for a core on a busy machine, or was stopped) is
    neither blocked nor stuck: it is logged as such, at info, and never ends the process.
    """

    PERIOD = 0.1
    BLOCKED_EXIT = 70  # EX_SOFTWARE

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        warn_after: float,
        running: Callable[[], str | None] | None = None,
        *,
        block_limit: float = 0.0,
        drain_timeout: float = 30.0,
        signal_fd: int | None = None,
        before_exit: Callable[[], None] | None = None,
        clock: ThreadClock,
        figures: Figures | None = None,
    ) -> None:
        self._loop = loop
        self._figures = figures or Figures()  # (the runtime's metrics: each beat's lag, the blocks)
        self._work = Work(clock, self.PERIOD)  # (the loop thread's clock)
        self._beat_cpu = 0.0  # the loop thread's CPU time at the last tick
        self._block_work = 0.0  # the work the watchdog counted in the current block (read by _tick)
        self._warn_after = warn_after
        self._running = running
        self._block_limit = block_limit
        self._drain_timeout = drain_timeout
        self._signals = os.dup(signal_fd) if signal_fd is not None else None
        self._before_exit = before_exit
        self._expected = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._beat = 0.0  # time.monotonic() of the last tick, read by the watchdog
        self._culprit: str | None = None  # what the watchdog saw running during the current block
        self._stopped = threading.Event()
        self.worst = 0.0  # the longest block seen, in seconds

    def start(self) -> None:
        # (on a virtual-time loop a beat would be a timer to jump to, and blocking is not what tests measure)
        if self._warn_after > 0 and not isinstance(self._loop, VirtualTimeLoop):
            self._expected = self._loop.time() + self.PERIOD
            self._handle = self._loop.call_at(self._expected, self._tick)
            self._beat, self._beat_cpu = time.monotonic(), time.thread_time()
            if self._running is not None:
                threading.Thread(target=self._watch, name="moonlet-lag-watchdog", daemon=True).start()

    def stop(self) -> None:
        self._stopped.set()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._signals is not None:
            os.close(self._signals)
            self._signals = None

    def _watch(self) -> None:
        assert self._running is not None
        signalled = -1.0  # the block's work when a stop signal was first seen waiting
        block = -1.0  # the beat the current block began after
        work = self._work
        while not self._stopped.wait(self.PERIOD):
            beat = self._beat
            blocked = time.monotonic() - beat
            if blocked <= self.PERIOD + self._warn_after / 2:
                signalled = block = -1.0
                continue
            if beat != block:  # a new block: count the loop thread's work from its last beat
                block = beat
                work.start(self._beat_cpu)
            worked = work.sample()
            self._block_work = worked
            if self._culprit is None:
                self._culprit = self._running() or "no task (host code)"
            if signalled < 0 and self._signal_waiting():
                signalled = worked
            if self._block_limit > 0 and worked >= self._block_limit:
                self._exit(
                    f"the event loop has been blocked for {blocked:.1f}s, {worked:.1f}s of it working "
                    "(--block-limit)"
                )
            if signalled >= 0 and worked - signalled >= self._drain_timeout:
                self._exit(
                    f"a signal waited {self._drain_timeout:.3g}s (the drain timeout) for the blocked loop"
                )

    def _signal_waiting(self) -> bool:
        """A signal (those with handlers: SIGTERM, SIGINT, SIGUSR1, SIGUSR2) waits for the loop to read it."""
        fd = self._signals
        if fd is None or self._stopped.is_set():
            return False
        try:
            queued = struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        except OSError:
            return False
        return bool(queued > 0)

    def _exit(self, why: str) -> None:
        log.critical(
            "%s in %s, stuck inside a C call the stall budget cannot stop (no Lua traceback there); exiting "
            "so that the worker is replaced",
            why,
            self._culprit or "no task (host code)",
        )
        if self._before_exit is not None:
            with contextlib.suppress(Exception):
                self._before_exit()
        logging.shutdown()
        os._exit(self.BLOCKED_EXIT)

    def _tick(self) -> None:
        now = self._loop.time()
        lag = now - self._expected
        self.worst = max(self.worst, lag)
        self._figures.loop_lag.observe(max(lag, 0.0))
        if lag >= self._warn_after:
            worked = max(time.thread_time() - self._beat_cpu, self._block_work)
            if worked >= lag / 2:
                self._figures.loop_blocked += 1
                log.warning(
                    "event loop blocked for %.2fs%s: every connection waited (a long C call or blocking work "
                    "on the loop thread; Lua code is stopped by the stall budget instead)",
                    lag,
                    f" in {self._culprit}" if self._culprit else "",
                )
            else:
                log.info(
                    "event loop late by %.2fs, %.2fs of it working: the process waited for a CPU (a busy "
                    "machine) or was stopped; nothing was stuck",
                    lag,
                    worked,
                )
        self._culprit = None
        self._block_work = 0.0
        self._beat, self._beat_cpu = time.monotonic(), time.thread_time()
        self._expected = now + self.PERIOD
        self._handle = self._loop.call_at(self._expected, self._tick)
