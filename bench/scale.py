"""Idle connections at scale: N connections to `moonlet run --workers W apps/kv.lua` (it lets idle clients
stay, like Redis; apps/echo.lua would drop them after its 60 s read timeout), held by several
holder processes, each on its own loopback source address (127.0.0.2, .3, ...) and under the 20,000
descriptors a process may have here.

    python bench/scale.py --connections 100000 --workers 6

Reports the accept rate, the server's process memory per connection (all workers together, RSS), that a
sample of connections still echo, and the time to close them all. Stops early (and says why) if the server or
a holder cannot go on.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import free_port, moonlet, wait_port  # bench/harness.py

ROOT = Path(__file__).resolve().parent.parent
PER_HOLDER = 15_000
PAGE = os.sysconf("SC_PAGE_SIZE")

HOLDER = r"""
import socket, sys, time, resource
port, count, source = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
socks = []
try:
    for i in range(count):
        s = socket.socket()
        s.setsockopt(socket.SOL_IP, 24, 1)  # IP_BIND_ADDRESS_NO_PORT: the port is picked at connect, not
        s.bind((source, 0))                 # by a search through every bound port (quadratic past ~100k)
        s.connect(("127.0.0.1", port))
        socks.append(s)
except OSError as e:
    print(f"stopped at {len(socks)}: {e}", flush=True)
print(f"held {len(socks)}", flush=True)
sys.stdin.readline()          # sample: echo on a few, then hold until told to close
ok = 0
for s in socks[:: max(1, len(socks) // 20)]:
    s.settimeout(10)
    s.sendall(b"PING\r\n")
    got = s.recv(100)
    ok += got == b"+PONG\r\n"
print(f"echoed {ok} of {len(socks[:: max(1, len(socks) // 20)])}", flush=True)
sys.stdin.readline()
t0 = time.monotonic()
for s in socks:
    s.close()
print(f"closed in {time.monotonic() - t0:.2f}", flush=True)
"""


def server_rss(pid: int) -> int:
    """RSS of the supervisor and its workers together."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if stat.parent.name == str(pid) or fields[1] == str(pid):
                total += int((stat.parent / "statm").read_text().split()[1]) * PAGE
        except (OSError, IndexError):
            continue
    return total


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=6)
    ns = parser.parse_args()
    port = free_port()
    server = subprocess.Popen(
        moonlet("--no-console", "apps/kv.lua", "--port", str(port), workers=ns.workers), cwd=ROOT
    )
    try:
        wait_port(port, server, timeout=30)
        time.sleep(1)
        base = server_rss(server.pid)
        holders = []
        left, source = ns.connections, 2
        t0 = time.monotonic()
        while left > 0:
            count = min(PER_HOLDER, left)
            holders.append(
                subprocess.Popen(
                    [sys.executable, "-c", HOLDER, str(port), str(count), f"127.0.0.{source}"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
            left -= count
            source += 1
        held = 0
        for h in holders:
            line = h.stdout.readline()  # type: ignore[union-attr]
            while not line.startswith("held"):
                print(f"holder: {line.strip()}")
                line = h.stdout.readline()  # type: ignore[union-attr]
            held += int(line.split()[1])
        accept_s = time.monotonic() - t0
        time.sleep(2)
        rss = server_rss(server.pid)
        for h in holders:
            h.stdin.write("\n")  # type: ignore[union-attr]
            h.stdin.flush()  # type: ignore[union-attr]
        replies = [h.stdout.readline().split() for h in holders]  # type: ignore[union-attr]
        echoed, sampled = sum(int(r[1]) for r in replies), sum(int(r[3]) for r in replies)
        for h in holders:
            h.stdin.write("\n")  # type: ignore[union-attr]
            h.stdin.flush()  # type: ignore[union-attr]
        closes = [float(h.stdout.readline().split()[2]) for h in holders]  # type: ignore[union-attr]
        print(
            f"connections held: {held} of {ns.connections} by {len(holders)} holders; workers: {ns.workers}"
        )
        print(f"accept rate: {held / accept_s:,.0f}/s ({accept_s:.1f}s)")
        print(
            f"server memory: {(rss - base) / max(held, 1):,.0f} B per connection (RSS {rss / 2**20:,.0f} MiB)"
        )
        print(f"sample served: {echoed} of {sampled}")
        print(f"close all: {max(closes):.2f}s")
        for h in holders:
            h.wait(60)
    finally:
        server.terminate()
        server.wait(60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
