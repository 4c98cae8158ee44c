"""The HTTP/1.1 server's host side: listeners whose connections request workers serve.

Requests are parsed in Lua (``stdlib_lua/moonlet/_httpd.lua``), from the connection's own read buffer,
and answered through its output buffer: an HTTP connection is a stream ``Connection`` like any other (one
``--max-connections``, the high-water mark, the output cap, the send timeout, drain, ``\\connections`` and
``\\kill``). What differs is who serves it: not one task per connection but request workers
(``RequestWorkers`` in services/stream.py), so that an idle keep-alive connection holds no coroutine. This
module opens such listeners and answers the requests Lua refuses.
"""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar

from runtime.kernel.core import Kernel, one_line
from runtime.kernel.ops import Op
from runtime.kernel.task import Task
from runtime.services import Quiet
from runtime.services.stream import Connection, RequestWorkers, StreamService

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


def _seconds(value: object, default: float) -> float:
    if value is None:
        return default
    if value is False:
        return math.inf
    return float(value)  # type: ignore[arg-type]


class HttpService(Quiet):
    """HTTP_LISTEN (yielding); HTTP_REJECT, HTTP_ERROR (calls)."""

    SERVES: ClassVar[frozenset[Op]] = frozenset({Op.HTTP_ERROR, Op.HTTP_LISTEN, Op.HTTP_REJECT})  # (its ops)

    def __init__(self, kernel: Kernel, stream: StreamService) -> None:
        self.stream = stream
        kernel.register(Op.HTTP_LISTEN, self._listen)
        kernel.register_call(Op.HTTP_REJECT, self._reject, Connection)
        kernel.register_call(Op.HTTP_ERROR, self._error)

    def _listen(self, task: Task, where: bytes, port: object, spec: Any) -> object:
        workers = RequestWorkers(
            spec[1],
            keepalive_timeout=_seconds(spec[b"keepalive_timeout"], KEEPALIVE_TIMEOUT),
            max_requests=int(spec[b"max_requests"] or MAX_REQUESTS),
            send_timeout=_seconds(spec[b"send_timeout"], SEND_TIMEOUT),
        )
        return self.stream.open_http(task, where, int(port), workers)  # type: ignore[call-overload]

    @staticmethod
    def _reject(conn: Connection, status: int, why: bytes, answering: object = False) -> object:
        """A request Lua refused: one log line, then its status' answer (unless an answer to it has begun:
        then the close alone tells the client), and the close."""
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
    def _error(traceback: object, _b: object, _c: object) -> object:
        log.error("http handler error: %s", one_line(traceback if isinstance(traceback, bytes) else None))
        return True
