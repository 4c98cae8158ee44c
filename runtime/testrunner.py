"""``moonlet test [PATHS...]``: run Lua test files (``*_test.lua``, ``test_*.lua``) with moonlet.testing.

Each file runs in its own moonlet process (a real runtime: tests may listen, connect, query a database,
sleep), as the main chunk under stdlib_lua/moonlet/testing.lua. This prints a line per failure (and per test
with ``-v``) and closes with ``N passed, N failed, N skipped``; the exit status is 1 if anything failed.

Rules that keep the count honest:

* Results travel on a pipe of their own (``REPORT_FD_ENV``), which code under test cannot write to: what it
  prints, a forged summary line included, is only output.
* The file's process must end well: a non-zero exit status (a crash, the watchdog ending a test stuck in a
  C call) fails the file even after a summary.
* The process dies with the runner (``PR_SET_PDEATHSIG``): a killed ``moonlet test`` leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from rich.console import Console

from runtime.config import REPORT_FD_ENV, REPORT_PREFIX

FILE_TIMEOUT = 600.0  # seconds of real time one file may take, whatever its tests say
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a test file's process: be killed when the runner dies, however it dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _run_file(cmd: list[str]) -> tuple[subprocess.CompletedProcess[str], list[bytes]]:
    """Run one file's process; its output, and the report lines from its pipe."""
    read_end, write_end = os.pipe()
    env = {**os.environ, REPORT_FD_ENV: str(write_end)}
    reports: list[bytes] = []
    try:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, pass_fds=(write_end,)
        )
    finally:
        os.close(write_end)

    def collect() -> None:
        with os.fdopen(read_end, "rb") as pipe:
            reports.extend(line.rstrip(b"\n") for line in pipe)

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    try:
        out, err = proc.communicate(timeout=FILE_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        err += f"\ntimed out after {FILE_TIMEOUT:g}s of real time"
    reader.join(10)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), reports


def discover(paths: list[str]) -> list[Path]:
    found: list[Path] = []
    for given in paths or ["."]:
        path = Path(given)
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            for f in sorted(path.rglob("*.lua")):
                if (f.name.endswith("_test.lua") or f.name.startswith("test_")) and ".venv" not in f.parts:
                    found.append(f)
    return found


def run(paths: list[str], filter_text: str | None, verbose: bool) -> int:
    console = Console(highlight=False)
    files = discover(paths)
    if not files:
        console.print(f"moonlet test: no test files (*_test.lua, test_*.lua) in {' '.join(paths or ['.'])}")
        return 1
    totals = {"passed": 0, "failed": 0, "skipped": 0}
    for file in files:
        cmd = [sys.executable, "-m", "runtime", "test", "--one", str(file)]
        if filter_text:
            cmd += ["--filter", filter_text]
        proc, reports = _run_file(cmd)
        for text in proc.stdout.splitlines():  # (the file's own output: never a result)
            console.print(text, markup=False)
        summary = None
        for line in reports:
            if not line.startswith(REPORT_PREFIX):
                continue
            record = json.loads(line[len(REPORT_PREFIX) :])
            data = record["data"]
            if record["kind"] == "summary":
                summary = data
            elif data["status"] == "failed":
                console.print(
                    f"[red]FAIL[/] {file}: {data['name']}\n    {data.get('error', '')}", soft_wrap=True
                )
            elif verbose:
                mark = "ok  " if data["status"] == "passed" else "skip"
                console.print(f"{mark} {file}: {data['name']}", soft_wrap=True)
        if summary is None or proc.returncode != 0:  # it failed to load, or did not end well
            totals["failed"] += 1
            last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
            status = f" (exit status {proc.returncode})" if proc.returncode else ""
            console.print(f"[red]ERROR[/] {file}: {last}{status}", soft_wrap=True)
            if summary is None:
                continue
        for k in totals:
            totals[k] += int(summary[k])
    style = "red" if totals["failed"] else "green"
    console.print(
        f"[{style}]{totals['passed']} passed, {totals['failed']} failed, {totals['skipped']} skipped[/] "
        f"in {len(files)} file{'s' if len(files) != 1 else ''}"
    )
    return 1 if totals["failed"] else 0
