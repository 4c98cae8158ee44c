"""Byte streams: listening sockets, accepted connections, and the read/write requests on them.

Hot path (see "How it works" in the README): a connection is one :class:`Connection` protocol object, one Lua
coroutine and its buffers; there is no asyncio Task per connection. Lua keeps the read buffer and splits
lines itself, so a coroutine crosses into Python only when its buffer runs dry; it then yields ``RECV``
carrying whatever it wrote since the last crossing, and ``data_received`` resumes it directly with the next
chunk. Bytes that arrive while nobody is reading wait here (reading pauses above ``max_pending_input``).

Backpressure: a writer is suspended while more than ``write_high_water`` bytes are unsent, for at most
``send_timeout``; a connection whose unsent bytes pass ``max_output`` anyway (writes from tasks that never
wait) is closed. A reader waits at most ``read_timeout``.

Fairness is counted in bytes of input, not in crossings: a handler gets at most ``input_per_turn`` bytes
per loop turn. Lines already in its Lua buffer are answered without crossing into the host, so a peer that
keeps the input full would otherwise keep one handler running, request after request, while every other
connection waits. Past its share a reader that finds more input waiting is resumed on the next loop turn,
after the loop has polled the other connections.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import struct
import time
from collections.abc import Callable
from typing import Any, ClassVar, Protocol, cast

from runtime.config import Limits
from runtime.kernel.core import SUSPEND, BadRequestError, Kernel, bad_argument, one_line
from runtime.kernel.ops import Op
from runtime.kernel.task import Extra, Task
from runtime.listeners import SINGLE_PROCESS_MARK, remove_stale_socket, shared_listener
from runtime.lua.state import lua_type_of, resume_thread
from runtime.lua.values import to_plain
from runtime.services import Defaults
from runtime.services.background import Background
from runtime.services.capacity import ConnectionCapacity
from runtime.services.clock import TICK, Deadlines
from runtime.services.metrics import Figures
from runtime.tls import Handshakes, ServerTLS, TLSConfigError, server_tls, sni_of

log = logging.getLogger("moonlet")

# The documented error strings a read or write may return to Lua as `nil, err`.
TIMEOUT = b"timeout"
CLOSED = b"closed"
TOO_LARGE = b"too large"
LINE_TOO_LONG = b"line too long"  # produced by net.lua
BUSY = b"busy"
ERRORS = frozenset({TIMEOUT, CLOSED, TOO_LARGE, LINE_TOO_LONG, BUSY})

_NEVER = math.inf  # a timeout that never comes
_TIMEOUT_REPLY = (None, TIMEOUT)
_CLOSED_REPLY = (None, CLOSED)
_TOO_LARGE_REPLY = (None, TOO_LARGE)
_BUSY_REPLY = (None, BUSY)

_RECV = int(Op.RECV)

# What a suspended writer is waiting for.
_AFTER_DRAIN_READ = 1  # RECV: the output went out above the high-water mark; read once it drains
_AFTER_DRAIN_TRUE = 2  # SEND: reply true once below the high-water mark
_AFTER_FLUSH_TRUE = 3  # SENDALL: reply true once every byte is taken


class Listener:
    """A listening socket; Lua holds its number (kernel/handles.py), retired when it closes."""

    __slots__ = ("adopted", "entry", "handle", "label", "server", "tls", "workers")

    def __init__(
        self, entry: object, label: str, workers: ServedBy | None = None, tls: ServerTLS | None = None
    ) -> None:
        self.entry = entry  # Lua function run as the handler task of each accepted connection
        self.label = label
        self.tls = tls  # (a TLS listener) each connection's handshake comes first: Connection.handshake
        self.server: asyncio.Server | None = None
        self.workers = workers  # (HTTP) connections served by request workers instead of one task each
        # (under a supervisor) slot -> a server on the socket of a dead worker's slot, accepted from meanwhile
        self.adopted: dict[int, asyncio.Server] = {}
        self.handle = 0


CLOSE_GRACE = 1.0  # seconds the connections get to close when the process ends, before they are aborted


class ServedBy(Protocol):
    """The one hook by which a listener's connections are served other than by a task each: the HTTP
    server's request workers (``RequestWorkers``, runtime/services/httpserver.py). Such a connection is
    *parked* while no task holds it: kept without a coroutine until bytes arrive (``unpark``, or
    ``serve_request`` when they can be answered in this frame) or its keep-alive timeout passes."""

    entry: object  # (for the listener: what runs)
    send_timeout: float  # seconds a response write may wait for a peer that takes no data
    label: str  # the listener's address, once it listens (its metrics' label)

    @property
    def access(self) -> object:
        """An access log, or None: then a connection's peer is noted as it is accepted (lines name it)."""
        ...

    def park(self, conn: Connection) -> None: ...

    def unpark(self, conn: Connection) -> None: ...

    def serve_request(self, conn: Connection, data: bytes, size: int) -> None: ...

    def close(self) -> None: ...


class Connection(asyncio.Protocol):
    __slots__ = (
        "closing",
        "deadline_key",
        "eof",
        "handle",
        "handled",
        "heard",
        "label",
        "listener",
        "owner",
        "parked",
        "peer_host",
        "pending",
        "pending_size",
        "pooled",
        "read_deadline",
        "read_paused",
        "read_timeout",
        "reader",
        "send_timeout",
        "since",
        "svc",
        "task",
        "transport",
        "turn_bytes",
        "write_deadline",
        "write_paused",
        "writer",
        "writer_then",
    )

    def __init__(self, svc: StreamService, listener: Listener | None, label: str = "") -> None:
        self.svc = svc
        self.listener = listener  # None for an outgoing connection (net.connect)
        self.label = label
        self.transport: asyncio.Transport | None = None  # None once the connection is lost
        self.closing = False  # no more output may be sent
        self.task: Task | None = None
        self.reader: Task | None = None
        self.writer: Task | None = None
        self.writer_then = 0
        self.pending: list[bytes] | None = None
        self.pending_size = 0
        self.eof = False
        self.read_paused = False
        self.write_paused = False
        self.read_timeout = svc.limits.read_timeout
        self.send_timeout = svc.limits.send_timeout
        self.read_deadline = 0.0
        self.write_deadline = 0.0
        self.deadline_key = 0
        self.since = svc.loop.time()
        self.heard = False  # bytes have arrived (a draining server answers a connection's first request)
        self.turn_bytes = 0  # input handed to the handler since it last waited (see "Fairness")
        self.parked = False  # (request workers) no worker holds it: the next bytes go to one
        self.owner: Task | None = None  # (outgoing) the task it closes with; None while pooled
        self.pooled = False  # (outgoing) idle in a keep-alive pool (see KEEP)
        self.handled = 0  # (request workers) requests answered
        self.handle = 0  # the number Lua holds for it (kernel/handles.py): retired once it is lost and let go
        self.peer_host: bytes | None = None  # (asked once: an access log line a request names it)

    # -- protocol callbacks ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        svc = self.svc
        hwm = svc.limits.write_high_water
        transport.set_write_buffer_limits(high=hwm, low=hwm // 4)
        if self.listener is not None and svc.capacity is not None and svc.capacity.full():
            transport.abort()  # accept-and-close: the descriptors left are for the console, the database, ...
            return
        svc.connections[self] = None
        listener = self.listener
        if listener is not None:
            svc.figures.accepted += 1
            workers = listener.workers
            if workers is None:
                kernel = svc.kernel
                task = kernel.spawn(self, listener.entry, kernel.handles.number(self), scope=True, bare=True)
                if task.co is not None:  # (a handler that ended in its first run has let go already: a
                    self.task = task  # connection naming a task is never retired once it is lost)
            else:  # a worker takes it when its first bytes arrive
                self.send_timeout = workers.send_timeout
                if workers.access is not None:  # (asked now: a connection its handler closed has no socket)
                    self.host_of_peer()
                workers.park(self)

    def data_received(self, data: bytes) -> None:
        size = len(data)
        self.heard = True
        reader = self.reader
        if reader is None:
            if self.parked:  # (its listener's ServedBy hook: request workers)
                workers: ServedBy = self.listener.workers  # type: ignore[union-attr,assignment]
                if self.pending is None and size <= self.svc.input_per_turn:
                    workers.serve_request(self, data, size)
                    return
                self.keep(data)
                workers.unpark(self)
                return
            self.keep(data)
            return
        self.reader = None
        svc = self.svc
        if size > svc.input_per_turn:  # more than one turn's share: hand it over in shares
            self.keep(data)
            svc.resume(reader, self.take_pending())
            return
        self.turn_bytes = size
        co = reader.co
        if co is None:  # (killed: forget() should have let go of it)
            self.keep(data)
            return
        # The echo cycle, in this one frame (see the kernel's rules): resume the reader with the bytes and,
        # if it asks this connection for more, send what it wrote and wait again.
        kernel = svc.kernel
        reader.runs += 1  # (before `current`: see the kernel's resume)
        kernel.current = reader
        try:
            req = resume_thread(co, data)
            if (
                type(req) is not tuple
                or len(req) != 4
                or req[0] != _RECV
                or req[1] != self.handle
                or self.closing
                or self.write_paused
                or self.eof
                or self.pending is not None
                or svc.draining
            ):
                kernel.serve(reader, req)
                return
            out = req[2]
            if out:
                self.transport.write(out)  # type: ignore[union-attr]  # (open: `closing` is false)
                if self.write_paused:  # above the high-water mark now: read once the peer drains
                    value = self.wait_writer(reader, _AFTER_DRAIN_READ)
                    if value is not SUSPEND:
                        reader.runs += 1
                        kernel.serve(reader, resume_thread(co, value))
                    return
            self.turn_bytes = 0
            self.reader = reader
            reader.waiting = self
            if self.read_timeout != _NEVER:
                self._remind_read()
        except Exception as e:
            kernel.failed(reader, e)
        finally:
            kernel.current = None

    def keep(self, data: bytes) -> None:
        if self.pending is None:
            self.pending = [data]
        else:
            self.pending.append(data)
        self.pending_size += len(data)
        if self.pending_size >= self.svc.limits.max_pending_input and not self.read_paused:
            self.read_paused = True
            assert self.transport is not None
            self.transport.pause_reading()

    def take_pending(self) -> bytes:
        """Up to one turn's share of the input waiting here (the caller knows some is)."""
        pending = self.pending
        assert pending is not None
        share = self.svc.input_per_turn
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        if len(data) <= share:
            self.pending = None
            self.pending_size = 0
        else:
            rest = data[share:]
            data = data[:share]
            self.pending = [rest]
            self.pending_size = len(rest)
        if self.read_paused and self.pending_size < self.svc.limits.max_pending_input:
            self.read_paused = False
            if self.transport is not None:
                self.transport.resume_reading()
        self.turn_bytes += len(data)
        return data

    def eof_received(self) -> bool:
        self.eof = True
        if self.pooled:  # an idle pooled connection the peer closed: no CLOSE-WAIT until its next use
            self.close()
            return True
        if self.parked:
            self.close()  # nothing more will come, and everything that came is answered
            return True
        self._wake_reader(_CLOSED_REPLY)
        # keep the write side open: the handler may still answer (half-close); TLS has no half-close (its
        # close_notify ends both ways), so there the transport closes as it must
        transport = self.transport
        return transport is None or transport.get_extra_info("ssl_object") is None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.closing = True
        self.eof = True
        svc = self.svc
        svc.connections.pop(self, None)
        task = self.task
        if task is None:  # (else when its task lets go of it)
            svc.kernel.handles.retire(self)
        elif task.co is not None:  # a handler that outlives its connection: the kernel lists it now
            svc.kernel.tasks[task] = None
        if self.deadline_key:
            svc.deadlines.remove(self)
        self.disown()
        self._wake_reader(_CLOSED_REPLY)
        self._wake_writer(_CLOSED_REPLY)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        writer = self.writer
        if writer is None:
            if self.parked and self.pending is not None:
                self.listener.workers.unpark(self)  # type: ignore[union-attr]
            return
        self.writer = None
        then = self.writer_then
        if then == _AFTER_FLUSH_TRUE:
            self._restore_write_limits()
            self.svc.kernel.resume(writer, True)
        elif then == _AFTER_DRAIN_TRUE:
            self.svc.kernel.resume(writer, True)
        else:
            value = self.wait_readable(writer)
            if value is not SUSPEND:
                self.svc.kernel.resume(writer, value)

    # -- owner of the handler task ---------------------------------------------------------------
    def describe(self) -> str:
        if self.listener is None:
            return f"connection to {self.label}"
        if self.listener.workers is not None:
            return f"http {self.peer_label()} on {self.listener.label}"
        return f"connection {self.peer_label()} on {self.listener.label}"

    def task_exited(self, task: Task, ok: bool, error: bytes | None) -> None:
        if not ok:
            self.svc.log_task_error(self, error)
        self.close()
        self.let_go()

    def let_go(self) -> None:
        """No task serves this connection any more: once it is lost too, Lua's number for it names the
        closed stand-in (kernel/handles.py)."""
        self.task = None
        if self.transport is None:
            self.svc.kernel.handles.retire(self)

    # -- requests --------------------------------------------------------------------------------
    def send(self, out: bytes | None) -> bool:
        """Hand ``out`` to the transport; False if the connection is closed (or was closed by the cap)."""
        transport = self.transport
        if self.closing or transport is None or transport.is_closing():
            return False
        if out:
            if self.write_paused:  # above the high-water mark: is the peer reading at all?
                unsent = transport.get_write_buffer_size()
                if unsent > self.svc.limits.max_output:
                    log.warning(
                        "closing %s: %d bytes unsent and the peer is not reading (max_output %d)",
                        self.describe(),
                        unsent,
                        self.svc.limits.max_output,
                    )
                    self.abort()
                    return False
            transport.write(out)
        return True

    def wait_readable(self, task: Task) -> object:
        """Reply with buffered bytes, or an error, or suspend ``task`` until bytes arrive."""
        if self.pending is not None:
            if self.turn_bytes < self.svc.input_per_turn:
                return self.take_pending()
            # this turn's share is used up: the next one is handed over on the next turn, after the loop
            # has polled the other connections (as a kernel reply that waited its turn: the task does not
            # hold the connection meanwhile)
            self.turn_bytes = 0
            self.svc.kernel.resume_soon(task, self.take_pending())
            return SUSPEND
        self.turn_bytes = 0
        svc = self.svc
        listener = self.listener
        if self.eof or (svc.draining and listener is not None and listener.workers is None and self.heard):
            # a draining server still reads the replies of the servers it called, and the first request of
            # a connection it accepted just before draining
            return _CLOSED_REPLY
        if self.reader is not None:
            return _BUSY_REPLY
        self.reader = task
        task.waiting = self
        if self.read_timeout != _NEVER:
            self._remind_read()
        return SUSPEND

    def _remind_read(self) -> None:
        svc = self.svc
        self.read_deadline = deadline = svc.time() + self.read_timeout
        key = self.deadline_key
        if key == 0 or deadline < key * TICK:  # else the wheel already holds an earlier reminder
            svc.deadlines.add(self, deadline)

    def wait_writer(self, task: Task, then: int) -> object:
        if self.writer is not None:
            return _BUSY_REPLY
        self.writer = task
        task.waiting = self
        self.writer_then = then
        timeout = self.send_timeout
        if timeout != math.inf:
            self.write_deadline = deadline = self.svc.time() + timeout
            self.svc.deadlines.add(self, deadline)
        return SUSPEND

    def forget(self, task: Task) -> None:
        """``task`` was killed while waiting here: the connection may be read and written by others."""
        if self.reader is task:
            self.reader = None
        if self.writer is task:
            self.writer = None
            self._restore_write_limits()

    def on_deadline(self, now: float) -> None:
        if self.pooled:
            if self.read_deadline <= now:
                self.close()  # idle in its pool past its idle timeout
            else:
                self.svc.deadlines.add(self, self.read_deadline)
            return
        if self.parked:
            if self.read_deadline <= now:
                self.close()  # idle past the keep-alive timeout
            else:
                self.svc.deadlines.add(self, self.read_deadline)
            return
        if self.reader is not None:
            if self.read_deadline <= now:
                self._wake_reader(_TIMEOUT_REPLY, soon=False)
            else:
                self.svc.deadlines.add(self, self.read_deadline)
        if self.writer is not None:
            if self.write_deadline <= now:
                log.info("closing %s: the peer took no data for %.3gs", self.describe(), self.send_timeout)
                self._wake_writer(_TIMEOUT_REPLY)  # the writer hears "timeout" ...
                self.abort()  # ... and the connection closes: the unsent bytes can never arrive in order now
            else:
                self.svc.deadlines.add(self, self.write_deadline)

    # -- ownership (outgoing connections) -------------------------------------------------------------
    def own(self, task: Task) -> None:
        """``task`` owns this connection now: it closes when that task ends."""
        self.disown()
        self.owner = task
        self.pooled = False
        extra = task.extra
        if extra is None:
            task.extra = extra = Extra()
        if extra.owned is None:
            extra.owned = {}
        extra.owned[self] = None

    def disown(self) -> None:
        owner = self.owner
        if owner is not None:
            self.owner = None
            extra = owner.extra
            if extra is not None and extra.owned is not None:
                extra.owned.pop(self, None)

    def close(self) -> None:
        self.closing = True
        self.parked = False
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()  # sends what is buffered first
        self._wake_reader(_CLOSED_REPLY)
        self._wake_writer(_CLOSED_REPLY)

    def abort(self) -> None:
        self.closing = True
        self.parked = False
        transport = self.transport
        if transport is not None:
            transport.abort()
        self._wake_reader(_CLOSED_REPLY)
        self._wake_writer(_CLOSED_REPLY)

    def peer_label(self) -> str:
        peer = self.peer()
        if peer is None:
            return "(closed)"
        host, port = peer
        return host.decode() if port is None else f"{host.decode()}:{port}"

    def host_of_peer(self) -> bytes:
        """The peer's address without its port, asked of the socket once (b"-" once closed)."""
        host = self.peer_host
        if host is None:
            peer = self.peer()
            if peer is None:
                return b"-"
            host = self.peer_host = peer[0]
        return host

    def peer(self) -> tuple[bytes, int | None] | None:
        transport = self.transport
        if transport is None:
            return None
        name: Any = transport.get_extra_info("peername")
        if isinstance(name, tuple):
            return str(name[0]).encode(), int(name[1])
        sockname: Any = transport.get_extra_info("sockname")
        return (str(sockname or "").encode(), None)

    # -- internals -------------------------------------------------------------------------------
    def _wake_reader(self, value: object, soon: bool = True) -> None:
        reader = self.reader
        if reader is not None:
            self.reader = None
            if soon:
                self.svc.kernel.resume_soon(reader, value)
            else:
                self.svc.kernel.resume(reader, value)

    def _wake_writer(self, value: object) -> None:
        writer = self.writer
        if writer is not None:
            self.writer = None
            self.svc.kernel.resume_soon(writer, value)

    def _restore_write_limits(self) -> None:
        if self.transport is not None:
            hwm = self.svc.limits.write_high_water
            self.transport.set_write_buffer_limits(high=hwm, low=hwm // 4)


class StreamService(Defaults):
    """Owns listeners, connections and the stream requests."""

    SERVES: ClassVar[frozenset[Op]] = frozenset(
        {
            Op.BUFFERED,
            Op.OFFER,
            Op.CLOSE,
            Op.KEEP,
            Op.LISTEN,
            Op.OPEN,
            Op.OWN,
            Op.PEER,
            Op.RECV,
            Op.REUSABLE,
            Op.SEND,
            Op.SENDALL,
            Op.SETTIMEOUTS,
            Op.SHUTDOWN,
            Op.SINGLE_PROCESS,
            Op.UNLISTEN,
            Op.WRITE,
        }
    )  # (its ops)

    def __init__(
        self,
        kernel: Kernel,
        loop: asyncio.AbstractEventLoop,
        limits: Limits,
        deadlines: Deadlines,
        figures: Figures | None = None,
    ) -> None:
        self.kernel = kernel
        self.resume = kernel.resume
        self.figures = figures or Figures()  # (the runtime's metrics: connections accepted)
        self.loop = loop
        self.time = loop.time
        self.limits = limits
        self.deadlines = deadlines
        # (a dict, not a set: at 10,000 entries a set takes ~100 bytes each, a dict ~40)
        self.connections: dict[Connection, None] = {}
        self.listeners: set[Listener] = set()
        self.by_address: dict[tuple[str, int], Listener] = {}  # TCP listeners from the supervisor
        self.draining = False
        self.input_per_turn = limits.input_per_turn
        self.background = Background(loop)
        self.capacity: ConnectionCapacity | None = None  # --max-connections, shared with HTTP (wire_services)
        self.tls = Handshakes(loop)  # (TLS listeners) the handshakes in flight
        # what the number of a connection or listener that is gone names (kernel/handles.py)
        self.gone = Connection(self, None, "a connection that is gone")
        self.gone.closing = self.gone.eof = True
        kernel.handles.set_gone(Connection, self.gone)
        kernel.handles.set_gone(Listener, Listener(None, "a listener that is closed"))
        kernel.wire(self)  # (the ops in SERVES, each by its handler _<op>)

    # -- yielding requests -----------------------------------------------------------------------
    @staticmethod
    def _recv(task: Task, conn: Connection, out: bytes | None, _: object) -> object:
        if out:
            if conn.closing or conn.write_paused:  # the uncommon cases
                if not conn.send(out):
                    return _CLOSED_REPLY
            else:
                conn.transport.write(out)  # type: ignore[union-attr]
            if conn.write_paused:
                return conn.wait_writer(task, _AFTER_DRAIN_READ)
        return conn.wait_readable(task)

    def _send(self, task: Task, conn: Connection, out: bytes | None, _: object) -> object:
        if not conn.send(out):
            return _CLOSED_REPLY
        if conn.write_paused:
            return conn.wait_writer(task, _AFTER_DRAIN_TRUE)
        return True

    def _sendall(self, task: Task, conn: Connection, out: bytes | None, _: object) -> object:
        if not conn.send(out):
            return _CLOSED_REPLY
        transport = conn.transport
        assert transport is not None
        if transport.get_write_buffer_size() == 0:
            return True
        transport.set_write_buffer_limits(high=0, low=0)  # resume_writing fires once it is all sent
        return conn.wait_writer(task, _AFTER_FLUSH_TRUE)

    def _listen(self, task: Task, where: bytes, port: int | None, spec: Any) -> object:
        self.background.run(self._open_listener(task, where, port, spec[1], spec[b"tls"]))
        return SUSPEND

    def open_listener(
        self, task: Task, where: bytes, port: int | None, workers: ServedBy, tls: object = None
    ) -> object:
        """A listener whose connections ``workers`` serve (HTTP_LISTEN: runtime/services/httpserver.py)."""
        self.background.run(self._open_listener(task, where, port, workers.entry, tls, workers=workers))
        return SUSPEND

    async def _open_listener(
        self,
        task: Task,
        where: bytes,
        port: int | None,
        entry: object,
        tls_options: object,
        *,
        workers: ServedBy | None = None,
    ) -> None:
        where_s = where.decode()
        label = where_s if port is None else f"{where_s}:{port}"
        tls = None
        if tls_options is not None:
            try:
                tls = server_tls(to_plain(tls_options))  # type: ignore[arg-type]
            except TLSConfigError as e:
                self.kernel.resume(task, (None, str(e).encode()))
                return
        listener = Listener(entry, label, workers, tls)
        accept = self.acceptor(listener)
        try:
            if port is None:
                shared = shared_listener(where_s, None, self.limits.backlog)  # (under a supervisor)
                if shared is not None:
                    server = await self.loop.create_unix_server(accept, sock=shared)
                else:
                    remove_stale_socket(where_s)
                    server = await self.loop.create_unix_server(accept, where_s, backlog=self.limits.backlog)
                bound: object = None
            else:
                shared = shared_listener(where_s, port, self.limits.backlog)  # (under a supervisor)
                if shared is not None:
                    server = await self.loop.create_server(accept, sock=shared)
                    self.by_address[(where_s, shared.getsockname()[1])] = listener
                else:
                    server = await self.loop.create_server(
                        accept,
                        where_s,
                        port,
                        reuse_address=True,
                        backlog=self.limits.backlog,
                    )
                bound = server.sockets[0].getsockname()[1]
                listener.label = f"{where_s}:{bound}"
        except OSError as e:
            reason = (e.strerror or str(e)).lower()
            self.kernel.resume(task, (None, reason.encode()))
            return
        listener.server = server
        self.listeners.add(listener)
        if workers is not None:
            workers.label = listener.label
        log.info(
            "listening on %s%s%s",
            listener.label,
            " (http)" if workers is not None else "",
            " (tls)" if tls is not None else "",
        )
        self.kernel.resume(task, (self.kernel.handles.number(listener), bound))

    # -- calls -----------------------------------------------------------------------------------
    def _reusable(self, conn: Connection, _a: object, _b: object) -> bool:
        transport = conn.transport
        return not (conn.closing or conn.eof or conn.pending or transport is None or transport.is_closing())

    def _keep(self, conn: Connection, idle_timeout: object, _: object) -> object:
        if conn is self.gone:
            return True  # (closed long ago: nothing to keep)
        conn.disown()
        conn.pooled = True
        seconds = float(idle_timeout) if isinstance(idle_timeout, int | float) else 60.0
        conn.read_deadline = deadline = self.time() + seconds
        key = conn.deadline_key
        if key == 0 or deadline < key * TICK:
            self.deadlines.add(conn, deadline)
        return True

    @staticmethod
    def _open(conn: Connection, _a: object, _b: object) -> object:
        return not conn.closing and conn.transport is not None

    def _own(self, conn: Connection, task: object, _: object) -> object:
        handles = self.kernel.handles
        owner = self.kernel.current if task is None else handles.resolve(task, Task)
        if not isinstance(owner, Task):
            raise bad_argument(2, "own", "task", handles.found(task))
        if conn is self.gone:
            return True  # (closed long ago: nothing to own)
        if owner is self.kernel.main:
            conn.disown()  # (the main chunk's connections serve the whole process)
            conn.pooled = False
            return True
        if owner.co is None:
            conn.close()  # (handed to a task that has ended)
            return True
        conn.own(owner)
        return True

    def _shutdown(self, conn: Connection, out: bytes | None, _: object) -> object:
        if not conn.send(out):
            return _CLOSED_REPLY
        transport = conn.transport
        assert transport is not None
        if transport.can_write_eof():
            transport.write_eof()  # after what is buffered
        return True

    def _write(self, conn: Connection, out: bytes | None, _: object) -> object:
        return True if conn.send(out) else _CLOSED_REPLY

    def _close(self, conn: Connection, out: bytes | None, abort: object) -> object:
        if abort is True:  # what is unsent is dropped (a peer that stopped reading)
            conn.abort()
            return True
        conn.send(out)
        conn.close()
        return True

    def _peer(self, conn: Connection, _a: object, _b: object) -> object:
        peer = conn.peer()
        return _CLOSED_REPLY if peer is None else peer

    def _settimeouts(self, conn: Connection, send: float | None, read: float | None) -> object:
        if conn is self.gone:
            return True
        limits = self.limits
        if send is not None:
            conn.send_timeout = _seconds(send, limits.send_timeout)
        if read is not None:
            conn.read_timeout = _seconds(read, limits.read_timeout)
        return True

    def _offer(self, conns: object, out: object, limit: object) -> object:
        """moonlet.group's fan-out of one slice of members: ``out`` crosses once and every transport that
        cannot send it at once keeps a reference to the same bytes (uvloop keeps what it is given), so a
        message waiting for 10,000 slow members costs its size once, not 10,000 times."""
        if not isinstance(out, bytes) or not isinstance(limit, int) or lua_type_of(conns) != "table":
            raise BadRequestError("OFFER: (connections, bytes, limit) expected")
        handles, size = self.kernel.handles, len(out)
        table: Any = conns
        closed: list[int] = []
        slow: list[int] = []
        for i in range(1, len(table) + 1):
            conn = handles.get(table[i])
            transport = conn.transport if type(conn) is Connection else None
            if transport is None or conn.closing or transport.is_closing():
                closed.append(i)
                continue
            unsent = transport.get_write_buffer_size()
            if unsent + size > limit:
                slow += (i, unsent)
            elif not conn.send(out):
                closed.append(i)
        if not closed and not slow:
            return None
        return self.lua.table_from(closed), self.lua.table_from(slow)

    def _buffered(self, conn: Connection, _a: object, _b: object) -> object:
        unsent = conn.transport.get_write_buffer_size() if conn.transport is not None else 0
        return conn.pending_size, unsent

    def _unlisten(self, listener: Listener, _a: object, _b: object) -> object:
        self.close_listener(listener)
        return True

    # -- lifecycle -------------------------------------------------------------------------------
    def acceptor(self, listener: Listener) -> Callable[[], asyncio.BaseProtocol]:
        """The protocol factory of a listener's sockets: a connection (after its handshake, for TLS)."""
        tls = listener.tls
        if tls is None:
            return lambda: Connection(self, listener)
        return lambda: self.tls.accept(Connection(self, listener), tls, listener.label)

    async def adopt(self, host: str, port: int, slot: int, sock: socket.socket) -> None:
        """Accept from a dead worker's slot socket too, for our listener on the same address (the supervisor
        asked: see runtime/listeners.py)."""
        listener = self.by_address.get((host, port))
        if listener is None or listener.server is None or slot in listener.adopted:
            sock.close()
            return
        server = await self.loop.create_server(self.acceptor(listener), sock=sock)
        listener.adopted[slot] = server
        log.info("also accepting the connections of worker slot %d on %s", slot, listener.label)

    def release_adopted(self, orphaned: set[int]) -> None:
        """Stop accepting from adopted slot sockets whose slot has a worker again."""
        for listener in self.listeners:
            for slot in [slot for slot in listener.adopted if slot not in orphaned]:
                listener.adopted.pop(slot).close()
                log.info(
                    "slot %d has its worker again: no longer accepting for it on %s", slot, listener.label
                )

    def close_listener(self, listener: Listener) -> None:
        for server in listener.adopted.values():
            server.close()
        listener.adopted.clear()
        if listener.workers is not None:  # its waiting request workers end
            listener.workers.close()
        if listener.server is not None:
            listener.server.close()
            listener.server = None
            self.listeners.discard(listener)
            self.kernel.handles.retire(listener)
            log.info("stopped listening on %s", listener.label)

    def start_drain(self) -> None:
        """Stop accepting; reads that would wait for new bytes now return ``nil, "closed"``."""
        self.draining = True
        for listener in list(self.listeners):
            self.close_listener(listener)
        for conn in list(self.connections):
            if conn.parked and conn.heard:
                conn.close()  # an idle keep-alive connection (a new one still gets its one answer)
            elif conn.reader is not None and conn.heard and conn.listener and conn.listener.workers is None:
                conn._wake_reader(_CLOSED_REPLY)

    def _single_process(self, reason: object, where: object, _c: object) -> object:
        """workers.single(reason): said before the app listens, in the line the supervisor reads."""
        if self.listeners:
            return (None, b"declare it before the app listens (workers.single at the top of the app)")
        text = reason.decode("utf-8", "replace") if isinstance(reason, bytes) else "state in memory"
        place = where.decode("utf-8", "replace") if isinstance(where, bytes) else "?"
        log.info("%s%s (declared at %s)", SINGLE_PROCESS_MARK, one_line(text.encode()), place)
        return True

    def in_flight(self) -> bool:  # (connects and TLS upgrades run in its background set too)
        return bool(self.background.jobs)

    def waits_on_io(self) -> bool:
        return self.waits_on_another_process()

    def waits_on_another_process(self) -> bool:
        """A task waits to read from or send to a connection whose peer is not a connection of this process
        (see runtime/virtualtime.py: such a peer gets a moment of real time to answer)."""
        waiting = [c for c in self.connections if c.reader is not None or c.writer is not None]
        if not waiting:
            return False
        ours = {_end(c, "sockname") for c in self.connections}
        return any(_end(c, "peername") not in ours for c in waiting)

    def close_all(self) -> None:
        for conn in list(self.connections):
            conn.close()

    # -- the service's lifecycle (runtime/services/__init__.py) -------------------------------------
    def keeps_alive(self) -> bool:
        return bool(self.listeners)

    def drain(self) -> None:
        self.start_drain()

    async def close(self) -> None:
        """Close every connection and wait, a moment at most, until each is gone: a transport closes on a
        later loop turn (a TLS one after its close_notify, one whose STARTTLS failed only when aborted), and
        one that outlives the loop is reset by the loop's own teardown, with an error in the log. What is
        left after ``CLOSE_GRACE`` seconds (real time: the virtual clock may jump) is aborted. Listeners close
        first: an app that failed ends without a drain."""
        for listener in list(self.listeners):
            self.close_listener(listener)
        self.tls.close()
        self.close_all()
        deadline = time.monotonic() + CLOSE_GRACE
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        for conn in list(self.connections):
            conn.abort()
            conn.connection_lost(None)  # (a transport another protocol had taken over never says so)
        await asyncio.sleep(0)

    def statistics(self) -> dict[str, int | float]:
        stats: dict[str, int | float] = {
            "connections": len(self.connections),
            "listeners": len(self.listeners),
        }
        if self.tls.pending or self.tls.failed:
            stats["tls_handshakes"], stats["tls_handshakes_failed"] = len(self.tls.pending), self.tls.failed
        return stats

    def console_rows(self, topic: str) -> list[str]:
        if topic != "connections":
            return []
        now = self.loop.time()
        rows = []
        for conn in list(self.connections):
            waiting = (
                "reading"
                if conn.reader is not None
                else "writing"
                if conn.writer is not None
                else "idle (keep-alive)"
                if conn.parked
                else "running"
            )
            left = conn.read_deadline - now if conn.reader is not None and conn.read_deadline else None
            sni = sni_of(conn.transport)
            tls = "" if sni is None else f"  tls{' ' + sni if sni else ''}"
            counts = tcp_bytes(conn.transport)
            traffic = "" if counts is None else f"  in {counts[0]}B out {counts[1]}B"
            rows.append(
                f"{id(conn):x}  {conn.describe()}{tls}  age {now - conn.since:.1f}s{traffic}  {waiting}"
                + (f" (timeout in {left:.1f}s)" if left is not None else "")
            )
        return rows

    def handlers(self) -> list[Task]:
        """The tasks serving open connections (the kernel lists every other task)."""
        return [conn.task for conn in self.connections if conn.task is not None and conn.task.co is not None]

    def kill(self, row_id: str) -> str | None:
        for conn in list(self.connections):
            if f"{id(conn):x}" == row_id:  # (the id its row starts with)
                conn.abort()
                return f"closed {conn.describe()}"
        return None

    def log_task_error(self, conn: Connection, error: bytes | None) -> None:
        log.error("handler error on %s: %s", conn.describe(), one_line(error))


def _seconds(value: float, default: float) -> float:
    """A timeout a connection keeps: the default's own float, or never's, when it is either (Lua hands each
    number in as a new float, 24 bytes an idle connection would keep: kv.lua sets no read timeout)."""
    seconds = float(value)
    if seconds == _NEVER:
        return _NEVER
    return default if seconds == default else seconds


# struct tcp_info (linux/tcp.h, Linux 4.2 on): tcpi_bytes_acked and tcpi_bytes_received, two __u64 at 120
_TCP_INFO_BYTES = struct.Struct("=QQ")
_TCP_INFO_SIZE = 136
_TCP_FAMILIES = (socket.AF_INET, socket.AF_INET6)


def tcp_bytes(transport: asyncio.BaseTransport | None) -> tuple[int, int] | None:
    """The bytes a TCP connection has received and had acknowledged, as the kernel counts them (on the wire:
    a TLS connection's records); None where it does not say (a Unix socket, another system, closed). The
    console asks when it lists connections, so that serving one costs no count."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in _TCP_FAMILIES or not hasattr(socket, "TCP_INFO"):
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    except OSError:
        return None
    if len(info) < _TCP_INFO_SIZE:
        return None
    acked, received = _TCP_INFO_BYTES.unpack_from(info, 120)
    return received, acked


def _end(conn: Connection, which: str) -> object:
    """One end's address of a connection (``sockname`` or ``peername``), hashable; None once it is lost."""
    transport = conn.transport
    if transport is None:
        return None
    address = transport.get_extra_info(which)
    return tuple(address) if isinstance(address, list) else address
