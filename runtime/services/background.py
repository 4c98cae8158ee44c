"""Asyncio work a service starts on behalf of a Lua request (an accept loop, a query, a connect).

The event loop keeps only weak references to tasks, so a service must hold its own; this is that set.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class Background:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.jobs: set[asyncio.Task[Any]] = set()

    def run(self, work: Coroutine[Any, Any, Any]) -> None:
        job = self._loop.create_task(work)
        self.jobs.add(job)
        job.add_done_callback(self.jobs.discard)
