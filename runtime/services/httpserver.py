"""The HTTP/1.1 server's host side: listeners whose connections request workers serve.

Requests are parsed in Lua (``stdlib_lua/moonlet/_httpd.lua``), from the connection's own read buffer,
and answered through its output buffer: an HTTP connection is a stream ``Connection`` like any other (one
``--max-connections``, the high-water mark, the output cap, the send timeout, drain, ``\\connections`` and
``\\kill``). What differs is who serves it: not one task per connection but request workers
(``RequestWorkers``, the stream module's ``ServedBy`` hook), so that an idle keep-alive connection holds no
coroutine. This module owns them, their ops (IDLE, NEXT) and their fast path, opens such listeners and
answers the requests Lua refuses.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any, ClassVar, cast

from runtime.kernel.core import SUSPEND, BadRequestError, Kernel, one_line
from runtime.kernel.ops import Op
from runtime.kernel.task import Task
from runtime.lua.state import resume_thread
from runtime.services import Quiet
from runtime.services.accesslog import AccessLog
from runtime.services.clock import TICK
from runtime.services.metrics import Figures
from runtime.services.stream import Connection, StreamService

log = logging.getLogger("moonlet")

REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    505: b"HTTP Version Not Supported",
}

# Defaults of the options the host applies (the parsing limits are applied in Lua, see http.serve).
KEEPALIVE_TIMEOUT = 75.0  # seconds an idle keep-alive connection is kept
MAX_REQUESTS = 1000  # requests per connection before it is closed
SEND_TIMEOUT = 60.0  # seconds a response write may wait for a peer that takes no data


def error_response(status: int) -> bytes:
    reason = REASONS.get(status, b"Error")
    body = b"%d %s\n" % (status, reason)
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
        % (status, reason, len(body), body)
    )


_IDLE = int(Op.IDLE)
MAX_IDLE_WORKERS = 64  # request workers kept waiting per listener; more end when they go idle
IDLE_WORKER_TTL = 2.0  # seconds a request worker waits for a connection before it ends


class RequestWorkers:
    """The tasks that serve a listener's connections one request at a time (the HTTP server).

    A connection of such a listener has no task of its own. When bytes arrive on it, a waiting worker takes
    it (or a new one starts) and is resumed with ``(conn, data, last)``; once it has answered everything it
    got, the worker gives the connection back (``IDLE``) and waits for the next one. So an idle keep-alive
    connection holds no coroutine, and a busy server reuses a few. ``last`` tells the worker that the next
    response is the connection's last (``max_requests`` reached, or the server is draining). Workers wait
    last in, first out; one that has waited ``IDLE_WORKER_TTL`` ends, so a burst of slow requests leaves no
    coroutines behind once it is over.
    """

    __slots__ = (
        "access", "closed", "counts", "entry", "idle", "keepalive_timeout", "label", "last_request",
        "max_requests", "send_timeout", "svc", "sweep",
    )  # fmt: skip

    def __init__(
        self,
        svc: StreamService,
        entry: object,
        keepalive_timeout: float,
        max_requests: int,
        send_timeout: float,
    ) -> None:
        self.svc = svc  # the connections' own service
        self.entry = entry  # Lua function a new worker runs: entry(conn, data, last)
        self.keepalive_timeout = keepalive_timeout  # seconds a connection is kept with nothing to serve
        self.max_requests = max_requests  # requests per connection
        # the requests answered when the next is the last (compared as it is: no sum a request)
        self.last_request = max_requests - 1
        self.send_timeout = send_timeout
        self.idle: list[Task] = []  # workers waiting for a connection with bytes, the longest waiting first
        self.closed = False  # the listener closed: workers end instead of waiting
        self.sweep: asyncio.TimerHandle | None = None  # ends the workers that have waited too long
        self.label = "?"  # the listener's address, once it listens
        self.access: AccessLog | None = None  # its access log: lines come with IDLE (moonlet._httpd)
        self.counts: Any = None  # Lua's counts of the requests served: {bytes = n, [status] = n} (metrics)

    def forget(self, task: Task) -> None:
        """A waiting worker was killed."""
        if task in self.idle:
            self.idle.remove(task)

    def park(self, conn: Connection) -> None:
        """No worker holds this connection: keep it, without a coroutine, until bytes arrive or it has been
        idle for the keep-alive timeout."""
        conn.parked = True
        svc = self.svc
        conn.read_deadline = deadline = svc.time() + self.keepalive_timeout
        key = conn.deadline_key
        if key == 0 or deadline < key * TICK:
            svc.deadlines.add(conn, deadline)

    def next_is_last(self, conn: Connection) -> bool:
        """(request workers) The next answer on this connection is its last: max_requests, or draining."""
        return self.svc.draining or conn.handled >= self.last_request

    def unpark(self, conn: Connection) -> None:
        """Bytes have arrived for a parked connection: hand them to a waiting worker, or to a new one."""
        if conn.write_paused:
            return  # its last answers are still going out: resume_writing comes back here
        conn.parked = False
        svc = self.svc
        conn.turn_bytes = 0
        reply = (svc.kernel.handles.number(conn), conn.take_pending(), self.next_is_last(conn))
        idle = self.idle
        if idle:
            task = idle.pop()
            task.waiting = None
            cast(Worker, task.owner).conn = conn
            conn.task = task
            svc.kernel.resume(task, reply)
        else:
            worker = Worker(self, conn.listener.label if conn.listener is not None else "?")
            worker.conn = conn
            task = svc.kernel.spawn(worker, self.entry, *reply, scope=True)
            if worker.conn is conn:  # (a new worker runs at once: it may have answered and let go already,
                conn.task = task  # and a connection that names a task is never retired once it is lost)

    def serve_request(self, conn: Connection, data: bytes, size: int) -> None:
        """The HTTP request cycle, in this one frame as the echo cycle is (see the kernel's rules): a waiting
        worker takes the bytes of this parked connection and, if it answers them all and gives the connection
        back (IDLE), the answer is sent and both wait again. Anything else goes the general way."""
        idle = self.idle
        svc = self.svc
        if not idle or conn.write_paused:
            conn.keep(data)
            self.unpark(conn)
            return
        task = idle.pop()
        co = task.co
        if co is None:  # (killed: forget() should have taken it out)
            conn.keep(data)
            self.unpark(conn)
            return
        # (a worker task's owner is its Worker; cast() would be a call on this hot path)
        worker: Worker = task.owner  # type: ignore[assignment]
        worker.conn = conn
        conn.task = task
        task.waiting = None
        conn.parked = False
        conn.turn_bytes = size
        kernel = svc.kernel
        task.runs += 1  # (before `current`: see the kernel's resume)
        kernel.current = task
        number = conn.handle or kernel.handles.number(conn)
        try:
            last = svc.draining or conn.handled >= self.last_request  # (next_is_last, inline)
            req = resume_thread(co, (number, data, last))
            if (
                type(req) is not tuple
                or len(req) != 4
                or req[0] != _IDLE
                or req[1] != number
                or conn.closing
                or conn.eof
                or conn.pending is not None
                or svc.draining
            ):
                kernel.serve(task, req)
                return
            served = req[3]
            if served:  # a request was answered (request_done, without a call when it has no children)
                conn.handled += 1
                extra = task.extra
                if extra is not None and extra.children:
                    self.request_done(task, conn, counted=True)
                if served.__class__ is bytes and self.access is not None:  # (its access log's lines)
                    self.access.write(conn.host_of_peer(), served)
            out = req[2]
            if out:
                conn.transport.write(out)  # type: ignore[union-attr]  # (open: `closing` is false)
                if conn.write_paused:  # the general way decides what waits for the peer
                    kernel.serve(task, (_IDLE, number, None, 0))
                    return
            worker.conn = None
            conn.task = None
            # park(), inline on this path
            conn.parked = True
            now = svc.time()
            conn.read_deadline = deadline = now + self.keepalive_timeout
            key = conn.deadline_key
            if key == 0 or deadline < key * TICK:  # (else the wheel's reminder comes first: it re-checks)
                svc.deadlines.add(conn, deadline)
            # rest(), inline on this path (not draining: that went the general way; keep the two alike)
            if self.closed or len(idle) >= MAX_IDLE_WORKERS:
                kernel.resume(task, None)  # it ends (not from inside its own run: resume_thread has returned)
            else:
                idle.append(task)
                task.waiting = self
                worker.since = now
                if self.sweep is None:
                    self.sweep = svc.loop.call_later(IDLE_WORKER_TTL, self._sweep)
        except Exception as e:
            kernel.failed(task, e)
        finally:
            kernel.current = None

    def rest(self, task: Task, worker: Worker, now: float | None = None) -> bool:
        """A request worker without a connection waits for the next one (since ``now``, the loop's time, if
        the caller has it); False if it is not needed (the listener closed, the server drains, or enough
        wait already): it should end."""
        if self.svc.draining or self.closed or len(self.idle) >= MAX_IDLE_WORKERS:
            return False
        self.idle.append(task)
        task.waiting = self
        worker.since = self.svc.time() if now is None else now
        if self.sweep is None:
            self.sweep = self.svc.loop.call_later(IDLE_WORKER_TTL, self._sweep)
        return True

    def _sweep(self) -> None:
        """End the workers that have waited ``IDLE_WORKER_TTL`` for a connection."""
        self.sweep = None
        idle = self.idle
        expired = self.svc.time() - IDLE_WORKER_TTL
        n = 0
        while n < len(idle) and cast(Worker, idle[n].owner).since <= expired:
            n += 1
        ending, self.idle = idle[:n], idle[n:]
        for task in ending:
            task.waiting = None
            self.svc.kernel.resume(task, None)  # (they end)
        if self.idle:
            wait = cast(Worker, self.idle[0].owner).since - expired
            self.sweep = self.svc.loop.call_later(wait, self._sweep)

    def close(self) -> None:
        """The listener closed: the waiting workers end."""
        if self.closed:
            return
        self.closed = True
        if self.sweep is not None:
            self.sweep.cancel()
            self.sweep = None
        idle, self.idle = self.idle, []
        for task in idle:
            task.waiting = None
            self.svc.kernel.resume_soon(task, None)

    def request_done(self, task: Task, conn: Connection, counted: bool = False) -> None:
        if not counted:
            conn.handled += 1
        # the tasks the request's handler started (and did not detach) end with it
        self.svc.kernel.end_children(task, b"cancelled: the request that started it ended")


class Worker:
    """The owner of one request worker's task: which connection it serves now, if any."""

    __slots__ = ("conn", "label", "since", "workers")

    def __init__(self, workers: RequestWorkers, label: str) -> None:
        self.workers = workers
        self.label = label
        self.conn: Connection | None = None
        self.since = 0.0  # when it began to wait for a connection

    def describe(self) -> str:
        conn = self.conn
        if conn is None:
            return f"idle http worker on {self.label}"
        return f"http handler for {conn.peer_label()} on {self.label}"

    def task_exited(self, task: Task, ok: bool, error: bytes | None) -> None:
        # (handler errors are caught in Lua: a worker itself ends by being killed, stopped for stalling, or
        # when it is not needed any more)
        conn = self.conn
        if not ok:
            log.error("%s ended: %s", self.describe(), one_line(error))
        if conn is not None:
            self.conn = None
            conn.close()
            conn.let_go()
        self.workers.forget(task)


def _seconds(value: object, default: float) -> float:
    if value is None:
        return default
    if value is False:
        return math.inf
    return float(value)  # type: ignore[arg-type]


class HttpService(Quiet):
    """HTTP_LISTEN (yielding); HTTP_REJECT, HTTP_ERROR (calls)."""

    SERVES: ClassVar[frozenset[Op]] = frozenset(
        {Op.HTTP_ACCESS, Op.HTTP_ERROR, Op.HTTP_LISTEN, Op.HTTP_REJECT, Op.IDLE, Op.NEXT}
    )  # (its ops)

    def __init__(self, kernel: Kernel, stream: StreamService, figures: Figures) -> None:
        self.kernel = kernel
        self.stream = stream
        self.figures = figures
        self.access_logs: list[AccessLog] = []  # the servers' access logs (http.serve), by number
        kernel.wire(self)  # (the ops in SERVES, each by its handler _<op>)

    def _http_listen(self, task: Task, where: bytes, port: object, spec: Any) -> object:
        workers = RequestWorkers(
            self.stream,
            spec[1],
            keepalive_timeout=_seconds(spec[b"keepalive_timeout"], KEEPALIVE_TIMEOUT),
            max_requests=int(spec[b"max_requests"] or MAX_REQUESTS),
            send_timeout=_seconds(spec[b"send_timeout"], SEND_TIMEOUT),
        )
        workers.counts = spec[b"counts"]
        self.figures.http.append(workers)
        path = spec[b"access_log"]
        if isinstance(path, bytes):
            try:
                workers.access = AccessLog(self.stream.loop, path.decode(), spec[b"access_format"])
                self.access_logs.append(workers.access)
                spec[b"access_id"] = len(self.access_logs) - 1  # (the number HTTP_ACCESS names it by)
            except OSError as e:
                return (
                    None,
                    f"access log: cannot open {path.decode()}: {(e.strerror or e)}".lower().encode(),
                )
        return self.stream.open_listener(task, where, int(port), workers, spec[b"tls"])  # type: ignore[call-overload]

    def _http_access(self, conn: Connection, log: object, line: object) -> bool:
        # (a number, not a handle: no lookup on the request path; a wrong one is a stdlib bug, refused)
        if not isinstance(log, int) or not 0 <= log < len(self.access_logs) or not isinstance(line, bytes):
            raise BadRequestError("bad argument #2 to 'access' (an access log's number expected)")
        self.access_logs[log].write(conn.host_of_peer(), line)
        return True

    def reopen(self) -> None:
        for log in self.access_logs:
            log.reopen()

    async def close(self) -> None:
        for log in self.access_logs:
            log.close()

    def _idle(self, task: Task, conn: Connection, out: bytes | None, served: object) -> object:
        worker = task.owner
        if not isinstance(worker, Worker) or worker.conn is not conn:
            raise BadRequestError("IDLE from a task that is not serving that connection")
        workers = worker.workers
        if served:
            workers.request_done(task, conn)
            if isinstance(served, bytes) and workers.access is not None:  # (its access log's lines)
                workers.access.write(conn.host_of_peer(), served)
        if out:
            conn.send(out)
        worker.conn = None
        conn.let_go()
        if not conn.closing and conn.transport is not None:
            if conn.eof:
                conn.close()  # the peer sends nothing more, and all it sent is answered
            else:
                workers.park(conn)
                if conn.pending is not None and not conn.write_paused:  # more arrived meanwhile: go on
                    conn.parked = False
                    worker.conn = conn
                    conn.task = task
                    conn.turn_bytes = 0
                    return (conn.handle, conn.take_pending(), workers.next_is_last(conn))
        return SUSPEND if workers.rest(task, worker) else None  # (None: the worker ends)

    def _next(self, conn: Connection, served: object, _: object) -> object:
        task = self.kernel.current
        workers = conn.listener.workers if conn.listener is not None else None
        if task is None or not isinstance(workers, RequestWorkers):
            raise BadRequestError("NEXT on a connection no request worker serves")
        if served:
            workers.request_done(task, conn)
        return workers.next_is_last(conn)

    def _http_reject(self, conn: Connection, status: int, why: bytes, answering: object = False) -> object:
        """A request Lua refused: one log line, then its status' answer (unless an answer to it has begun:
        then the close alone tells the client), and the close."""
        self.figures.http_refused[status] += 1
        listener = conn.listener
        log.info(
            "http %d on %s from %s: %s",
            status,
            listener.label if listener is not None else "?",
            conn.peer_label(),
            why.decode("utf-8", "replace"),
        )
        if not answering:
            conn.send(error_response(status))
        conn.close()
        return True

    @staticmethod
    def _http_error(traceback: object, _b: object, _c: object) -> object:
        log.error("http handler error: %s", one_line(traceback if isinstance(traceback, bytes) else None))
        return True
