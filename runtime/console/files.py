"""Where consoles live: the per-user directory of console sockets, and removing a dead process's files (used
by the server, the client and the supervisor, so this module imports nothing heavy)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def runtime_dir() -> Path:
    """The per-user directory of console sockets (created 0700 on first use)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    path = Path(base) / "moonlet" if base else Path(tempfile.gettempdir()) / f"moonlet-{os.getuid()}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)  # whatever the umask or an older directory said
    if path.stat().st_uid != os.getuid():
        raise PermissionError(f"{path} belongs to another user")
    return path


def remove_console_files(pid: int) -> None:
    """The console files of process ``pid`` (its socket, info and token), which a process killed outright
    leaves behind (the supervisor removes its workers')."""
    with contextlib.suppress(OSError):
        directory = runtime_dir()
        for suffix in (".sock", ".json", ".token"):
            with contextlib.suppress(FileNotFoundError):
                (directory / f"{pid}{suffix}").unlink()


__all__ = ["remove_console_files", "runtime_dir"]
