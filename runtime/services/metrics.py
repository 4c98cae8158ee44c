"""The runtime's own metrics, and how they reach ``moonlet.metrics``' store.

Services count what they see as it happens into the worker's one ``Figures``: integers and fixed-bucket
histograms, a few operations each, on the loop thread (a pool thread's timings travel with its job's
result). The HTTP server counts its requests by status in a Lua table per listener (``moonlet._httpd``:
no crossing into Python per request). Nothing is written anywhere until the app loads ``moonlet.metrics``
(``--metrics PORT`` does): from then on the worker writes all of it, with the gauges each service reports
(``statistics()``, what ``\\stats`` shows) and the process' own, into the store the module reads (a
``moonlet.shared`` dictionary) once a second and whenever its exposition is asked for. So any worker
answers for every worker, whose figures are at most a second old (nginx-lua-prometheus syncs its
per-worker counters the same way).

A series is written as the Lua module keeps its own: ``name{labels}`` → number, a histogram's buckets per
bound (not cumulative: the exposition adds them up), and ``#name`` → "kind\\nbounds\\nhelp".
"""

from __future__ import annotations

import asyncio
import os
import time
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, Protocol

from runtime.console import memory
from runtime.console.files import process_start
from runtime.kernel.core import Kernel
from runtime.kernel.ops import Op
from runtime.services import Quiet
from runtime.virtualtime import VirtualTimeLoop

STORE = b"moonlet.metrics"  # the shared dictionary moonlet.metrics reads (stdlib_lua/moonlet/metrics.lua)
PUBLISH_EVERY = 1.0  # seconds between two writes of this worker's figures, once metrics are on
LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)  # seconds
LAG = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)  # seconds late


class Histogram:
    """Observations counted per bucket (``bounds`` ascending; the last bucket is +Inf), with their sum."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # (the first bound >= value: le semantics)
        self.count += 1
        self.sum += value


class Counted(Protocol):
    """An HTTP listener's request workers (runtime/services/httpserver.py), as the metrics read them."""

    label: str  # the listener's address
    counts: Any  # moonlet._httpd's Lua table: {bytes = body bytes sent, [status] = requests answered}
    closed: bool  # the listener closed: its series go (an app that opens listeners by the thousand)


class Figures:
    """What the services count for the runtime's metrics (touched on the loop thread only)."""

    def __init__(self) -> None:
        self.db: defaultdict[str, Histogram] = defaultdict(lambda: Histogram(LATENCY))  # by db call
        self.pool_wait: defaultdict[str, Histogram] = defaultdict(lambda: Histogram(LATENCY))  # by pool
        self.pool_busy: Counter[str] = Counter()  # jobs refused: the pool's queue was full
        self.loop_lag = Histogram(LAG)  # how late each of the loop's heartbeats (every 0.1 s) came
        self.loop_blocked = 0  # heartbeats late by loop_lag_warn (0.5 s) or more, the loop thread working
        self.stalls = 0  # tasks stopped by the stall budget
        self.accepted = 0  # connections accepted (stream and HTTP)
        self.http_refused: Counter[int] = Counter()  # requests refused before a handler saw them, by status
        self.http: list[Counted] = []  # the HTTP listeners' request workers, with Lua's counts


# name: (kind, help) of each series the runtime writes; the gauges of statistics() are added by name
HELP = {
    "moonlet_http_requests_total": ("counter", "HTTP requests answered by a handler, by listener and status"),
    "moonlet_http_sent_bytes_total": ("counter", "Bytes of HTTP response bodies sent, by listener"),
    "moonlet_http_refused_total": (
        "counter",
        "HTTP requests refused before a handler saw them (malformed, too large, too slow), by status",
    ),
    "moonlet_connections_accepted_total": ("counter", "Connections accepted (stream and HTTP listeners)"),
    "moonlet_db_seconds": ("histogram", "Time a database call took, queueing included, by call"),
    "moonlet_pool_wait_seconds": ("histogram", "Time a pool job waited for a thread, by pool"),
    "moonlet_pool_busy_total": ("counter", "Pool jobs refused because the pool's queue was full, by pool"),
    "moonlet_loop_lag_seconds": ("histogram", "How late the event loop's heartbeats (every 0.1 s) came"),
    "moonlet_loop_blocked_total": ("counter", "Times the loop was blocked 0.5 s or more, working (logged)"),
    "moonlet_stalls_total": ("counter", "Tasks stopped by the stall budget (--stall-budget)"),
    "process_cpu_seconds_total": ("counter", "CPU time the process used (user and system)"),
    "process_resident_memory_bytes": ("gauge", "Resident memory of the process"),
    "process_open_fds": ("gauge", "Open file descriptors of the process"),
    "process_start_time_seconds": ("gauge", "When the process started, in seconds since the epoch"),
}
GAUGE_HELP = "moonlet's own figure, per worker, as the console's stats command shows it"


def bound(value: float) -> str:
    """A bucket bound as the exposition writes it (Lua writes its own buckets the same way)."""
    return "+Inf" if value == float("inf") else f"{value:.14g}"


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class MetricsService(Quiet):
    SERVES: ClassVar[frozenset[Op]] = frozenset({Op.METRICS})  # (its ops)

    def __init__(self, kernel: Kernel, loop: asyncio.AbstractEventLoop, figures: Figures) -> None:
        self.kernel = kernel
        self.loop = loop
        self.figures = figures
        self.worker = os.environ.get("MOONLET_WORKER") or "1"
        self.started = _process_start()
        self.app: tuple[Any, Any] | None = None  # moonlet.metrics' tables: what to add, what to set
        self.on = False  # moonlet.metrics is loaded: this worker writes its figures
        self.written: set[bytes] = set()  # this worker's runtime series in the store
        self._timer: asyncio.TimerHandle | None = None
        # set by wire_services once every service is made: the worker's figures (registry.runtime_statistics),
        # and the store
        self.statistics_of_all: Callable[[], dict[str, int | float]] = dict
        self.update: Callable[[bytes, dict[bytes, object], dict[bytes, int | float]], None] | None = None
        kernel.wire(self)  # (the ops in SERVES, each by its handler _<op>)

    def _metrics(self, _a: object, _b: object, _c: object) -> object:
        """METRICS: moonlet.metrics' updates since the last time, and this worker's figures, into the store
        now (an exposition reads it next), and every second from the first call on. Replies the two tables
        the module records its updates in: the host's, made as the state was bound. (Only plain values
        cross in calls, the door's rule: moonlet/_host.lua. A table handed over in a call, or made by the
        host during one, is tied to the calling coroutine; kept past it, lupa 2.8 crashed the worker.)"""
        if not self.on:
            self.on = True
            if not isinstance(self.loop, VirtualTimeLoop):  # (moonlet test: a beat would be a timer to jump)
                self._timer = self.loop.call_later(PUBLISH_EVERY, self._beat)
        self.publish()
        return self.app

    def bind(self, lua: Any) -> None:
        self.lua = lua
        self.app = (lua.table(), lua.table())

    def _beat(self) -> None:
        self._timer = self.loop.call_later(PUBLISH_EVERY, self._beat)
        self.publish()

    def publish(self) -> None:
        if self.update is None or self.app is None or not self.on:
            return
        add_t, put_t = self.app
        add = dict(add_t.items())
        put: dict[bytes, object] = dict(put_t.items())
        for table, keys in ((add_t, add), (put_t, put)):
            for key in keys:
                table[key] = None
        ours = dict(self.series())
        put |= ours
        put |= dict.fromkeys(self.written - ours.keys())  # (a figure gone since: its series too)
        self.written = set(ours)
        self.update(STORE, put, add)

    def series(self) -> Iterator[tuple[bytes, object]]:
        """Every series of this worker, and each metric's ``#name`` entry, as the store holds them."""
        worker = f'worker="{self.worker}"'
        f = self.figures
        named: dict[str, tuple[str, str, tuple[float, ...]]] = {}

        def one(name: str, labels: str, value: float) -> tuple[bytes, object]:
            kind, text = HELP.get(name, ("gauge", GAUGE_HELP))
            named.setdefault(name, (kind, text, ()))
            return f"{name}{{{labels}{worker}}}".encode(), value

        def histogram(name: str, labels: str, h: Histogram) -> Iterator[tuple[bytes, object]]:
            named[name] = (*HELP[name], h.bounds)
            for le, n in zip([*map(bound, h.bounds), "+Inf"], h.counts, strict=True):
                yield f'{name}_bucket{{{labels}{worker},le="{le}"}}'.encode(), n
            yield f"{name}_sum{{{labels}{worker}}}".encode(), h.sum
            yield f"{name}_count{{{labels}{worker}}}".encode(), h.count

        for figure, value in self.statistics_of_all().items():
            yield one(f"moonlet_{figure}", "", value)
        if any(served.closed for served in f.http):
            f.http = [served for served in f.http if not served.closed]
        for served in f.http:
            where, counts = f'listener="{escape(served.label)}",', served.counts
            for status, n in counts.items():
                if isinstance(status, int):
                    yield one("moonlet_http_requests_total", f'{where}status="{status}",', n)
            yield one("moonlet_http_sent_bytes_total", where, counts[b"bytes"] or 0)
        for status, n in f.http_refused.items():
            yield one("moonlet_http_refused_total", f'status="{status}",', n)
        yield one("moonlet_connections_accepted_total", "", f.accepted)
        for call, h in f.db.items():
            yield from histogram("moonlet_db_seconds", f'call="{call}",', h)
        for pool, h in f.pool_wait.items():
            yield from histogram("moonlet_pool_wait_seconds", f'pool="{escape(pool)}",', h)
        for pool, n in f.pool_busy.items():
            yield one("moonlet_pool_busy_total", f'pool="{escape(pool)}",', n)
        yield from histogram("moonlet_loop_lag_seconds", "", f.loop_lag)
        yield one("moonlet_loop_blocked_total", "", f.loop_blocked)
        yield one("moonlet_stalls_total", "", f.stalls)
        cpu = os.times()
        yield one("process_cpu_seconds_total", "", cpu.user + cpu.system)
        yield one("process_resident_memory_bytes", "", memory.resident_bytes())
        yield one("process_open_fds", "", len(os.listdir("/proc/self/fd")))
        yield one("process_start_time_seconds", "", self.started)
        for name, (kind, text, bounds) in named.items():
            yield f"#{name}".encode(), f"{kind}\n{','.join(map(bound, bounds))}\n{text}".encode()

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.publish()  # (the last second's counts)


def _process_start() -> float:
    """When this process started, in seconds since the epoch (Linux: /proc; else now)."""
    ticks = process_start(os.getpid())  # (clock ticks after boot)
    try:
        lines = Path("/proc/stat").read_text().splitlines()
        boot = next(float(line.split()[1]) for line in lines if line.startswith("btime"))
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()
    return time.time() if ticks is None else boot + int(ticks) / os.sysconf("SC_CLK_TCK")
