"""Throughput against worker count: does moonlet use every core?

For each worker count W, `moonlet run --workers W` serves apps/kv.lua (pong) and apps/hello_http.lua
(HTTP hello) pinned to cores 0..W-1, while `moonlet bench` drives it from its own cores (the upper half of
the machine), with as many load processes as server workers. One raw uvloop pong process is the baseline.
Reports requests/s, server CPU µs per request (all workers together), and speed-up over one worker.

    python bench/cores.py [--workers 1,2,4,8] [--seconds 5] [--json FILE]

Needs at least 2W cores to mean anything (the load generator competes for CPU otherwise): on a 2-core
machine, run it with --workers 1 only. No Debian tools needed (moonlet bench is the load generator).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import cpu_seconds, free_port  # bench/harness.py

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
WORKLOADS = {  # name: (server command after `moonlet run`, load script and its arguments, requests/session)
    "pong": (["apps/kv.lua"], ["bench/load/pong.lua"], 1),
    "pong -P16": (["apps/kv.lua"], ["bench/load/pong.lua", "--pipeline", "16"], 16),
    "http hello": (["apps/hello_http.lua"], ["bench/load/http_hello.lua"], 1),
}


def pinned(first: int, count: int) -> list[str]:
    """taskset's prefix for cores first..first+count-1 (nothing where taskset is missing)."""
    return ["taskset", "-c", f"{first}-{first + count - 1}"] if shutil.which("taskset") else []


class Started:
    """A server process whose log is watched for its workers' "listening on" lines."""

    def __init__(self, cmd: list[str], listening: int) -> None:
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
        self.seen = 0
        self.ready = threading.Event()
        self.needed = listening
        threading.Thread(target=self._watch, daemon=True).start()
        if listening == 0:
            self.ready.set()
        if not self.ready.wait(60):
            self.stop()
            raise RuntimeError(f"{cmd} did not listen ({self.seen} of {listening})")

    def _watch(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if b" listening on " in line:
                self.seen += 1
                if self.seen >= self.needed:
                    self.ready.set()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def drive(port: int, load: list[str], procs: int, seconds: float, conns: int) -> dict[str, Any]:
    cmd = [PYTHON, "-m", "runtime", "bench", "--json", "-c", str(conns), "-d", str(seconds), "-w", str(procs)]
    cmd += [*load, "--port", str(port)]
    top = os.cpu_count() or 2
    pin = pinned(top // 2, top // 2) if top >= 4 else []
    done = subprocess.run([*pin, *cmd], cwd=ROOT, capture_output=True, check=True, timeout=seconds + 120)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def measure(kind: str, workers: int, seconds: float) -> dict[str, Any]:
    app, load, per_session = WORKLOADS[kind]
    port = free_port()
    if workers == 0:  # the raw uvloop baseline (pong only)
        cmd = [PYTHON, "bench/raw_pong.py", str(port)]
        server = Started([*pinned(0, 1), *cmd], 0)
        time.sleep(1)
    else:
        cmd = [
            PYTHON,
            "-m",
            "runtime",
            "run",
            "--workers",
            str(workers),
            "--no-console",
            "--log-level",
            "info",
        ]
        cmd += [*app, "--port", str(port)]
        server = Started([*pinned(0, workers), *cmd], workers)
    try:
        drive(port, load, max(1, workers), 1.0, 50 * max(1, workers))  # warm up
        before = cpu_seconds(server.proc.pid)
        result = drive(port, load, max(1, workers), seconds, 50 * max(1, workers))
        cpu = cpu_seconds(server.proc.pid) - before
    finally:
        server.stop()
    requests = result["transactions"] * per_session
    return {
        "workload": kind,
        "workers": workers,
        "req_s": requests / result["seconds"],
        "server_us_per_req": cpu / requests * 1e6,
        "server_cores_busy": cpu / result["seconds"],
        "errors": sum(result.get("errors", {}).values()) if isinstance(result.get("errors"), dict) else 0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--json", metavar="FILE")
    ns = parser.parse_args()
    counts = [int(w) for w in ns.workers.split(",")]
    rows: list[dict[str, Any]] = []
    print(f"{os.cpu_count()} cores; server on the lower cores, moonlet bench on the upper half", flush=True)
    for kind in ns.workloads.split(","):
        base: float | None = None
        for w in ([0] if kind.startswith("pong") else []) + counts:
            row = measure(kind, w, ns.seconds)
            if w == 1:
                base = row["req_s"]
            row["speedup"] = row["req_s"] / base if base and w else None
            rows.append(row)
            who = "raw uvloop (1 process)" if w == 0 else f"moonlet, {w} workers"
            speed = f"  x{row['speedup']:.2f}" if row["speedup"] else ""
            print(
                f"{kind:10}  {who:24} {row['req_s']:>11,.0f} req/s  {row['server_us_per_req']:6.2f} µs/req"
                f"  {row['server_cores_busy']:5.2f} cores busy{speed}",
                flush=True,
            )
    if ns.json:
        Path(ns.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
