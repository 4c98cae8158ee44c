"""SIGTERM to the whole process group under load, again and again: does the drain lose or cut anything?

    python bench/signals.py --rounds 50 --clients 8

Each round starts ``apps/billing.lua`` with two workers (one SQLite file for all rounds) in a process group
of its own, as a service manager would; clients log in and send CHARGE after CHARGE; after a random 0.2-0.8 s
``kill -TERM -PGID`` reaches the supervisor and both workers at once (as systemd's control group, `timeout` or
Ctrl-C in a terminal do). Then the database is checked against what the clients were told:

* acknowledged receipts lost: a RECEIPT a client read whose charge is not stored (must be 0);
* charges without a receipt: a stored charge no client was told of: cut after the commit (must be 0);
* unanswered: a CHARGE sent when the server had stopped reading; not stored, so a client may retry it;
* the exit status of every round (0: a clean drain), drains that ran out of time (their handlers were cut
  mid-request) and any engine error in the log.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import PYTHON, ROOT, free_port, wait_port  # bench/harness.py


def line(f: object) -> bytes:
    data = f.readline()  # type: ignore[attr-defined]
    if not data:
        raise ConnectionError("closed")
    return bytes(data).rstrip(b"\n")


def client(port: int, n: int, stop: threading.Event, acked: list[int], unanswered: list[int]) -> None:
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
    except OSError:
        return
    with s, s.makefile("rb") as f:
        try:
            line(f)
            s.sendall(f"LOGIN user{n}\n".encode())
            challenge = line(f).split()[1]
            s.sendall(b"PROOF " + challenge[::-1] + b"\n")
            line(f)
        except OSError:
            return
        while not stop.is_set():
            try:
                s.sendall(f"CHARGE acct-{n} 1\n".encode())
            except OSError:
                return
            try:
                reply = line(f)
            except OSError:
                unanswered.append(n)
                return
            if not reply.startswith(b"RECEIPT"):
                unanswered.append(n)
                return
            acked.append(int(reply.split()[1]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--clients", type=int, default=8)
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "billing.db"
        acked: list[int] = []
        unanswered: list[int] = []
        statuses: list[int] = []
        engine_errors = drain_timeouts = 0
        for _ in range(ns.rounds):
            port = free_port()
            log = Path(tmp) / "server.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [PYTHON, "-m", "runtime", "run", "--workers", "2", "--no-console", "--db", str(db),
                     "apps/billing.lua", "--port", str(port)],
                    cwd=ROOT, stdout=subprocess.DEVNULL, stderr=out, start_new_session=True,
                )  # fmt: skip
                wait_port(port)
                time.sleep(0.5)  # (both workers listening)
                stop = threading.Event()
                threads = [
                    threading.Thread(target=client, args=(port, n, stop, acked, unanswered))
                    for n in range(ns.clients)
                ]
                for t in threads:
                    t.start()
                time.sleep(random.uniform(0.2, 0.8))
                os.killpg(proc.pid, signal.SIGTERM)
                statuses.append(proc.wait(60))
                stop.set()
                for t in threads:
                    t.join(10)
            text = log.read_text(errors="replace")
            engine_errors += text.count("internal error")
            drain_timeouts += text.count("drain timeout")
        with sqlite3.connect(db) as check:
            stored = {row[0] for row in check.execute("SELECT id FROM receipts")}
            balance = check.execute("SELECT coalesce(sum(balance), 0) FROM accounts").fetchone()[0]
        told = set(acked)
        print(f"rounds {ns.rounds}, clients {ns.clients} per round, exit statuses {sorted(set(statuses))}")
        print(f"charges acknowledged {len(told)}, stored {len(stored)}, balances sum {balance}")
        print(f"acknowledged receipts lost: {len(told - stored)}")
        print(f"charges without a receipt: {len(stored - told)}")
        print(f"unanswered (not stored, retryable): {len(unanswered)}")
        print(f"drains that ran out of time: {drain_timeouts}")
        print(f"engine errors in the log: {engine_errors}")


if __name__ == "__main__":
    main()
