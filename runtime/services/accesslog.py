"""An HTTP server's access log (``http.serve{access_log=}``): the lines Lua formats (one per request), the
peer's address put in front here (kept per connection: Lua's request workers serve many), kept in a buffer
and written with one ``write`` per loop turn (or per 64 KiB), to a file opened for appending — so the lines
of several workers never interleave within one another — or, for ``"-"``, to the log (``moonlet.access``).
SIGUSR1 reopens the file (logrotate's ``postrotate``: the supervisor passes it on).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os

access_log = logging.getLogger("moonlet.access")

FLUSH_AT = 64 * 1024  # bytes kept before they are written at once


class AccessLog:
    def __init__(self, loop: asyncio.AbstractEventLoop, path: str, kind: object = b"combined") -> None:
        self.loop = loop
        self.path = path
        self.json = kind == b"json"  # (its lines are objects: the peer is their first member)
        self.fd = self._open() if path != "-" else None
        self.buffer: list[bytes] = []
        self.size = 0
        self.scheduled = False

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def write(self, peer: bytes, lines: bytes) -> None:
        """Lines (without a last newline) but for the peer's address each begins with (for a JSON line:
        but for its opening brace and the peer's member)."""
        if self.json:
            peer = b'{"peer":' + json.dumps(peer.decode("utf-8", "replace")).encode() + b","
        line = peer + lines if b"\n" not in lines else b"\n".join(peer + one for one in lines.split(b"\n"))
        if self.fd is None:
            access_log.info("%s", line.decode("utf-8", "replace"))
            return
        self.buffer.append(line)
        self.size += len(line) + 1
        if self.size >= FLUSH_AT:
            self.flush()
        elif not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.scheduled = False
        if not self.buffer or self.fd is None:
            return
        self.buffer.append(b"")  # (the last line's newline)
        data, self.buffer, self.size = b"\n".join(self.buffer), [], 0
        try:
            os.write(self.fd, data)
        except OSError as e:  # (a full disk: the lines are lost, said once a batch, the server goes on)
            logging.getLogger("moonlet").warning("access log %s: %s", self.path, e.strerror or e)

    def reopen(self) -> None:
        """After logrotate moved the file: later lines go to a new one at the same path."""
        self.flush()
        if self.fd is not None:
            os.close(self.fd)
            try:
                self.fd = self._open()
            except OSError as e:
                self.fd = None
                logging.getLogger("moonlet").warning("access log %s: cannot reopen: %s", self.path, e)

    def close(self) -> None:
        self.flush()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
