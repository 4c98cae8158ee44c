"""Every answer goes to the request that asked for it: keep-alive clients beside slow clients, deadlines,
console sessions and request workers that retire and start (issue 28).

What it drives against an HTTP app served by request workers (APP below, or any app that answers ``?id=X``
with exactly ``X``):

* ``--clients`` keep-alive connections, each sending requests with a unique id, one at a time, and checking
  that the body is that id (a *mismatch* otherwise), and that the server closed the connection only after an
  answer that said ``connection: close`` (a *dropped* connection otherwise);
* ``--slow`` connections that send part of a request head and wait: answered 408 once the app's
  ``header_timeout`` passes, then opened again, so deadlines keep firing and workers keep being started,
  parked in reads and ended;
* console sessions, each attached for one ``\\stats`` and a chunk, one after another.

    python bench/handover.py --seconds 60 --slow 500            # figures for the closing note
    python bench/handover.py --seconds 60 --slow 500 --hogs 2   # beside two CPU hogs

It prints the requests answered, mismatches, dropped connections, 408s, console sessions, ERROR lines in
the server's log and the kernel's ``stale_wakeups`` and ``handles`` counts from ``\\stats`` at the end.
``tests/test_handover.py`` runs a short round of it in the suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

APP = """
local http = require "moonlet.http"
local opts = require("moonlet.args").parse(arg, { port = 0 })
local TEXT = { ["content-type"] = "text/plain" }
local n = 0
http.serve { host = "127.0.0.1", port = opts.port, header_timeout = 1, handler = function(req)
  n = n + 1
  if n % 7 == 0 then sleep(0.001) end                           -- a timer, and a second wait
  if n % 11 == 0 then assert(spawn(function() return 1 end):wait()) end  -- a task, and a join
  return 200, TEXT, req.query.id or "?"
end }
"""

HEAD = re.compile(rb"\r\n\r\n")


def console_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR")
    return Path(base) / "moonlet" if base else Path("/tmp") / f"moonlet-{os.getuid()}"


class Figures:
    def __init__(self) -> None:
        self.answered = 0
        self.mismatches = 0
        self.dropped = 0
        self.closed_by_server = 0
        self.timeouts_408 = 0
        self.console_sessions = 0
        self.examples: list[str] = []

    def as_dict(self) -> dict[str, object]:
        return {k: v for k, v in vars(self).items() if k != "examples"} | {"examples": self.examples[:5]}


async def _read_answer(reader: asyncio.StreamReader, wait: float) -> tuple[bytes, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), wait)
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await asyncio.wait_for(reader.readexactly(length), wait)
    return head, body


async def keep_alive_client(port: int, me: int, until: float, figures: Figures) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    n = 0
    try:
        while time.monotonic() < until:
            n += 1
            ident = f"c{me}-{n}"
            writer.write(f"GET /?id={ident} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
            try:
                head, body = await _read_answer(reader, 10)
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as e:
                figures.dropped += 1
                figures.examples.append(f"{ident}: {type(e).__name__}")
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                continue
            figures.answered += 1
            if body != ident.encode():
                figures.mismatches += 1
                figures.examples.append(f"{ident} got {body[:40]!r}")
            if b"\r\nconnection: close" in head.lower():  # (max_requests reached): a clean close
                figures.closed_by_server += 1
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
    finally:
        writer.close()


async def slow_client(port: int, until: float, figures: Figures) -> None:
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        try:
            writer.write(b"GET /?id=slow HTTP/1.1\r\nHost: bench\r\n")  # and never the end of the head
            left = until - time.monotonic()
            answer = await asyncio.wait_for(reader.read(), max(left, 0.01))
            if answer.startswith(b"HTTP/1.1 408"):
                figures.timeouts_408 += 1
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()


async def console_sessions(pid: int, until: float, figures: Figures) -> dict[str, str]:
    """Sessions attached one after another; returns the last ``\\stats``, as name -> value."""
    path = console_dir() / f"{pid}.sock"
    stats: dict[str, str] = {}
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_unix_connection(str(path))
        except OSError:
            await asyncio.sleep(0.1)
            continue
        try:
            for message in ({"op": "command", "line": "stats"}, {"op": "eval", "code": "return 1 + 1"}):
                writer.write(json.dumps(message).encode() + b"\n")
                reply = json.loads(await asyncio.wait_for(reader.readline(), 10))
                if "text" in reply:
                    stats = dict(line.split(": ", 1) for line in reply["text"].splitlines() if ": " in line)
            figures.console_sessions += 1
        except (OSError, ValueError, TimeoutError):
            pass
        finally:
            writer.close()
        await asyncio.sleep(0.05)
    return stats


async def drive(
    port: int, pid: int, seconds: float, clients: int, slow: int
) -> tuple[Figures, dict[str, str]]:
    figures = Figures()
    until = time.monotonic() + seconds
    jobs = [keep_alive_client(port, i, until, figures) for i in range(clients)]
    jobs += [slow_client(port, until, figures) for _ in range(slow)]
    *_, stats = await asyncio.gather(*jobs, console_sessions(pid, until, figures))
    return figures, stats


def start_server(app: Path, log: Path, workers: int = 1) -> tuple[subprocess.Popen[bytes], int]:
    """``moonlet run APP --port 0`` with its log in ``log``; returns the process and its port."""
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "runtime", "run", "--workers", str(workers), str(app), "--port", "0"]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = re.search(rb"listening on 127\.0\.0\.1:(\d+)", log.read_bytes())
        if found:
            return proc, int(found.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"the server did not start:\n{log.read_text(errors='replace')[-2000:]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--slow", type=int, default=500)
    parser.add_argument("--hogs", type=int, default=0, help="CPU hogs (busy shells) running beside it")
    args = parser.parse_args()
    hogs = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(args.hogs)]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            app, log = Path(tmp) / "app.lua", Path(tmp) / "server.log"
            app.write_text(APP)
            proc, port = start_server(app, log)
            try:
                figures, stats = asyncio.run(drive(port, proc.pid, args.seconds, args.clients, args.slow))
            finally:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(30)
            errors = [line for line in log.read_text(errors="replace").splitlines() if " ERROR " in line]
    finally:
        for hog in hogs:
            hog.kill()
    result = figures.as_dict() | {
        "error_lines": len(errors),
        "stale_wakeups": stats.get("stale_wakeups"),
        "handles": stats.get("handles"),
        "seconds": args.seconds,
        "slow": args.slow,
        "hogs": args.hogs,
    }
    print(json.dumps(result, indent=1))
    for line in errors[:5]:
        print(line)
    return 0 if not (figures.mismatches or figures.dropped or errors) else 1


if __name__ == "__main__":
    sys.exit(main())
