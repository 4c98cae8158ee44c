"""How long a thread really worked: its CPU time, and time asleep inside a call; never time it waited for a
core or was stopped.

A budget timed with the wall clock takes a busy machine (the thread waits for a core), a paused process
(Ctrl-Z then ``fg``, a debugger, a paused container) or an overloaded host for a stuck program, and a server
that kills its busy workers turns slowness into an outage. Linux gives every thread a CPU clock that any
thread can read (``pthread_getcpuclockid``) and says what state the thread is in
(``/proc/self/task/TID/stat``: ``R`` running or waiting for a core, ``S``/``D`` asleep inside a call, ``T``
stopped). So:

* Lua that runs too long is judged by CPU time alone (:meth:`ThreadClock.cpu`): Lua never sleeps.
* A loop blocked inside a C call is judged by :class:`Work`, sampled by a watchdog: the thread's CPU time,
  plus the wall time of each sample in which it was seen asleep inside the call (a blocking read on the loop
  thread holds every connection as surely as a spin does). Time it was runnable without a core, or stopped,
  does not count, and one sample never counts more than twice its period (the watchdog itself may have been
  stopped or starved).
"""

from __future__ import annotations

import threading
import time
from typing import Final

ASLEEP_IN_A_CALL: Final = frozenset("SD")  # (the thread states of /proc: S sleeping, D disk sleep)


class ThreadClock:
    """The CPU clock and the scheduler state of one thread, readable from any thread. Make it on the
    thread it is about (``ThreadClock.here()``)."""

    __slots__ = ("_clock", "_stat")

    def __init__(self, ident: int, native_id: int) -> None:
        self._clock = time.pthread_getcpuclockid(ident)
        self._stat = f"/proc/self/task/{native_id}/stat"

    @classmethod
    def here(cls) -> ThreadClock:
        return cls(threading.get_ident(), threading.get_native_id())

    def cpu(self) -> float:
        """Seconds of CPU the thread has used."""
        return time.clock_gettime(self._clock)

    def state(self) -> str:
        """``R`` (running, or ready and waiting for a core), ``S``/``D`` (asleep in a call), ``T`` (stopped),
        ...; ``?`` if it cannot be read."""
        try:
            with open(self._stat, "rb") as f:
                stat = f.read()
        except OSError:
            return "?"
        end = stat.rfind(b")")  # (the command name may hold spaces and parentheses)
        return chr(stat[end + 2]) if 0 <= end < len(stat) - 2 else "?"


class Work:
    """The work a thread did over a stretch of wall time, as seen by periodic samples (see the module)."""

    __slots__ = ("_clock", "_cpu", "_period", "_wall", "cpu_done", "done")

    def __init__(self, clock: ThreadClock, period: float) -> None:
        self._clock = clock
        self._period = period
        self._cpu = clock.cpu()
        self._wall = time.monotonic()
        self.done = 0.0  # CPU time plus time asleep inside a call, since start()
        self.cpu_done = 0.0  # the CPU time alone

    def start(self, cpu_since: float | None = None) -> None:
        """Count from now; with ``cpu_since`` (the thread's CPU time at an earlier moment), the CPU it used
        since then counts too."""
        self._cpu = self._clock.cpu() if cpu_since is None else cpu_since
        self._wall = time.monotonic()
        self.done = self.cpu_done = 0.0

    def sample(self) -> float:
        """Add what the thread did since the last sample; returns ``done``."""
        cpu, wall = self._clock.cpu(), time.monotonic()
        used = max(cpu - self._cpu, 0.0)
        elapsed = min(wall - self._wall, 2 * self._period)
        self._cpu, self._wall = cpu, wall
        self.cpu_done += used
        self.done += max(elapsed, used) if self._clock.state() in ASLEEP_IN_A_CALL else used
        return self.done
