"""User-space instructions per request, counted by valgrind's callgrind around the load only.

    python bench/instructions.py                      # kv.lua and raw uvloop, ping_inline -P 16 and -P 1
    python bench/instructions.py --server kv --pipeline 16 --requests 200000
    python bench/instructions.py --server kv --stall-budget 0     # the same with the stall budget off
    python bench/instructions.py --http               # hello_http.lua and raw uvloop + httptools, wrk -c50
    python bench/instructions.py --http --server hello_http --app-arg=--access-log --app-arg=/tmp/a.log
    python bench/instructions.py --observability      # hello_http plain, with an access log, with --metrics
    python bench/instructions.py --engine lua54 --engine luajit   # moonlet's servers on both engines

The server runs under ``valgrind --tool=callgrind --instr-atstart=no``; after a warm-up (every code path
compiled and every cache filled) ``callgrind_control -i on`` starts counting, ``redis-benchmark`` sends
exactly N requests (with ``--http``, ``wrk`` runs for a few seconds and its count of answered requests
is the N), and ``-i off`` stops before the count is dumped. Instructions are deterministic: the
figure does not move with the machine's load, so it judges a change on a busy shared machine where
wall-clock figures cannot (a second run differs by well under 1 %; but on LuaJIT each process forms its
own traces, and an unpipelined run can land on a slower set: run it several times and quote them all).
The per-function profile is kept in bench/results/ for ``callgrind_annotate``.
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
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # bench/harness.py
    PIN_CLIENT,
    PIN_SERVER,
    PYTHON,
    ROOT,
    free_port,
    moonlet,
    redis_benchmark,
    wait_port,
)

RESULTS = ROOT / "bench" / "results"


APP_ARGS: list[str] = []  # (--app-arg: more arguments for the app, after --port)


def server_command(
    name: str, port: int, stall_budget: str | None, options: list[str], app_args: list[str]
) -> list[str]:
    if name == "raw":
        return [PYTHON, str(ROOT / "bench" / "raw_pong.py"), str(port)]
    if name == "raw_http":
        return [PYTHON, str(ROOT / "bench" / "raw_http.py"), str(port)]
    extra = ["--no-console", *options] + (
        ["--stall-budget", stall_budget] if stall_budget is not None else []
    )
    return moonlet(*extra, str(ROOT / "apps" / f"{name}.lua"), "--port", str(port), *app_args)


def observability(log_path: str) -> dict[str, tuple[list[str], list[str]]]:
    """What the access log and the metrics cost a hello request: (moonlet options, app arguments) each."""
    access = ["--access-log", log_path]
    metrics = ["--metrics", "127.0.0.1:0"]  # (moonlet.metrics loaded: every worker writes once a second)
    return {
        "plain": ([], []),
        "access log": ([], access),
        "metrics": (metrics, []),
        "both": (metrics, access),
    }


def control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True, timeout=120)


Load = Callable[[int, bool], int]  # (port, warm-up?) -> requests answered


def pong_load(pipeline: int, n: int, clients: int) -> Load:
    def run(port: int, warm_up: bool) -> int:
        sent = max(n // 10, 2000) if warm_up else n
        redis_benchmark(port, sent, pipeline, clients)
        return sent

    return run


def http_load(seconds: float, clients: int) -> Load:
    def run(port: int, warm_up: bool) -> int:
        length = 1.0 if warm_up else seconds
        out = subprocess.run(
            [*PIN_CLIENT, "wrk", "-t1", f"-c{clients}", f"-d{length:g}s", f"http://127.0.0.1:{port}/"],
            capture_output=True,
            text=True,
            check=True,
            timeout=length + 120,
        ).stdout
        found = re.search(r"(\d+) requests in", out)
        assert found is not None, out
        return int(found.group(1))

    return run


def count(
    name: str,
    workload: str,
    load: Load,
    stall_budget: str | None,
    tag: str,
    *,
    options: list[str] | None = None,
    app_args: list[str] | None = None,
) -> dict[str, object]:
    """Instructions per request of one server under one load."""
    port = free_port()
    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        cmd = [
            *PIN_SERVER,
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={out}",
            *server_command(
                name, port, stall_budget, options or [], APP_ARGS if app_args is None else app_args
            ),
        ]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(port, proc, timeout=180)
            load(port, True)  # warm-up, not counted
            control(proc.pid, "-i", "on")
            n = load(port, False)
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
        "workload": workload,
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
    parser.add_argument("--http", action="store_true", help="HTTP hello under wrk instead of PING")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of a --http load run")
    parser.add_argument("--app-arg", action="append", default=[], help="an argument for the app (repeat)")
    parser.add_argument(
        "--observability", action="store_true", help="hello_http plain, with an access log, --metrics, both"
    )
    parser.add_argument(
        "--engine",
        action="append",
        choices=["lua54", "luajit"],
        help="moonlet's Lua engine (repeat for both; default lua54)",
    )
    args = parser.parse_args()
    APP_ARGS.extend(args.app_arg)
    if args.observability:
        args.http = True
    for tool in ("valgrind", "callgrind_control", "wrk" if args.http else "redis-benchmark"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: apt-get install valgrind redis-tools wrk")
    engines = args.engine or ["lua54"]
    runs: list[tuple[str, str, Load, str, str | None]] = []  # (server, workload, load, tag, engine)
    if args.http:
        for name in args.server or ["hello_http", "raw_http"]:
            for engine in [None] if name.startswith("raw") else engines:
                load = http_load(args.seconds, args.clients)
                tag = f"{name}-http" + (f"-{engine}" if engine else "")
                runs.append((name, f"wrk -t1 -c{args.clients} GET /", load, tag, engine))
    else:
        for pipeline in args.pipeline or [16, 1]:
            n = args.requests or (200_000 if pipeline > 1 else 40_000)
            for name in args.server or ["kv", "raw"]:
                for engine in [None] if name.startswith("raw") else engines:
                    load = pong_load(pipeline, n, args.clients)
                    workload = f"ping_inline -c {args.clients} -P {pipeline}"
                    tag = f"{name}-P{pipeline}" + (f"-stall{args.stall_budget}" if args.stall_budget else "")
                    runs.append((name, workload, load, tag + (f"-{engine}" if engine else ""), engine))
    rows = []
    if args.observability:
        with tempfile.TemporaryDirectory() as tmp:
            for variant, (options, app_args) in observability(str(Path(tmp) / "access.log")).items():
                load = http_load(args.seconds, args.clients)
                tag = "hello_http-" + variant.replace(" ", "_")
                row = count(
                    "hello_http", "wrk -t1 -c50 GET /", load, None, tag, options=options, app_args=app_args
                )
                row["variant"] = variant
                print(f"hello_http  {variant:<12} {row['instructions_per_request']:>8,} instr/req")
                rows.append(row)
        runs = []
    for name, workload, load, tag, engine in runs:
        budget = None if name.startswith("raw") else args.stall_budget
        row = count(name, workload, load, budget, tag, options=["--engine", engine] if engine else [])
        row["engine"] = engine
        per = row["instructions_per_request"]
        print(f"{row['server']:>10}  {engine or '':<6}  {row['workload']:<26} {per:>8,} instr/req")
        rows.append(row)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "instructions.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
