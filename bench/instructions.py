"""User-space instructions per request, counted by valgrind's callgrind around the load only.

    python bench/instructions.py                      # kv.lua and raw uvloop, ping_inline -P 16 and -P 1
    python bench/instructions.py --server kv --pipeline 16 --requests 200000
    python bench/instructions.py --server kv --stall-budget 0     # the same with the stall budget off

The server runs under ``valgrind --tool=callgrind --instr-atstart=no``; after a warm-up (every code path
compiled and every cache filled) ``callgrind_control -i on`` starts counting, ``redis-benchmark`` sends
exactly N requests, and ``-i off`` stops before the count is dumped. Instructions are deterministic: the
figure does not move with the machine's load, so it judges a change on a busy shared machine where
wall-clock figures cannot (a second run differs by well under 1 %). The per-function profile is kept in
bench/results/ for ``callgrind_annotate``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import PIN_SERVER, PYTHON, ROOT, free_port, moonlet, redis_benchmark, wait_port

RESULTS = ROOT / "bench" / "results"


def server_command(name: str, port: int, stall_budget: str | None) -> list[str]:
    if name == "raw":
        return [PYTHON, str(ROOT / "bench" / "raw_pong.py"), str(port)]
    extra = ["--no-console"] + (["--stall-budget", stall_budget] if stall_budget is not None else [])
    return moonlet(*extra, str(ROOT / "apps" / f"{name}.lua"), "--port", str(port))


def control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True, timeout=120)


def count(name: str, pipeline: int, n: int, clients: int, stall_budget: str | None) -> dict[str, object]:
    """Instructions per request of one server for one workload."""
    port = free_port()
    RESULTS.mkdir(exist_ok=True)
    tag = f"{name}-P{pipeline}" + (f"-stall{stall_budget}" if stall_budget is not None else "")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        cmd = [
            *PIN_SERVER,
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={out}",
            *server_command(name, port, stall_budget),
        ]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(port, proc, timeout=180)
            redis_benchmark(port, max(n // 10, 2000), pipeline, clients)  # warm-up, not counted
            control(proc.pid, "-i", "on")
            redis_benchmark(port, n, pipeline, clients)
            control(proc.pid, "-i", "off")
            control(proc.pid, "-d")
            time.sleep(0.5)
        finally:
            proc.terminate()
            proc.wait(60)
        dumps = sorted(Path(tmp).glob("callgrind.out*"))
        total = sum(_total(p) for p in dumps)
        keep = RESULTS / f"callgrind-{tag}.out"
        biggest = max(dumps, key=_total)
        keep.write_bytes(biggest.read_bytes())
    return {
        "server": name,
        "workload": f"ping_inline -c {clients} -P {pipeline}",
        "stall_budget": stall_budget,
        "requests": n,
        "instructions_per_request": round(total / n),
        "profile": str(keep.relative_to(ROOT)),
    }


def _total(path: Path) -> int:
    """Instructions (Ir) in one callgrind dump: its `totals:` line (`summary:` is 0 in a partial dump)."""
    text = path.read_text(errors="replace")
    found = re.search(r"^totals:\s*(\d+)", text, re.M)
    return int(found.group(1)) if found else 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--server", action="append", help="an app (kv: apps/kv.lua) or raw (default kv, raw)")
    parser.add_argument("--pipeline", type=int, action="append", help="-P values (default 16 and 1)")
    parser.add_argument("--requests", type=int, default=0, help="N (default 200,000 at -P16, 40,000 at -P1)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--stall-budget", help="pass --stall-budget to moonlet")
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control", "redis-benchmark"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: apt-get install valgrind redis-tools")
    rows = []
    for pipeline in args.pipeline or [16, 1]:
        n = args.requests or (200_000 if pipeline > 1 else 40_000)
        for name in args.server or ["kv", "raw"]:
            row = count(name, pipeline, n, args.clients, None if name == "raw" else args.stall_budget)
            per = row["instructions_per_request"]
            print(f"{row['server']:>6}  {row['workload']:<26} {per:>8,} instr/req")
            rows.append(row)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "instructions.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
