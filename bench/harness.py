"""What every benchmark here shares: where things are, pinning (servers on CPU 0, load generators on CPU 1),
starting a server and waiting for its port, reading a process's CPU time and memory from /proc, and the
redis-benchmark driver. bench/run.py holds the catalogue of workloads; the other scripts import from here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
PIN_SERVER, PIN_CLIENT = (
    (["taskset", "-c", "0"], ["taskset", "-c", "1"])
    if (os.cpu_count() or 1) >= 2 and shutil.which("taskset")
    else ([], [])
)


def moonlet(*args: str, workers: int = 1) -> list[str]:
    """`moonlet run` with `workers` processes (1: no supervisor), warnings only, then options and app."""
    return [PYTHON, "-m", "runtime", "run", "--workers", str(workers), "--log-level", "warning", *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live child processes (nginx's worker is a child)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):  # itself, or its parent is pid
            total += (int(fields[11]) + int(fields[12])) / TICK  # utime, stime
    return total


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


@contextlib.contextmanager
def running(cmd: list[str], port: int) -> Iterator[tuple[int, int]]:
    """Start a server (pinned like every server here), wait for its port; yield its pid and port."""
    proc = subprocess.Popen([*PIN_SERVER, *cmd], cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        wait_port(port, proc)
        yield proc.pid, port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 15) -> None:
    """Wait until something accepts on 127.0.0.1:port; RuntimeError if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline or (proc is not None and proc.poll() is not None):
                raise RuntimeError(
                    f"the server on port {port} did not start ({proc.args if proc else ''})"
                ) from None
            time.sleep(0.05)


def redis_benchmark(port: int, n: int, pipeline: int, clients: int = 50) -> float:
    """Requests per second of `redis-benchmark -t ping_inline` (pinned like every load generator here)."""
    out = subprocess.run(
        [
            *PIN_CLIENT,
            "redis-benchmark",
            "-p",
            str(port),
            "-t",
            "ping_inline",
            "-c",
            str(clients),
            "-n",
            str(n),
            "-P",
            str(pipeline),
            "--csv",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    row = [line for line in out.splitlines() if line.startswith('"PING_INLINE"')][0]
    return float(row.split(",")[1].strip('"'))
