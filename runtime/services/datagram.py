"""UDP: sockets that serve datagrams (each handled in its own task) or that a task sends and receives on.

A served socket spawns its Lua entry for every datagram, like a listener for every connection; a client
socket queues what arrives (at most ``MAX_QUEUED`` datagrams: UDP may drop, and so do we, rather than grow)
until a task asks with ``UDP_RECV``. A handler that fails is logged at once, then at most once every
``ERROR_EVERY`` seconds per socket with how many failed meanwhile: a flood of datagrams that trip the same
bug is a line a second, not a line a datagram.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import os
from typing import Any, ClassVar, cast

from runtime import listeners
from runtime.kernel.core import SUSPEND, Kernel, one_line
from runtime.kernel.ops import Op
from runtime.kernel.task import Task
from runtime.services import Defaults
from runtime.services.background import Background
from runtime.services.outgoing import connect_error

log = logging.getLogger("moonlet")

MAX_QUEUED = 1024
ERROR_EVERY = 1.0  # seconds between two handler-error lines of one socket
_TIMEOUT = (None, b"timeout")
_CLOSED = (None, b"closed")


class Datagrams(asyncio.DatagramProtocol):
    KIND = "udp socket"  # (what a misuse error calls it)

    def __init__(self, svc: DatagramService, entry: object) -> None:
        self.svc = svc
        self.entry = entry  # Lua function spawned per datagram, or None for a client socket
        self.transport: asyncio.DatagramTransport | None = None
        self.label = "udp"
        self.queue: collections.deque[tuple[bytes, bytes, int]] = collections.deque(maxlen=MAX_QUEUED)
        self.reader: Task | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.handle = 0  # the number Lua holds for it (kernel/handles.py), retired when it closes
        self.failed = 0  # handler errors not logged yet (and the last one), while the rate holds them
        self.last_error = b""
        self.error_timer: asyncio.TimerHandle | None = None

    # -- protocol ----------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        host, port = str(addr[0]).encode(), int(addr[1])
        if self.entry is not None:
            kernel = self.svc.kernel
            kernel.spawn(self, self.entry, kernel.handles.number(self), data, host, port)
            return
        reader = self.reader
        if reader is not None:
            self._stop_waiting()
            self.svc.kernel.resume(reader, (data, host, port))
        else:
            self.queue.append((data, host, port))

    def error_received(self, exc: Exception) -> None:
        log.debug("udp %s: %s", self.label, exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.svc.kernel.handles.retire(self)
        reader = self.reader
        if reader is not None:
            self._stop_waiting()
            self.svc.kernel.resume_soon(reader, _CLOSED)

    # -- owner of the per-datagram tasks -------------------------------------------------------------
    def describe(self) -> str:
        return f"udp handler on {self.label}"

    def task_exited(self, task: Task, ok: bool, error: bytes | None) -> None:
        if ok:
            return
        if self.error_timer is None:
            log.error("handler error on %s: %s", self.describe(), one_line(error))
            self.error_timer = self.svc.loop.call_later(ERROR_EVERY, self._say_errors)
        else:
            self.failed, self.last_error = self.failed + 1, error or b""

    def _say_errors(self) -> None:
        if not self.failed:
            self.error_timer = None
            return
        log.error(
            "handler error on %s (%d in the last %g s; the last): %s",
            self.describe(),
            self.failed,
            ERROR_EVERY,
            one_line(self.last_error),
        )
        self.failed = 0
        self.error_timer = self.svc.loop.call_later(ERROR_EVERY, self._say_errors)

    def forget(self, task: Task) -> None:
        if self.reader is task:
            self._stop_waiting()

    def _stop_waiting(self) -> None:
        self.reader = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expire(self) -> None:
        reader = self.reader
        if reader is not None:
            self.reader, self.timer = None, None
            self.svc.kernel.resume(reader, _TIMEOUT)


class DatagramService(Defaults):
    SERVES: ClassVar[frozenset[Op]] = frozenset(
        {Op.UDP_CLOSE, Op.UDP_OPEN, Op.UDP_RECV, Op.UDP_SEND}
    )  # (its ops)

    def __init__(self, kernel: Kernel, loop: asyncio.AbstractEventLoop) -> None:
        self.kernel = kernel
        self.loop = loop
        self.sockets: set[Datagrams] = set()
        self.background = Background(loop)
        kernel.handles.set_gone(Datagrams, Datagrams(self, None))  # (closed: what a retired number names)
        kernel.wire(self)  # (the ops in SERVES, each by its handler _<op>)

    def _udp_open(self, task: Task, host: object, port: object, entry: object) -> object:
        self.background.run(self._bind(task, host, port, entry))
        return SUSPEND

    async def _bind(self, task: Task, host: object, port: object, entry: object) -> None:
        name = host.decode() if isinstance(host, bytes) else "127.0.0.1"
        local = (name, port if isinstance(port, int) else 0)
        try:
            # workers of one supervisor serving the same port share it; the kernel spreads the datagrams
            shared = entry is not None and local[1] != 0 and bool(os.environ.get(listeners.ENV))
            _, sock = await self.loop.create_datagram_endpoint(
                lambda: Datagrams(self, entry), local_addr=local, reuse_port=shared or None
            )
        except Exception as e:
            self.kernel.resume(task, (None, connect_error(e)))
            return
        assert sock.transport is not None
        bound = sock.transport.get_extra_info("sockname")
        sock.label = f"{bound[0]}:{bound[1]}"
        self.sockets.add(sock)
        if entry is not None:
            log.info("serving udp on %s", sock.label)
        self.kernel.resume(task, (self.kernel.handles.number(sock), int(bound[1])))

    def _udp_recv(self, task: Task, sock: Datagrams, timeout: object, _c: object) -> object:
        if sock.queue:
            return sock.queue.popleft()
        if sock.transport is None:
            return _CLOSED
        if sock.reader is not None:
            return (None, b"busy")
        sock.reader = task
        task.waiting = sock
        delay = float(timeout) if isinstance(timeout, int | float) else math.inf
        if delay != math.inf:
            sock.timer = self.loop.call_later(max(delay, 0.0), sock._expire)
        return SUSPEND

    def _udp_send(self, sock: Datagrams, data: object, host: object, port: object = None) -> object:
        if sock.transport is None:
            return _CLOSED
        if not isinstance(data, bytes) or not isinstance(host, bytes) or not isinstance(port, int):
            raise TypeError("sendto(data, host, port)")
        sock.transport.sendto(data, (host.decode(), port))
        return True

    def _udp_close(self, sock: Datagrams, _b: object, _c: object) -> object:
        if sock.transport is not None:
            sock.transport.close()
        self.sockets.discard(sock)
        return True

    def close_all(self) -> None:
        for sock in list(self.sockets):
            self._udp_close(sock, None, None)

    # -- the service's lifecycle (runtime/services/__init__.py) -------------------------------------
    def keeps_alive(self) -> bool:
        return any(sock.entry is not None for sock in self.sockets)  # (a serving socket, not a client's)

    def drain(self) -> None:
        for sock in list(self.sockets):
            if sock.entry is not None:
                self._udp_close(sock, None, None)

    async def close(self) -> None:
        self.close_all()

    def console_rows(self, topic: str) -> list[str]:
        return []

    def statistics(self) -> dict[str, int | float]:
        return {"udp_sockets": len(self.sockets)}

    def in_flight(self) -> bool:
        return bool(self.background.jobs)

    def waits_on_io(self) -> bool:
        return any(s.reader is not None for s in self.sockets)
