"""Soak: hold idle connections, keep steady traffic, churn connections with faults mixed in; watch for drift.

    python bench/soak.py [--duration 600] [--idle 10000] [--rate 2000] [--png soak.png] [--workers 1]

Serves apps/kv.lua (`moonlet run`), opens --idle connections that only sit there, runs --rate PINGs per
second over 20 steady connections (each answer timed), and cycles connect/PING/close on another thread,
every fourth cycle a fault instead: a reset in mid-request, a 100 KiB line, random bytes, a half-close.
Every second it samples the server's process memory (RSS, all workers) and open descriptors, and the
steady clients' latency. At the end it writes a PNG of the three over time and prints the drift: the last
quarter of the run against the first (which includes the warm-up) and against the second (memory and
descriptors in percent, p99 latency in ms).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import resource
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import free_port, wait_port  # bench/harness.py

ROOT = Path(__file__).resolve().parent.parent
PAGE = os.sysconf("SC_PAGE_SIZE")


def server_pids(pid: int) -> list[int]:
    """The server and its workers."""
    pids = [pid]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            if stat.read_text().rsplit(")", 1)[1].split()[1] == str(pid):
                pids.append(int(stat.parent.name))
    return pids


def sample_server(pid: int) -> tuple[int, int]:
    rss = fds = 0
    for p in server_pids(pid):
        with contextlib.suppress(OSError):
            rss += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * PAGE
            fds += len(os.listdir(f"/proc/{p}/fd"))
    return rss, fds


def ping(sock: socket.socket) -> None:
    sock.sendall(b"PING\r\n")
    got = b""
    while not got.endswith(b"\r\n"):
        chunk = sock.recv(64)
        if not chunk:
            raise ConnectionError("closed")
        got += chunk
    if got != b"+PONG\r\n":
        raise ConnectionError(f"unexpected {got!r}")


class Soak:
    def __init__(self, port: int, rate: float) -> None:
        self.port = port
        self.rate = rate
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.latencies: list[float] = []  # since the last sample
        self.errors = 0
        self.cycles = 0
        self.faults = 0

    def steady(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        interval = 20 / self.rate
        next_at = time.monotonic()
        while not self.stop.is_set():
            t0 = time.perf_counter()
            try:
                ping(sock)
            except OSError:
                with self.lock:
                    self.errors += 1
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
                continue
            with self.lock:
                self.latencies.append(time.perf_counter() - t0)
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))

    def churn(self) -> None:
        rng = random.Random(1)
        while not self.stop.is_set():
            self.cycles += 1
            try:
                s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
                kind = self.cycles % 16 if self.cycles % 4 == 0 else -1
                if kind < 0:
                    ping(s)
                    s.close()
                    continue
                self.faults += 1
                if kind in (0, 4):  # reset in the middle of a request
                    s.sendall(b"PI")
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                elif kind == 8:  # a line longer than the limit
                    with contextlib.suppress(OSError):
                        s.sendall(b"x" * 100_000)
                elif kind == 12:  # random bytes
                    with contextlib.suppress(OSError):
                        s.sendall(rng.randbytes(rng.randrange(1, 2000)))
                s.shutdown(socket.SHUT_WR)  # half-close: the server sees the end and closes its side
                with contextlib.suppress(OSError):
                    while s.recv(65536):
                        pass
                s.close()
            except OSError:
                with self.lock:
                    self.errors += 1
            time.sleep(0.002)


def quarters(values: list[float]) -> list[float]:
    """The mean of each quarter of the run."""
    q = max(1, len(values) // 4)
    return [sum(values[i * q : (i + 1) * q]) / q for i in range(3)] + [sum(values[-q:]) / q]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    parser.add_argument("--idle", type=int, default=10_000, help="idle connections (default 10,000)")
    parser.add_argument("--rate", type=float, default=2000.0, help="steady PINGs/s (default 2,000)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--png", default="soak.png", help="where to write the plot (default soak.png)")
    ns = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    port = free_port()
    cmd = [sys.executable, "-m", "runtime", "run", "--workers", str(ns.workers), "--no-console"]
    cmd += ["--log-level", "error", "apps/kv.lua", "--port", str(port)]
    server = subprocess.Popen(cmd, cwd=ROOT)
    samples: list[tuple[float, float, int, float, float]] = []  # t, rss MiB, fds, p50 ms, p99 ms
    try:
        wait_port(port, server, timeout=30)
        idle = []
        for i in range(ns.idle):
            c = socket.socket()
            c.bind((f"127.0.0.{2 + i % 200}", 0))
            c.connect(("127.0.0.1", port))
            idle.append(c)
        soak = Soak(port, ns.rate)
        threads = [threading.Thread(target=soak.steady, daemon=True) for _ in range(20)]
        threads.append(threading.Thread(target=soak.churn, daemon=True))
        for t in threads:
            t.start()
        t0 = time.monotonic()
        while (elapsed := time.monotonic() - t0) < ns.duration:
            time.sleep(1)
            rss, fds = sample_server(server.pid)
            with soak.lock:
                lat, soak.latencies = sorted(soak.latencies), []
            p50 = lat[len(lat) // 2] * 1000 if lat else 0.0
            p99 = lat[int(len(lat) * 0.99)] * 1000 if lat else 0.0
            samples.append((elapsed, rss / 2**20, fds, p50, p99))
            if len(samples) % 10 == 0:
                line = f"{elapsed:6.0f}s  RSS {rss / 2**20:7.1f} MiB  fds {fds:6}  p50 {p50:5.2f} ms  "
                print(f"{line}p99 {p99:6.2f} ms  cycles {soak.cycles}  faults {soak.faults}", flush=True)
        soak.stop.set()
        for t in threads:
            t.join(10)
        for c in idle:
            c.close()
    finally:
        server.terminate()
        server.wait(60)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    rss, fd, p99 = (quarters([float(s[i]) for s in samples]) for i in (1, 2, 4))
    print(
        f"{ns.duration:.0f} s, {ns.idle:,} idle connections, {ns.rate:,.0f} PING/s steady, {soak.cycles:,} "
        f"connect/close cycles of which {soak.faults:,} faults, {soak.errors} steady errors"
    )
    for name, base in (("first", 0), ("second", 1)):  # (the first quarter includes the warm-up)
        print(
            f"drift, last quarter against the {name}: RSS {rss[base]:.1f} -> {rss[3]:.1f} MiB "
            f"({(rss[3] / rss[base] - 1) * 100:+.2f}%), descriptors {fd[base]:.0f} -> {fd[3]:.0f} "
            f"({(fd[3] / fd[base] - 1) * 100:+.2f}%), p99 {p99[base]:.2f} -> {p99[3]:.2f} ms"
        )
    title = f"moonlet soak: {ns.idle:,} idle connections, {ns.rate:,.0f} PING/s, churn + faults"
    plot(samples, Path(ns.png), title)
    print(f"plot: {ns.png}")
    return 0


def plot(samples: list[tuple[float, float, int, float, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s[0] for s in samples]
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    axes[0].plot(t, [s[1] for s in samples])
    axes[0].set_ylabel("server RSS (MiB)")
    axes[1].plot(t, [s[2] for s in samples])
    axes[1].set_ylabel("open descriptors")
    axes[2].plot(t, [s[3] for s in samples], label="p50")
    axes[2].plot(t, [s[4] for s in samples], label="p99")
    axes[2].set_ylabel("PING latency (ms)")
    axes[2].set_xlabel("seconds")
    axes[2].legend()
    for ax in axes:
        ax.set_ylim(0, ax.get_ylim()[1] * 1.15)  # from zero, with room above a flat line
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    raise SystemExit(main())
