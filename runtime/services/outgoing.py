"""Outgoing connections: ``net.connect`` (TCP or a Unix socket, TLS if asked), ``conn:starttls``,
``net.resolve``.

Each request starts one asyncio task (in the stream service's background set, so shutdown and virtual time
see it) and resumes the Lua task with its answer; every failure is an answer (``nil, err`` with a short
reason: "connection refused", "timeout", "resolve: ...", "tls: certificate verify failed: ..."), never a
crash. A connection made by a task belongs to it (it closes when the task ends, see ``Connection.own``);
the main chunk's serve the whole process. The connections themselves are the stream service's.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Any, ClassVar, cast

from runtime.config import Limits
from runtime.kernel.core import SUSPEND, Kernel
from runtime.kernel.ops import Op
from runtime.kernel.task import Task
from runtime.lua.values import from_plain, to_plain
from runtime.services import Quiet
from runtime.services.stream import _CLOSED_REPLY, TIMEOUT, Connection, StreamService


class OutgoingService(Quiet):
    """CONNECT, STARTTLS and RESOLVE."""

    SERVES: ClassVar[frozenset[Op]] = frozenset({Op.CONNECT, Op.RESOLVE, Op.STARTTLS})  # (its ops)

    def __init__(
        self, kernel: Kernel, loop: asyncio.AbstractEventLoop, limits: Limits, stream: StreamService
    ) -> None:
        self.kernel = kernel
        self.loop = loop
        self.limits = limits
        self.stream = stream
        self.background = stream.background
        kernel.wire(self)  # (the ops in SERVES, each by its handler _<op>)

    def _connect(self, task: Task, where: bytes, port: int | None, opts: object) -> object:
        self.background.run(self._open_connection(task, where.decode(), port, to_plain(opts) or {}))
        return SUSPEND

    async def _open_connection(self, task: Task, where: str, port: int | None, opts: Any) -> None:
        timeout = float(opts.get(b"timeout") or self.limits.connect_timeout)
        label = where if port is None else f"{where}:{port}"
        try:
            tls = opts.get(b"tls")
            ctx, server_name = tls_context(tls, where) if tls else (None, None)
            conn: Connection
            if port is None:
                _, conn = await asyncio.wait_for(
                    self.loop.create_unix_connection(
                        lambda: Connection(self.stream, None, label),
                        where,
                        ssl=ctx,
                        server_hostname=server_name,
                    ),
                    timeout,
                )
            else:
                _, conn = await asyncio.wait_for(
                    self.loop.create_connection(
                        lambda: Connection(self.stream, None, label),
                        where,
                        port,
                        ssl=ctx,
                        server_hostname=server_name,
                    ),
                    timeout,
                )
        except Exception as e:  # every failure to connect is an answer to the task, never a crash
            self.kernel.resume(task, (None, connect_error(e)))
            return
        if task.co is None:  # the task ended while connecting
            conn.close()
            return
        if task is not self.kernel.main:  # (the main chunk's connections serve the whole process)
            conn.own(task)
        self.kernel.resume(task, self.kernel.handles.number(conn))

    def _starttls(self, task: Task, conn: Connection, opts: object, _c: object) -> object:
        self.background.run(self._upgrade(task, conn, to_plain(opts) or {}))
        return SUSPEND

    async def _upgrade(self, task: Task, conn: Connection, opts: Any) -> None:
        transport = conn.transport
        if transport is None or conn.closing:
            self.kernel.resume(task, _CLOSED_REPLY)
            return
        timeout = float(opts.get(b"timeout") or self.limits.connect_timeout)
        host = conn.label.rsplit(":", 1)[0]
        try:
            ctx, server_name = tls_context(opts.get(b"tls", True), host)
            new = await asyncio.wait_for(
                self.loop.start_tls(transport, conn, ctx, server_side=False, server_hostname=server_name),
                timeout,
            )
        except Exception as e:
            conn.abort()
            self.kernel.resume(task, (None, connect_error(e)))
            return
        conn.transport = cast(asyncio.Transport, new)
        self.kernel.resume(task, True)

    def _resolve(self, task: Task, name: bytes, timeout: object, _c: object) -> object:
        self.background.run(
            self._lookup(task, name.decode(), float(timeout) if isinstance(timeout, int | float) else 10.0)
        )
        return SUSPEND

    async def _lookup(self, task: Task, name: str, timeout: float) -> None:
        try:
            infos = await asyncio.wait_for(
                self.loop.getaddrinfo(name, None, type=socket.SOCK_STREAM), timeout
            )
        except Exception as e:
            self.kernel.resume(task, (None, connect_error(e)))
            return
        addresses: list[bytes] = []
        for info in infos:
            address = str(info[4][0]).encode()
            if address not in addresses:
                addresses.append(address)
        self.kernel.resume(task, from_plain(self.lua, addresses))


_contexts: dict[tuple[str | None, bool], ssl.SSLContext] = {}


def tls_context(tls: object, host: str) -> tuple[ssl.SSLContext, str | None]:
    """The client TLS context for ``opts.tls``: ``true`` (verify against the system's CAs) or a table with
    ``verify`` (default true), ``cafile`` and ``server_name``. A context is made once per (cafile, verify)
    and kept for the process: making one loads the CA certificates, 36 ms of the event loop each time here;
    the server name is per connection."""
    options = tls if isinstance(tls, dict) else {}
    given = options.get(b"cafile")
    cafile = given.decode() if isinstance(given, bytes) else None
    verify = options.get(b"verify", True) is not False
    ctx = _contexts.get((cafile, verify))
    if ctx is None:
        ctx = ssl.create_default_context(cafile=cafile)
        if not verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        _contexts[cafile, verify] = ctx
    name = options.get(b"server_name")
    return ctx, name.decode() if isinstance(name, bytes) else host


def connect_error(e: BaseException) -> bytes:
    """A failure to connect, resolve or handshake as the short error string Lua receives."""
    if isinstance(e, TimeoutError):
        return TIMEOUT
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"tls: certificate verify failed: {e.verify_message}".encode()
    if isinstance(e, ssl.SSLError):
        return f"tls: {e.reason or e}".encode()
    if isinstance(e, socket.gaierror):
        return f"resolve: {e.strerror}".encode()
    if isinstance(e, ConnectionRefusedError):
        return b"connection refused"
    if isinstance(e, OSError):
        return (e.strerror or str(e)).lower().encode()
    return f"{type(e).__name__}: {e}".encode()


__all__ = ["OutgoingService", "connect_error", "tls_context"]
