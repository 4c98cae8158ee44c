"""Where consoles live: the per-user directory of console sockets, telling a live console's files from the
ones a dead process left, and removing them (used by the server, the client and the supervisor, so this
module imports nothing heavy)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any


def runtime_dir() -> Path:
    """The per-user directory of console sockets (created 0700 on first use)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    path = Path(base) / "moonlet" if base else Path(tempfile.gettempdir()) / f"moonlet-{os.getuid()}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)  # whatever the umask or an older directory said
    if path.stat().st_uid != os.getuid():
        raise PermissionError(f"{path} belongs to another user")
    return path


def process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks after boot, from Linux's /proc; None where unknown). A pid is
    reused once its process is gone (32,768 of them by default): the files a process killed outright left
    would otherwise name whichever process holds its number now, a supervisor even."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # (after the command name, which may hold spaces)
    return fields[19] if len(fields) > 19 else None  # field 22, starttime


def is_live(info: dict[str, Any]) -> bool:
    """Whether the process that wrote console info ``info`` still runs (not a later one with its pid)."""
    try:
        pid = int(info["pid"])
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    started = info.get("process_start")
    return started is None or process_start(pid) in (None, started)


def remove_console_files(pid: int, directory: Path | None = None) -> None:
    """The console files of process ``pid`` (its socket, info and token), which a process killed outright
    leaves behind (the supervisor removes its workers')."""
    with contextlib.suppress(OSError):
        directory = directory or runtime_dir()
        for suffix in (".sock", ".json", ".token"):
            with contextlib.suppress(FileNotFoundError):
                (directory / f"{pid}{suffix}").unlink()


FRESH = 10.0  # seconds: files this new may be a starting console's (its socket made, its info not yet)


def remove_stale(directory: Path) -> int:
    """Remove the console files of processes that are gone (run when a console starts, so the directory does
    not keep every process killed outright); how many consoles' files went."""
    removed = 0
    for info_path in directory.glob("*.json"):
        try:
            info = json.loads(info_path.read_text())
            newest = max(p.stat().st_mtime for p in (info_path, info_path.with_suffix(".sock")) if p.exists())
        except (OSError, ValueError):
            continue  # (being written, or gone meanwhile)
        if not isinstance(info, dict) or info_path.stem != str(info.get("pid")) or is_live(info):
            continue
        if newest > time.time() - FRESH:  # (a process that reuses the pid may be writing its own now)
            continue
        remove_console_files(int(info_path.stem), directory)
        removed += 1
    return removed


__all__ = ["is_live", "process_start", "remove_console_files", "remove_stale", "runtime_dir"]
