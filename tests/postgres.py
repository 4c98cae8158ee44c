"""A real PostgreSQL server for the tests: its own cluster in a temporary directory, on a free loopback port.

initdb runs once per test session into a template; each server copies it (a fraction of a second) and
starts ``postgres`` directly, so a test can stop and restart its server at will. As root (CI), the
server runs as the ``postgres`` user, since PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import asyncpg


def bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def _as_owner() -> dict[str, str]:
    """Popen's arguments to run as the postgres user when we are root (PostgreSQL refuses root)."""
    return {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}


def _chown(path: Path) -> None:
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        for p in [path, *path.rglob("*")]:
            os.chown(p, user.pw_uid, user.pw_gid)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """The template cluster (initdb once); ``start()`` gives a running server of its own."""

    def __init__(self) -> None:
        bin_ = bindir()
        assert bin_ is not None, "PostgreSQL is not installed (tests/run.sh installs it)"
        self.bin = bin_
        self.root = Path(
            tempfile.mkdtemp(prefix="moonlet-pg-")
        )  # not under pytest's 0700 tmp: postgres reads it
        os.chmod(self.root, 0o755)
        _chown(self.root)
        self.template = self.root / "template"
        subprocess.run(
            [str(self.bin / "initdb"), "-D", str(self.template), "-U", "moonlet",
             "--auth=trust", "-E", "UTF8", "--no-sync"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **_as_owner(),  # type: ignore[call-overload]
        )  # fmt: skip
        self._count = 0

    def start(self) -> PgServer:
        self._count += 1
        data = self.root / f"server{self._count}"
        shutil.copytree(self.template, data)
        _chown(data)
        os.chmod(data, 0o700)
        return PgServer(self, data)

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class PgServer:
    def __init__(self, cluster: Cluster, data: Path) -> None:
        self.cluster = cluster
        self.data = data
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://moonlet@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(self.cluster.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
             "-k", str(self.data), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
             "-c", "full_page_writes=off", "-c", "max_connections=60"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **_as_owner(),  # type: ignore[call-overload]
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while True:
            try:
                self.sql("SELECT 1")
                return
            except (OSError, asyncpg.CannotConnectNowError):
                assert self.proc.poll() is None, "postgres exited at start"
                assert time.monotonic() < deadline, "postgres did not start"
                time.sleep(0.05)

    def stop(self, how: signal.Signals = signal.SIGINT) -> None:
        """SIGINT is PostgreSQL's fast shutdown: sessions are ended, then the server exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(how)
            self.proc.wait(20)
        self.proc = None

    def sql(self, statement: str, *args: object, database: str = "postgres") -> list[asyncpg.Record]:
        async def run() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(self.url(database), timeout=5)
            try:
                return list(await conn.fetch(statement, *args))
            finally:
                await conn.close()

        return asyncio.run(run())

    def new_database(self, name: str) -> str:
        self.sql(f'CREATE DATABASE "{name}"')
        return self.url(name)
