"""apps/memcache.lua against memcached -t 1, both on one core, loaded by memaslap (Debian: `memcaslap`).

    python bench/memcache.py [--seconds 10] [--rounds 3] [--concurrency 32] [--value-size N]
    python bench/memcache.py --multiget [--rounds 3]

Each round starts both servers fresh (64 MiB each), pinned to CPU 0, and runs memaslap pinned to CPU 1 against
one, then the other (alternating which goes first); the figure is memaslap's TPS (its default mix: 90 % get,
10 % set; values of its default size distribution unless --value-size). Prints each round and the medians,
and the ratio moonlet / memcached. Needs `memcached` and `memcaslap` (libmemcached-tools).

``--multiget``: one item of 1 MiB less 100 bytes, then 8 pipelined lines each naming it 100 times (800 MiB of
replies) read as fast as the client can: the seconds it took, the server's peak RSS over its RSS before, and
its RSS over that once the client has gone (memcached streams such a reply; so must we).
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from harness import ROOT, free_port, wait_port  # bench/harness.py


def start(kind: str, port: int) -> subprocess.Popen[bytes]:
    if kind == "memcached":
        cmd = ["memcached", "-p", str(port), "-U", "0", "-t", "1", "-m", "64", "-l", "127.0.0.1"]
        cmd += ["-u", "root"]  # (needed when run as root; ignored otherwise)
    else:
        cmd = [sys.executable, "-m", "runtime", "run", "--workers", "1", "--no-console", "apps/memcache.lua",
               "--port", str(port), "--memory", "64"]  # fmt: skip
    proc = subprocess.Popen(["taskset", "-c", "0", *cmd], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    wait_port(port, proc)
    return proc


def load(port: int, seconds: int, concurrency: int, value_size: int | None) -> float:
    cmd = ["taskset", "-c", "1", "memcaslap", "-s", f"127.0.0.1:{port}", "-t", f"{seconds}s", "-T", "1",
           "-c", str(concurrency)]  # fmt: skip
    if value_size:
        cmd += ["-X", str(value_size)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False).stdout
    m = re.search(r"TPS: (\d+)", out)
    if m is None:
        raise RuntimeError(f"memcaslap printed no TPS:\n{out[-2000:]}")
    return float(m.group(1))


def rss(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * 4096


def server_pid(proc: subprocess.Popen[bytes]) -> int:
    """The server's own pid under taskset (which execs it) and, for moonlet, its one worker."""
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    kids = children.read_text().split() if children.exists() else []
    return int(kids[0]) if kids else proc.pid


def multiget(port: int, pid: int) -> tuple[float, int, int]:
    value = b"b" * (1024 * 1024 - 100)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"set big 0 0 %d\r\n%s\r\n" % (len(value), value))
        assert s.recv(100) == b"STORED\r\n"
    before = peak = rss(pid)
    want = 8 * (100 * (len(value) + 2 + len(b"VALUE big 0 %d\r\n" % len(value))) + len(b"END\r\n"))
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall((b"get" + b" big" * 100 + b"\r\n") * 8)
        got, n = 0, 0
        while got < want:
            chunk = s.recv(1 << 20)
            if not chunk:
                raise RuntimeError(f"closed after {got} of {want} bytes")
            got += len(chunk)
            n += 1
            if n % 16 == 0:
                peak = max(peak, rss(pid))
    took = time.monotonic() - t0
    time.sleep(0.5)
    return took, peak - before, rss(pid) - before


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--value-size", type=int, default=None)
    ap.add_argument("--multiget", action="store_true", help="the 100 x 1 MiB multi-get (memory and time)")
    ns = ap.parse_args()
    if ns.multiget:
        for r in range(ns.rounds):
            for kind in ["memcached", "moonlet"] if r % 2 == 0 else ["moonlet", "memcached"]:
                port = free_port()
                proc = start(kind, port)
                try:
                    took, peak, after = multiget(port, server_pid(proc))
                finally:
                    proc.terminate()
                    proc.wait(10)
                print(f"round {r + 1}: {kind:9s} 8 x 100 x 1 MiB in {took:.2f} s; RSS peak "
                      f"+{peak >> 20} MiB, after +{after >> 20} MiB", flush=True)  # fmt: skip
        return 0
    for tool in ("memcached", "memcaslap", "taskset"):
        if shutil.which(tool) is None:
            print(f"bench/memcache.py: {tool} is missing (apt-get install memcached libmemcached-tools)")
            return 2
    results: dict[str, list[float]] = {"memcached": [], "moonlet": []}
    for r in range(ns.rounds):
        order = ["memcached", "moonlet"] if r % 2 == 0 else ["moonlet", "memcached"]
        for kind in order:
            port = free_port()
            proc = start(kind, port)
            try:
                tps = load(port, ns.seconds, ns.concurrency, ns.value_size)
            finally:
                proc.terminate()
                proc.wait(10)
            results[kind].append(tps)
            print(f"round {r + 1}: {kind:9s} {tps:10,.0f} TPS", flush=True)
    mc, ml = statistics.median(results["memcached"]), statistics.median(results["moonlet"])
    print(f"median: memcached -t 1 {mc:,.0f} TPS; moonlet memcache.lua {ml:,.0f} TPS; ratio {ml / mc:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
