"""Every service of a worker, made and wired in one place (``wire_services``), and the set of them
(``Services``) that the host and the console are handed.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from runtime.config import Limits, PoolConfig
from runtime.kernel.core import Kernel
from runtime.services import Service
from runtime.services.capacity import ConnectionCapacity
from runtime.services.clock import ClockService, Deadlines, TimerService
from runtime.services.codec import CodecService
from runtime.services.datagram import DatagramService
from runtime.services.db import DatabaseService, default_database
from runtime.services.httpserver import HttpService
from runtime.services.metrics import Figures, MetricsService
from runtime.services.outgoing import OutgoingService
from runtime.services.pool import PoolService
from runtime.services.shared import SharedService
from runtime.services.stream import StreamService
from runtime.services.system import SystemService
from runtime.services.tasks import TaskService
from runtime.virtualtime import wall_clock


@dataclasses.dataclass(frozen=True)
class Services:
    stream: StreamService
    tasks: TaskService
    timers: TimerService
    pools: PoolService
    db: DatabaseService
    udp: DatagramService
    http: HttpService
    shared: SharedService
    outgoing: OutgoingService
    clock: ClockService
    system: SystemService
    codec: CodecService
    metrics: MetricsService

    def all(self) -> list[Service]:
        """Every service, in the order they are closed (connections first, the database last)."""
        return [
            self.stream, self.outgoing, self.http, self.tasks, self.timers, self.udp, self.pools,
            self.metrics, self.shared, self.db, self.clock, self.system, self.codec,
        ]  # fmt: skip

    def in_flight(self) -> bool:
        """Work a task waits for runs outside the loop (see the contract: runtime/services/__init__.py)."""
        return any(service.in_flight() for service in self.all())

    def waits_on_io(self) -> bool:
        """A task waits for a peer in another process (on a connection), or for a datagram."""
        return any(service.waits_on_io() for service in self.all())


def runtime_statistics(kernel: Kernel, services: Services) -> dict[str, int | float]:
    """The worker's figures by name, as the console's ``\\stats`` shows them and the metrics' gauges are:
    the kernel's, every service's own (the contract's ``statistics()``), the Lua heap."""
    stats: dict[str, int | float] = {"tasks": kernel.live, "stale_wakeups": kernel.stale_wakeups}
    stats |= kernel.handles.statistics()  # (host objects Lua holds numbers for)
    for service in services.all():
        stats |= service.statistics()
    if services.system.lua is not None:
        stats["lua_memory_bytes"] = services.system.lua.get_memory_used()
    return stats


def wire_services(
    kernel: Kernel,
    loop: asyncio.AbstractEventLoop,
    limits: Limits,
    app_path: str | None = None,
    pools: dict[str, PoolConfig] | None = None,
) -> Services:
    """Create every service, each registering the ops it serves; every op ends up with a handler."""
    app = Path(app_path) if app_path else Path("app.lua")
    deadlines = Deadlines(loop)
    figures = Figures()  # (what the services count for the runtime's metrics)
    stream = StreamService(kernel, loop, limits, deadlines, figures)
    services = Services(
        stream=stream,
        tasks=TaskService(kernel, loop, limits, figures),
        timers=TimerService(kernel, loop, limits.max_timers),
        pools=PoolService(kernel, loop, limits, app_path, pools, figures=figures),
        db=DatabaseService(kernel, loop, limits, default_database(limits, app), figures),
        udp=DatagramService(kernel, loop),
        http=HttpService(kernel, stream, figures),
        shared=SharedService(kernel, wall_clock(loop)),
        outgoing=OutgoingService(kernel, loop, limits, stream),
        clock=ClockService(kernel, loop),
        system=SystemService(kernel),
        codec=CodecService(kernel),
        metrics=MetricsService(kernel, loop, figures),
    )

    services.metrics.statistics_of_all = lambda: runtime_statistics(kernel, services)  # (its gauges)
    services.metrics.update = services.shared.update
    capacity = ConnectionCapacity(loop, limits.max_connections)  # (HTTP connections are stream connections)
    capacity.count(stream.connections)
    capacity.count(stream.tls.pending)  # (TLS handshakes in flight hold a descriptor each too)
    stream.capacity = capacity
    missing = kernel.missing_handlers()
    assert not missing, f"ops without a handler: {missing}"
    return services


__all__ = ["Services", "runtime_statistics", "wire_services"]
