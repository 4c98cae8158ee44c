"""Limits and defaults, in one place (each limit has a row in the README's limits table and a test), the
thread pools' configuration, and what a moonlet process and the tool that started it agree on."""

from __future__ import annotations

import os
from dataclasses import dataclass


def _default_lua_memory() -> int:
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        ram = 2 << 30
    return min(1 << 30, ram // 2)


@dataclass(frozen=True, slots=True)
class Limits:
    max_line: int = 64 * 1024  # readline/readuntil: longer is nil, "line too long" / "too large"
    max_read: int = 1024 * 1024  # readn(n) with n above this is nil, "too large"
    read_timeout: float = 60.0  # seconds a read may wait for bytes (conn:settimeouts)
    send_timeout: float = 60.0  # seconds a writer may wait for the peer to drain
    connect_timeout: float = 10.0  # seconds net.connect (and a TLS handshake) may take
    write_high_water: int = 64 * 1024  # unsent bytes above which a writer is suspended
    max_output: int = 1024 * 1024  # unsent bytes above which a connection that does not drain is closed
    max_pending_input: int = 256 * 1024  # bytes received but not yet read above which reading pauses
    input_per_turn: int = 32 * 1024  # bytes a handler is given per loop turn while its peer keeps sending
    backlog: int = 1024
    max_connections: int = (
        0  # accepted connections at once (0: the file-descriptor limit less 256 for the rest)
    )
    lua_max_memory: int = _default_lua_memory()
    drain_timeout: float = 30.0  # on SIGTERM, seconds handlers get to finish
    stall_budget: float = 1.0  # seconds a coroutine may run without yielding before it is stopped (0: never)
    max_timers: int = 100_000  # pending time.after/time.every timers
    loop_lag_warn: float = 0.5  # seconds the event loop may be blocked before a warning is logged
    block_limit: float = 30.0  # seconds the loop may be blocked (inside a C call) before the process exits
    db_path: str | None = None  # SQLite file (default: APP.db beside the app)
    db_readers: int = 4  # reader connections (each its own thread) beside the one writer
    db_busy_timeout: float = 5.0  # seconds to wait for a lock held by another process
    db_query_timeout: float = 30.0  # seconds a query may run before it is interrupted


@dataclass(frozen=True)
class PoolConfig:
    name: str
    size: int
    queue: int  # jobs waiting beyond the running ones before `busy`
    timeout: float  # seconds per job (math.inf: none)


def default_pools() -> dict[str, PoolConfig]:
    cores = os.cpu_count() or 1
    return {
        "cpu": PoolConfig("cpu", cores, 256 * cores, 60.0),
        "io": PoolConfig("io", 32, 4096, 60.0),
    }


# The prefix of the machine-readable lines a moonlet process writes on standard output for the tool that
# started it (moonlet bench's load generator, moonlet test's runner): see OP.REPORT.
REPORT_PREFIX = b"@moonlet-report "
# Where those lines go instead, when set: a descriptor the tool passed down (moonlet test), so that nothing
# the code under test prints can pass for a report.
REPORT_FD_ENV = "MOONLET_REPORT_FD"
