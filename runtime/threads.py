"""Worker threads yield the CPU to the event loop.

Pool threads and database threads run at a lower scheduling priority (nice +10) than the thread that runs
the event loop: when they keep every core busy, the loop still gets a core at once, so cheap requests are
answered promptly while heavy work proceeds (the work itself is not slower when cores are free).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from typing import Any

WORKER_NICE = 10


def lower_this_thread() -> None:
    """Lower the calling thread's priority (Linux: priorities are per thread). Best effort."""
    with contextlib.suppress(AttributeError, OSError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), WORKER_NICE))


class LowPrioritySQLite(sqlite3.Connection):
    """A sqlite3 connection that lowers the priority of the thread that opens it (aiosqlite's own)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        lower_this_thread()
