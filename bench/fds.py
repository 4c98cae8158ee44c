"""Open descriptors of a moonlet app once it prints ``done``: ``python bench/fds.py APP.lua [ARGS...]``.

Runs the app with one worker, waits for a line starting with ``done`` on its standard output, then counts
``/proc/PID/fd`` and how many of those are TCP sockets, and stops the app. Used for the cancel pattern
(bench/lua/cancel_fanout.lua): a task's connections close when it is cancelled.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    cmd = [sys.executable, "-m", "runtime", "run", "--workers", "1", "--no-console", *sys.argv[1:]]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("done"):
                where = f"/proc/{proc.pid}/fd"
                fds = os.listdir(where)
                sockets = sum(1 for fd in fds if os.readlink(f"{where}/{fd}").startswith("socket:"))
                print(f"{line.strip()}: {len(fds)} descriptors open, {sockets} of them sockets")
                return 0
        print("the app ended without printing done", file=sys.stderr)
        return 1
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    sys.exit(main())
