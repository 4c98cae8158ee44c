"""``moonlet bench``: a load generator whose connections are Lua coroutines.

The parent process starts ``--workers`` worker processes (each a moonlet host running
stdlib_lua/moonlet/loadgen.lua over the user's script, with its share of the connections, rate and
requests), reads their progress and results from their standard output (lines starting with
``REPORT_PREFIX``), shows live progress with rich on a terminal, merges the latencies into one HdrHistogram
and prints transactions/s, percentiles and errors by kind — as a table, or as JSON with ``--json``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any

from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]
from rich.console import Console
from rich.live import Live
from rich.table import Table

from runtime.config import REPORT_PREFIX

PERCENTILES = (50.0, 90.0, 99.0, 99.9)
MAX_LATENCY_US = 3_600_000_000  # an hour: anything slower is recorded as that


@dataclass
class Options:
    script: str
    args: list[str]
    connections: int = 50
    duration: float | None = 10.0
    requests: int | None = None
    rate: float | None = None
    workers: int = 1
    timeout: float = 10.0
    json: bool = False


@dataclass
class WorkerState:
    done: int = 0
    failed: int = 0
    elapsed: float = 0.0
    result: dict[str, Any] | None = None
    other: list[str] = field(default_factory=list)


def split(total: float | int | None, parts: int, index: int) -> Any:
    """Worker ``index``'s share of ``total`` (integers stay integers and add up)."""
    if total is None:
        return None
    if isinstance(total, int):
        return total // parts + (1 if index < total % parts else 0)
    return total / parts


def worker_command(opts: Options, index: int) -> list[str]:
    cmd = [sys.executable, "-m", "runtime", "bench", "--worker"]
    cmd += [
        "--connections",
        str(split(opts.connections, opts.workers, index)),
        "--timeout",
        str(opts.timeout),
    ]
    if opts.duration is not None:
        cmd += ["--duration", str(opts.duration)]
    if opts.requests is not None:
        cmd += ["--requests", str(split(opts.requests, opts.workers, index))]
    if opts.rate is not None:
        cmd += ["--rate", str(split(opts.rate, opts.workers, index))]
    return [*cmd, opts.script, *opts.args]


def _read(stream: IO[bytes], state: WorkerState) -> None:
    for raw in stream:
        if raw.startswith(REPORT_PREFIX):
            record = json.loads(raw[len(REPORT_PREFIX) :])
            data = record["data"]
            state.done, state.failed, state.elapsed = data["done"], data["failed"], data["elapsed"]
            if record["kind"] == "result":
                state.result = data
        else:
            state.other.append(raw.decode("utf-8", "replace").rstrip("\n"))


def run(opts: Options) -> int:
    """Run the load; print the summary; exit status 0, or 1 if no worker produced a result."""
    opts.workers = min(opts.workers, opts.connections)
    procs = [subprocess.Popen(worker_command(opts, i), stdout=subprocess.PIPE) for i in range(opts.workers)]
    states = [WorkerState() for _ in procs]
    readers = [
        threading.Thread(target=_read, args=(p.stdout, s), daemon=True)
        for p, s in zip(procs, states, strict=True)
    ]
    for r in readers:
        r.start()
    _show_progress(opts, procs, states)
    for p in procs:
        p.wait()
    for r in readers:
        r.join()
    for s in states:
        for line in s.other:
            print(line)
    results = [s.result for s in states if s.result is not None]
    if not results:
        print("moonlet bench: no worker finished (see the log above)", file=sys.stderr)
        return 1
    summary = summarize(results)
    if opts.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(opts, summary)
    return 0


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    histogram = HdrHistogram(1, MAX_LATENCY_US, 3)
    errors: dict[str, int] = {}
    done = failed = 0
    elapsed = 0.0
    for r in results:
        done += int(r["done"])
        failed += int(r["failed"])
        elapsed = max(elapsed, float(r["elapsed"]))
        for us, count in zip(r.get("latencies") or [], r.get("counts") or [], strict=True):
            histogram.record_value(min(max(int(us), 1), MAX_LATENCY_US), int(count))
        for kind, count in (r.get("errors") or {}).items() if isinstance(r.get("errors"), dict) else []:
            errors[kind] = errors.get(kind, 0) + int(count)
    latency = {f"p{p:g}": histogram.get_value_at_percentile(p) / 1000 for p in PERCENTILES}
    latency["max"] = histogram.get_max_value() / 1000
    latency["mean"] = histogram.get_mean_value() / 1000
    return {
        "transactions": done,
        "errors": failed,
        "seconds": elapsed,
        "transactions_per_s": done / elapsed if elapsed > 0 else 0.0,
        "latency_ms": latency,
        "errors_by_kind": errors,
    }


def _show_progress(opts: Options, procs: list[subprocess.Popen[bytes]], states: list[WorkerState]) -> None:
    console = Console(stderr=True)
    if opts.json or not console.is_terminal:
        return
    with Live(console=console, refresh_per_second=4, transient=True) as live:
        while any(p.poll() is None for p in procs):
            done = sum(s.done for s in states)
            failed = sum(s.failed for s in states)
            elapsed = max((s.elapsed for s in states), default=0.0)
            rate = done / elapsed if elapsed > 0 else 0.0
            total = f" / {opts.duration:g}s" if opts.duration else ""
            live.update(
                f"[bold]{done:,}[/] transactions, {failed:,} errors, {elapsed:.1f}s{total}, {rate:,.0f}/s"
            )
            time.sleep(0.25)


def _print_summary(opts: Options, summary: dict[str, Any]) -> None:
    console = Console()
    console.print(
        f"[bold]{summary['transactions']:,}[/] transactions in {summary['seconds']:.2f}s with "
        f"{opts.connections} connections ({opts.workers} worker{'s' if opts.workers > 1 else ''}): "
        f"[bold]{summary['transactions_per_s']:,.0f}[/] per second, {summary['errors']:,} errors"
    )
    table = Table(title="latency (ms)")
    for name in summary["latency_ms"]:
        table.add_column(name, justify="right")
    table.add_row(*(f"{v:.3f}" for v in summary["latency_ms"].values()))
    console.print(table)
    if summary["errors_by_kind"]:
        errors = Table(title="errors")
        errors.add_column("kind")
        errors.add_column("count", justify="right")
        for kind, count in sorted(summary["errors_by_kind"].items(), key=lambda kv: -kv[1]):
            errors.add_row(kind, f"{count:,}")
        console.print(errors)
