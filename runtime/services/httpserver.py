"""The HTTP/1.1 server: parsing in the host (httptools), one Lua task per request.

* A connection is an :class:`HttpConnection` protocol; httptools parses what arrives. When a request's
  headers are complete the request is handed to Lua as a new task (``stdlib_lua/moonlet/http.lua`` builds
  ``req`` and ``res``). An idle keep-alive connection holds no coroutine and no parser (the parser is made
  again when bytes arrive), so thousands of idle clients stay cheap.
* Pipelining: requests are answered one at a time, in order; later ones wait parsed.
* Lua never runs inside a parser callback: a request whose headers are complete is started once
  ``feed_data`` has returned (or, behind another, on a later loop turn), so a handler cannot re-enter the
  parser that is calling it.
* The response is built in Lua and handed over with ``HTTP_SEND``; the last piece ends the request, and the
  connection then serves the next request, waits idle, or closes (``Connection: close``, HTTP/1.0 without
  keep-alive, ``max_requests`` reached, draining). A response that will be the connection's last is started
  with ``keep_alive`` false, so its head says ``Connection: close``.
* Trailer fields (after a chunked body) are counted against the header limit and dropped: a request that
  waits behind another is started with its headers only after its trailers were parsed.
* Backpressure: ``res:write`` hands its bytes over (``HTTP_SEND``) and, when more than the high-water mark
  is unsent, waits (``HTTP_DRAIN``) until the peer takes them, for at most ``send_timeout``; a peer that
  takes nothing that long, or lets ``max_output`` pile up, is dropped.
* Limits, each answered with its status, a log line and a close: request line (414), header size and count
  (431), body size (413), malformed input (400), header or body arriving too slowly (408, slowloris); an idle
  keep-alive connection is closed after ``keepalive_timeout``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from dataclasses import dataclass
from typing import Any, cast

import httptools

from runtime.config import Limits
from runtime.kernel.core import SUSPEND, Kernel, one_line
from runtime.kernel.ops import Op
from runtime.kernel.task import Task
from runtime.listeners import shared_listener
from runtime.services.background import Background
from runtime.services.capacity import ConnectionCapacity
from runtime.services.clock import TICK, Deadlines

log = logging.getLogger("moonlet")

REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
}
_CLOSED = (None, b"closed")
_TOO_LARGE = (None, b"too large")
# method SP request-target SP HTTP-version (RFC 9112 3): the shape that makes an unknown method a 501
_REQUEST_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ [^ \r\n]+ HTTP/\d\.\d\r?\n")


@dataclass(frozen=True)
class HttpLimits:
    max_request_line: int = 8 * 1024  # bytes of method + target: longer is 414
    max_header_bytes: int = 16 * 1024  # bytes of all header lines: more is 431
    max_headers: int = 100  # header lines: more is 431
    max_body: int = 1024 * 1024  # request body bytes: more is 413 (req:body(max) may ask less)
    header_timeout: float = 30.0  # seconds from a request's first byte to its last header line: 408
    body_timeout: float = 60.0  # seconds between two pieces of a body being read: 408
    keepalive_timeout: float = 75.0  # seconds an idle keep-alive connection is kept
    max_requests: int = 1000  # requests per connection before it is closed
    send_timeout: float = 60.0  # seconds res:write may wait for a peer that takes no data: then it is closed


class _RejectError(Exception):
    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


class _GoneError(Exception):
    """Raised from a parser callback to stop parsing bytes of a connection that is closing."""


class HttpRequest:
    __slots__ = (
        "answered",
        "body",
        "body_size",
        "complete",
        "conn",
        "continue_sent",
        "expect_continue",
        "header_bytes",
        "headers",
        "keep_alive",
        "method",
        "reader",
        "url",
    )

    def __init__(self, conn: HttpConnection) -> None:
        self.conn = conn
        self.url = b""
        self.method = b""
        self.headers: list[bytes] = []  # name, value, name, value... (names lower-case)
        self.header_bytes = 0
        self.body: list[bytes] = []
        self.body_size = 0
        self.complete = False
        self.keep_alive = True
        self.expect_continue = False
        self.continue_sent = False
        self.reader: Task | None = None
        self.answered = False  # the response is complete (the rest of the body, if any, is discarded)


def origin_form(method: bytes, target: bytes) -> bytes:
    """The path and query a handler sees for a request target (RFC 9112 3.2): an absolute-form target
    (``http://host/path?q``) loses its scheme and authority, a fragment never gets through, ``*`` is for
    OPTIONS only, and anything else that is not an absolute path is a 400."""
    if target == b"*":
        if method == b"OPTIONS":
            return target
        raise _RejectError(400, "'*' is a request target for OPTIONS only")
    try:
        url = httptools.parse_url(target)
    except httptools.HttpParserInvalidURLError:
        raise _RejectError(400, "malformed request target") from None
    if url.schema is None:
        if not target.startswith(b"/"):
            raise _RejectError(400, "malformed request target")
    elif url.schema.lower() not in (b"http", b"https"):
        raise _RejectError(400, "a request target for another protocol")
    path = url.path or b"/"
    return path if url.query is None else path + b"?" + url.query


class HttpListener:
    """A listening socket; its request tasks are reused: a task that has answered waits in ``idle`` for the
    next request (at most ``MAX_IDLE_WORKERS`` wait), so a request costs no new coroutine."""

    __slots__ = ("entry", "idle", "label", "limits", "server")

    def __init__(self, entry: object, label: str, limits: HttpLimits) -> None:
        self.entry = entry
        self.label = label
        self.limits = limits
        self.server: asyncio.Server | None = None
        self.idle: list[Task] = []

    def forget(self, task: Task) -> None:
        """An idle request task was killed: it no longer waits here."""
        if task in self.idle:
            self.idle.remove(task)


MAX_IDLE_WORKERS = 64


class HttpConnection(asyncio.Protocol):
    __slots__ = (
        "deadline",
        "deadline_key",
        "feeding",
        "handled",
        "listener",
        "parser",
        "peer",
        "pending_error",
        "queue",
        "reading",
        "ready",
        "svc",
        "transport",
        "why",
        "write_paused",
        "writer",
    )

    def __init__(self, svc: HttpService, listener: HttpListener) -> None:
        self.svc = svc
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.parser: Any = None  # made when bytes arrive, dropped when idle
        self.queue: list[HttpRequest] = []  # parsed (or being parsed) requests; queue[0] is being answered
        self.reading: HttpRequest | None = None  # the request the parser is filling
        self.ready: HttpRequest | None = None  # headers complete, to start once the parser has returned
        self.handled = 0
        self.deadline = math.inf
        self.deadline_key = 0
        self.why = ""  # what the deadline is for
        self.pending_error = 0  # a status to answer once the response in progress is done
        self.peer = b""
        self.feeding = False  # inside parser.feed_data: callbacks (and Lua run from them) keep the parser
        self.write_paused = False  # more than the high-water mark is unsent
        self.writer: Task | None = None  # a handler waiting in res:write for the peer to take data

    # -- protocol ------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        capacity = self.svc.capacity
        if capacity is not None and capacity.full():
            self.transport.abort()  # (counted with the stream connections: one --max-connections for all)
            return
        hwm = self.svc.write_high_water
        self.transport.set_write_buffer_limits(high=hwm, low=hwm // 4)
        self.svc.connections[self] = None
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}".encode() if isinstance(peer, tuple) else b""
        self._expect(self.listener.limits.keepalive_timeout, "idle")

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        writer = self.writer
        if writer is not None:
            self.writer = None
            req = self.queue[0] if self.queue else None
            if req is not None and not req.complete:
                self._expect(self.listener.limits.body_timeout, "body")
            else:
                self._expect(math.inf, "")
            self.svc.kernel.resume(writer, True)

    def describe(self) -> str:
        return f"http {self.peer.decode()} on {self.listener.label}"

    def abort(self) -> None:
        """Close now, unsent bytes dropped (the console's \\kill); a waiting handler hears "closed"."""
        if self.transport is not None:
            self.transport.abort()

    def forget(self, task: Task) -> None:
        """A handler waiting in res:write was killed."""
        if self.writer is task:
            self.writer = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.svc.connections.pop(self, None)
        if self.writer is not None:
            task, self.writer = self.writer, None
            self.svc.loop.call_soon(self.svc.kernel.resume, task, _CLOSED)
        for req in self.queue:
            if req.reader is not None:
                task, req.reader = req.reader, None
                self.svc.loop.call_soon(self.svc.kernel.resume, task, _CLOSED)

    def data_received(self, data: bytes) -> None:
        if self._gone():
            return  # closing: what still arrives is dropped
        if self.parser is None:
            self.parser = httptools.HttpRequestParser(self)
        self.feeding = True
        try:
            self.parser.feed_data(data)
        except _RejectError as e:
            self._reject(e.status, str(e))
        except httptools.HttpParserUpgrade:
            self._reject(400, "protocol upgrades are not supported")
        except httptools.HttpParserInvalidMethodError:
            # a well-formed request line with a method nobody here implements is a 501; garbage is a 400
            if _REQUEST_LINE.match(data):
                self._reject(501, "a method this server does not implement")
            else:
                self._reject(400, "malformed request line")
        except httptools.HttpParserError as e:
            cause = e.__context__
            if isinstance(cause, _RejectError):
                self._reject(cause.status, str(cause))
            elif not isinstance(cause, _GoneError):
                self._reject(400, f"malformed request: {e}")
        finally:
            self.feeding = False
        ready = self.ready
        if ready is not None:  # Lua runs here, never inside a parser callback
            self.ready = None
            if not self._gone():
                self._start(ready)
        if not self.queue and self.reading is None:
            self.parser = None  # idle: nothing of a next request has arrived

    def _gone(self) -> bool:
        """The connection is closed or closing (a handler may close it from inside a parser callback)."""
        return self.transport is None or self.transport.is_closing()

    # -- parser callbacks ----------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._gone():
            raise _GoneError
        self.reading = req = HttpRequest(self)
        self.queue.append(req)
        if len(self.queue) == 1:
            self._expect(self.listener.limits.header_timeout, "header")

    def on_url(self, part: bytes) -> None:
        req = self.reading
        assert req is not None
        req.url += part
        if len(req.url) > self.listener.limits.max_request_line:
            raise _RejectError(414, f"request line over {self.listener.limits.max_request_line} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        req = self.reading
        assert req is not None
        limits = self.listener.limits
        req.header_bytes += len(name) + len(value) + 4
        if req.method:
            # a trailer field (after a chunked body): counted against the limits, never merged into the
            # headers, which a request pipelined behind another is started with (request smuggling)
            if req.header_bytes > limits.max_header_bytes:
                raise _RejectError(431, f"headers and trailers over {limits.max_header_bytes} bytes")
            return
        req.headers.append(name.lower())
        # (the parser drops the whitespace before a value, not after it)
        req.headers.append(value.rstrip(b" \t"))
        if req.header_bytes > limits.max_header_bytes or len(req.headers) > 2 * limits.max_headers:
            raise _RejectError(
                431, f"headers over {limits.max_header_bytes} bytes or {limits.max_headers} lines"
            )

    def on_headers_complete(self) -> None:
        req = self.reading
        if self._gone():
            raise _GoneError
        assert req is not None and self.parser is not None
        req.method = self.parser.get_method()
        req.keep_alive = bool(self.parser.should_keep_alive())
        http10 = self.parser.get_http_version() == "1.0"
        req.url = origin_form(req.method, req.url)
        headers = req.headers
        hosts = 0
        for i in range(0, len(headers), 2):
            name = headers[i]
            if name == b"host":
                hosts += 1
            elif name == b"transfer-encoding" and http10:
                # HTTP/1.0 has no transfer codings: faulty framing, closed after the answer (RFC 9112 6.1)
                req.keep_alive = False
            elif name == b"content-length":
                try:
                    size = int(headers[i + 1])
                except ValueError:
                    raise _RejectError(400, "bad Content-Length") from None
                if size > self.listener.limits.max_body:
                    raise _RejectError(413, f"body of {size} bytes over {self.listener.limits.max_body}")
            elif name == b"expect" and headers[i + 1].lower() == b"100-continue":
                req.expect_continue = True
        if hosts > 1 or (hosts == 0 and not http10):
            raise _RejectError(400, "a request needs one Host header (HTTP/1.0: at most one)")
        if req is self.queue[0]:
            self.ready = req  # started when the parser returns (data_received)

    def on_body(self, chunk: bytes) -> None:
        req = self.reading
        assert req is not None
        req.body_size += len(chunk)
        if req.body_size > self.listener.limits.max_body:
            raise _RejectError(413, f"body over {self.listener.limits.max_body} bytes")
        if req.answered:
            return  # nobody will read it
        req.body.append(chunk)
        if req.reader is not None:
            self._wake_reader(req)

    def on_message_complete(self) -> None:
        req = self.reading
        assert req is not None
        req.complete = True
        self.reading = None
        if req.reader is not None:
            self._wake_reader(req)
        if req.answered and self.queue and self.queue[0] is req and not self._gone():
            self._next()

    # -- requests and responses ----------------------------------------------------------------------
    def _start(self, req: HttpRequest) -> None:
        if self.transport is None:
            return
        if req.complete:
            self._expect(math.inf, "")
        else:
            self._expect(self.listener.limits.body_timeout, "body")
        svc = self.svc
        http10 = self.parser is not None and self.parser.get_http_version() == "1.0"
        if svc.draining or self.handled + 1 >= self.listener.limits.max_requests:
            req.keep_alive = False  # the last response on this connection: it says so (Connection: close)
        args = (req, req.method, req.url, b"\0".join(req.headers), self.peer, req.keep_alive, http10)
        idle = self.listener.idle
        if idle:
            svc.kernel.resume(idle.pop(), args)
        else:
            svc.kernel.spawn(svc, self.listener.entry, *args, scope=True)  # (its tasks end with each request)

    def finished(self, req: HttpRequest, close: bool) -> None:
        """The response to ``req`` is complete: serve the next request, wait idle, or close."""
        if not self.queue or self.queue[0] is not req or req.answered:
            return
        req.answered = True
        transport = self.transport
        if transport is None:
            return
        if close or not req.keep_alive:
            transport.close()
        elif req.complete:
            self._next()
        # else: the rest of the request body is discarded as it arrives; on_message_complete goes on

    def _next(self) -> None:
        self.queue.pop(0)
        self.handled += 1
        if self.queue:
            nxt = self.queue[0]
            if nxt.method:  # its headers are complete: start it on the next loop turn (never inside a task)
                self.svc.loop.call_soon(self._start, nxt)
            else:
                self._expect(self.listener.limits.header_timeout, "header")
        else:
            if self.reading is None and not self.feeding:
                self.parser = None  # idle: nothing of a next request has arrived
            self._expect(self.listener.limits.keepalive_timeout, "idle")

    def _wake_reader(self, req: HttpRequest) -> None:
        task, req.reader = req.reader, None
        assert task is not None
        self.svc.loop.call_soon(self.svc.kernel.resume, task, True)

    def _reject(self, status: int, why: str) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.pause_reading()
        log.info("http %d on %s from %s: %s", status, self.listener.label, self._peer(), why)
        current = self.queue[0] if self.queue else None
        if current is not None and current.method and current is not self.reading:
            self.queue = [current]  # answer after the response in progress, in order
            current.keep_alive = False
            self.pending_error = status
            return
        transport.write(error_response(status))
        transport.close()

    def _peer(self) -> str:
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "?"

    # -- deadlines (the clock's wheel) ---------------------------------------------------------------
    def _expect(self, seconds: float, why: str) -> None:
        self.why = why
        if seconds == math.inf:
            self.deadline = math.inf
            return
        self.deadline = deadline = self.svc.loop.time() + seconds
        key = self.deadline_key
        if key == 0 or deadline < key * TICK:
            self.svc.deadlines.add(self, deadline)

    def on_deadline(self, now: float) -> None:
        if self.deadline == math.inf or self.transport is None:
            return
        if self.deadline > now:
            self.svc.deadlines.add(self, self.deadline)
            return
        if self.why == "idle":
            self.transport.close()
        elif self.why == "send":
            log.info(
                "closing %s: the peer took no response data for %.3gs",
                self._peer(),
                self.listener.limits.send_timeout,
            )
            self.transport.abort()  # (the writer hears "closed" from connection_lost)
        elif self.why in ("header", "body"):
            req = self.queue[0] if self.queue else None
            if req is not None and req.reader is not None:  # a handler waits for the body: it gets "timeout"
                task, req.reader = req.reader, None
                self.svc.kernel.resume(task, (None, b"timeout"))
            else:
                self._reject(408, f"the request's {self.why} did not arrive in time")


def error_response(status: int) -> bytes:
    reason = REASONS.get(status, b"Error")
    body = b"%d %s\n" % (status, reason)
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
        % (status, reason, len(body), body)
    )


class HttpService:
    """HTTP_LISTEN, HTTP_BODY (yielding); HTTP_SEND (call). Owner of the per-request tasks."""

    def __init__(
        self, kernel: Kernel, loop: asyncio.AbstractEventLoop, deadlines: Deadlines, limits: Limits
    ) -> None:
        self.kernel = kernel
        self.loop = loop
        self.deadlines = deadlines
        self.backlog = limits.backlog
        self.write_high_water = limits.write_high_water  # res:write waits above it, as conn:write does
        self.max_output = limits.max_output  # unsent bytes past which a peer that does not read is dropped
        self.capacity: ConnectionCapacity | None = None  # --max-connections, shared with the stream service
        self.lua: Any = None
        self.listeners: set[HttpListener] = set()
        self.connections: dict[HttpConnection, None] = {}  # (a dict: smaller than a set)
        self.draining = False
        self.background = Background(loop)
        kernel.register(Op.HTTP_LISTEN, self._listen)
        kernel.register(Op.HTTP_BODY, self._body)
        kernel.register(Op.HTTP_NEXT, self._next_request)
        kernel.register(Op.HTTP_DRAIN, self._drain)
        kernel.register_call(Op.HTTP_SEND, self._send)
        kernel.register_call(Op.HTTP_ERROR, self._error)
        kernel.register_call(Op.HTTP_UNLISTEN, self._unlisten)

    # -- owner of request tasks ----------------------------------------------------------------------
    def describe(self) -> str:
        return "http handler"

    def task_exited(self, task: Task, ok: bool, error: bytes | None) -> None:
        if not ok:
            log.error("http handler error: %s", one_line(error))

    # -- requests ------------------------------------------------------------------------------------
    def _listen(self, task: Task, where: bytes, port: object, spec: object) -> object:
        self.background.run(self._open(task, where.decode(), port, spec))
        return SUSPEND

    async def _open(self, task: Task, host: str, port: object, spec: Any) -> None:
        entry = spec[1]
        given = {k.decode(): v for k, v in spec.items() if isinstance(k, bytes) and v is not None}
        limits = HttpLimits(**{k: v for k, v in given.items() if k in HttpLimits.__dataclass_fields__})
        listener = HttpListener(entry, f"{host}:{port}", limits)
        try:
            shared = shared_listener(host, int(port), self.backlog)  # type: ignore[call-overload]
            if shared is not None:  # (under a supervisor)
                server = await self.loop.create_server(lambda: HttpConnection(self, listener), sock=shared)
            else:
                server = await self.loop.create_server(
                    lambda: HttpConnection(self, listener),
                    host,
                    int(port),  # type: ignore[call-overload]
                    reuse_address=True,
                    backlog=self.backlog,
                )
        except OSError as e:
            self.kernel.resume(task, (None, (e.strerror or str(e)).lower().encode()))
            return
        bound = server.sockets[0].getsockname()[1]
        listener.label = f"{host}:{bound}"
        listener.server = server
        self.listeners.add(listener)
        log.info("listening on %s (http)", listener.label)
        self.kernel.resume(task, (listener, bound))

    def _next_request(self, task: Task, req: object, final: object, mode: object) -> object:
        """A request task is done with ``req``: send its answer's last bytes (if given), then wait for the
        next request of the listener (or end, when enough tasks wait already or the server drains)."""
        if not isinstance(req, HttpRequest):
            return None
        if mode:
            self._send(req, final, mode)
        # the request is done: the tasks its handler started (and did not detach) end with it
        self.kernel.end_children(task, b"cancelled: the request that started it ended")
        listener = req.conn.listener
        if self.draining or listener.server is None or len(listener.idle) >= MAX_IDLE_WORKERS:
            return None  # the task ends
        listener.idle.append(task)
        task.waiting = listener
        return SUSPEND

    @staticmethod
    def _error(traceback: object, _b: object, _c: object) -> object:
        log.error("http handler error: %s", one_line(traceback if isinstance(traceback, bytes) else None))
        return True

    def _body(self, task: Task, req: HttpRequest, _b: object, _c: object) -> object:
        """Reply with the body pieces that arrived (joined), nil at its end, or wait for more."""
        conn = req.conn
        if req.body:
            data = req.body[0] if len(req.body) == 1 else b"".join(req.body)
            req.body = []
            return data
        if req.complete:
            return None
        if conn.transport is None:
            return _CLOSED
        if req.expect_continue and not req.continue_sent:
            req.continue_sent = True
            conn.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        req.reader = task
        conn._expect(conn.listener.limits.body_timeout, "body")
        return SUSPEND

    def _send(self, req: HttpRequest, data: object, final: object) -> object:
        conn = req.conn
        transport = conn.transport
        if transport is None or transport.is_closing():
            return _CLOSED
        if isinstance(data, bytes) and data:
            if conn.write_paused and transport.get_write_buffer_size() > self.max_output:
                log.warning(
                    "closing %s: %d response bytes unsent and the peer is not reading (max_output %d)",
                    conn._peer(),
                    transport.get_write_buffer_size(),
                    self.max_output,
                )
                transport.abort()
                return _CLOSED
            transport.write(data)
        if final:
            # (a request started as its connection's last said so, and its handler sends final = 2; a drain
            # that began since closes too)
            close = final == 2 or self.draining
            pending = conn.pending_error
            conn.finished(req, close or pending != 0)
            if pending and conn.transport is not None:
                conn.transport.write(error_response(pending))
            return True
        return 1 if conn.write_paused else True

    def _drain(self, task: Task, req: object, _b: object, _c: object) -> object:
        """res:write above the high-water mark: wait until the peer has taken enough, or the send timeout."""
        if not isinstance(req, HttpRequest):
            raise TypeError("not a request")
        conn = req.conn
        if conn.transport is None or conn.transport.is_closing():
            return _CLOSED
        if not conn.write_paused:
            return True
        if conn.writer is not None:
            return (None, b"busy")
        conn.writer = task
        task.waiting = conn
        conn._expect(conn.listener.limits.send_timeout, "send")
        return SUSPEND

    # -- lifecycle -----------------------------------------------------------------------------------
    def _unlisten(self, listener: object, _b: object, _c: object) -> object:
        if not isinstance(listener, HttpListener):
            raise TypeError("not an HTTP listener")
        self.close_listener(listener)
        return True

    def close_listener(self, listener: HttpListener) -> None:
        """Stop accepting on ``listener``; its free request tasks end (connections already accepted go on)."""
        idle, listener.idle = listener.idle, []
        for task in idle:
            self.loop.call_soon(self.kernel.resume, task, None)
        if listener.server is not None:
            listener.server.close()
            listener.server = None
            log.info("stopped listening on %s (http)", listener.label)
        self.listeners.discard(listener)

    def start_drain(self) -> None:
        self.draining = True
        for listener in list(self.listeners):
            self.close_listener(listener)
        for conn in list(self.connections):
            if not conn.queue and conn.handled and conn.transport is not None:
                conn.transport.close()  # idle keep-alive connections go at once (new ones get one answer)

    def close_all(self) -> None:
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
