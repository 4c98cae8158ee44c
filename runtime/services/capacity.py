"""``--max-connections``: one bound over every kind of accepted connection, stream and HTTP.

Every connection is a file descriptor, and the descriptors left over are for the console, the database, pool
threads and outgoing calls. Past the bound a new connection is accepted and closed at once (the kernel's
accept queue would otherwise fill with clients nobody serves); one log line per ``REPORT_EVERY`` seconds
says how many were refused. Each service keeps its own registry of open connections (a dict, for its drain
and close-all); this object only counts them together.
"""

from __future__ import annotations

import asyncio
import logging
import math
import resource
from collections.abc import Sized

log = logging.getLogger("moonlet")

REPORT_EVERY = 10.0  # seconds between two "refusing connections" lines


class ConnectionCapacity:
    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        self._loop = loop
        self.limit = limit or default_max_connections()
        self._registries: list[Sized] = []
        self._refused = 0
        self._reported = -math.inf

    def count(self, registry: Sized) -> None:
        """Count the connections in ``registry`` (a service's open connections) against the bound."""
        self._registries.append(registry)

    def open(self) -> int:
        return sum(len(r) for r in self._registries)

    def full(self) -> bool:
        """Is the bound reached? (Then the caller closes its new connection; the refusal is counted.)"""
        open_now = self.open()
        if open_now < self.limit:
            return False
        self._refused += 1
        now = self._loop.time()
        if now - self._reported >= REPORT_EVERY:
            log.warning(
                "refusing connections: %d open (max_connections %d); %d refused since the last report",
                open_now,
                self.limit,
                self._refused,
            )
            self._reported, self._refused = now, 0
        return True


def default_max_connections() -> int:
    """The file-descriptor limit less room for the console, the database, pool threads, outgoing calls."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(soft - 256, 16) if soft != resource.RLIM_INFINITY else 1_000_000
