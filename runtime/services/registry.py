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

    def all(self) -> list[Service]:
        """Every service, in the order they are closed (connections first, the database last)."""
        return [
            self.stream, self.outgoing, self.http, self.tasks, self.timers, self.udp, self.pools, self.shared,
            self.db, self.clock, self.system, self.codec,
        ]  # fmt: skip

    def in_flight(self) -> bool:
        """Work a task waits for runs outside the loop (see the contract: runtime/services/__init__.py)."""
        return any(service.in_flight() for service in self.all())

    def waits_on_io(self) -> bool:
        """A task waits for a peer in another process (on a connection), or for a datagram."""
        return any(service.waits_on_io() for service in self.all())


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
    stream = StreamService(kernel, loop, limits, deadlines)
    services = Services(
        stream=stream,
        tasks=TaskService(kernel, loop, limits),
        timers=TimerService(kernel, loop, limits.max_timers),
        pools=PoolService(kernel, loop, limits, app_path, pools),
        db=DatabaseService(kernel, loop, limits, default_database(limits, app)),
        udp=DatagramService(kernel, loop),
        http=HttpService(kernel, stream),
        shared=SharedService(kernel, wall_clock(loop)),
        outgoing=OutgoingService(kernel, loop, limits, stream),
        clock=ClockService(kernel, loop),
        system=SystemService(kernel),
        codec=CodecService(kernel),
    )

    def figures() -> dict[str, int | float]:
        stats: dict[str, int | float] = {}
        for service in services.all():
            stats |= service.statistics()
        return stats

    services.system.figures = figures  # (RUNTIME_STATS: what every service counts)
    capacity = ConnectionCapacity(loop, limits.max_connections)  # (HTTP connections are stream connections)
    capacity.count(stream.connections)
    capacity.count(stream.tls.pending)  # (TLS handshakes in flight hold a descriptor each too)
    stream.capacity = capacity
    missing = kernel.missing_handlers()
    assert not missing, f"ops without a handler: {missing}"
    return services


__all__ = ["Services", "wire_services"]
