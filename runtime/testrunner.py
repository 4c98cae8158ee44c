"""``moonlet test [PATHS...]``: run Lua test files (``*_test.lua``, ``test_*.lua``) with moonlet.testing.

Each file runs in its own moonlet process (a real runtime: tests may listen, connect, query a database,
sleep), as the main chunk under stdlib_lua/moonlet/testing.lua, which reports each test on standard output
(``REPORT_PREFIX`` lines). This prints a line per failure (and per test with ``-v``) and closes with
``N passed, N failed, N skipped``; the exit status is 1 if anything failed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from runtime.config import REPORT_PREFIX


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
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600)
        summary = None
        for line in proc.stdout.splitlines():
            if not line.startswith(REPORT_PREFIX.decode()):
                console.print(line, markup=False)
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
        if summary is None:  # the file itself failed to load or run
            totals["failed"] += 1
            last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
            console.print(f"[red]ERROR[/] {file}: {last}", soft_wrap=True)
            continue
        for k in totals:
            totals[k] += int(summary[k])
    style = "red" if totals["failed"] else "green"
    console.print(
        f"[{style}]{totals['passed']} passed, {totals['failed']} failed, {totals['skipped']} skipped[/] "
        f"in {len(files)} file{'s' if len(files) != 1 else ''}"
    )
    return 1 if totals["failed"] else 0
