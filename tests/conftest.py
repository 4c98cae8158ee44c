"""Test helpers: run a real moonlet process on 127.0.0.1 and talk to it over real sockets."""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, Protocol

import pytest

# Every moonlet the suite starts, in this process or another, checks that no host object crosses into Lua
# (runtime/kernel/handles.py): set before the runtime is imported.
os.environ["MOONLET_CHECK_CROSSING"] = "1"

from runtime.cli import run_limits
from runtime.host import Host
from runtime.lua import engine

ROOT = Path(__file__).resolve().parent.parent
APPS = ROOT / "apps"
LISTENING = re.compile(rb"listening on (\S+):(\d+)")


def one_worker(options: list[str] | None) -> list[str]:
    """Tests run one process unless they ask for workers (the default is one per core)."""
    options = list(options or [])
    if not any(o == "--workers" or o.startswith("--workers=") for o in options):
        options[:0] = ["--workers", "1"]
    return options


class Server:
    """A ``moonlet run`` process; its log (stderr) is collected line by line."""

    def __init__(
        self,
        app: Path,
        args: list[str],
        options: list[str] | None = None,
        ready: re.Pattern[bytes] = LISTENING,
    ) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runtime", "run", *one_worker(options), str(app), *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group, as a service's (tests may signal the group)
        )
        self.log_lines: list[bytes] = []
        self.clients: list[Client] = []
        self._partial = b""
        self.port = 0
        match = self.wait_log(ready, timeout=15)  # (the pattern's second group, if any, is the port)
        self.port = int(match.group(2)) if (match.lastindex or 0) >= 2 else 0

    def wait_log(self, pattern: re.Pattern[bytes] | bytes, timeout: float = 5) -> re.Match[bytes]:
        """Wait until a log line matches ``pattern``; returns the match."""
        regex = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for line in self.log_lines[seen:]:
                if (m := regex.search(line)) is not None:
                    return m
            seen = len(self.log_lines)
            left = deadline - time.monotonic()
            if left <= 0 or not self._read_log(left):
                raise AssertionError(f"log never showed {regex.pattern!r}; log so far:\n{self.log_text()}")

    def _read_log(self, timeout: float) -> bool:
        """Read what stderr has (unbuffered: select must see everything); False at end of file."""
        assert self.proc.stderr is not None
        fd = self.proc.stderr.fileno()
        if select.select([fd], [], [], min(timeout, 0.1))[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                return False
            self._partial += chunk
            *lines, self._partial = self._partial.split(b"\n")
            self.log_lines.extend(line + b"\n" for line in lines)
        return True

    def log_text(self) -> str:
        while self.proc.stderr is not None and select.select([self.proc.stderr.fileno()], [], [], 0)[0]:
            if not self._read_log(0):
                break
        return b"".join(self.log_lines).decode("utf-8", "replace")

    def connect(self, timeout: float = 5) -> Client:
        client = Client(socket.create_connection(("127.0.0.1", self.port), timeout=timeout))
        self.clients.append(client)
        return client

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        for client in self.clients:
            client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        self.log_lines.extend(line + b"\n" for line in (self._partial + err).split(b"\n") if line)
        self._partial = b""
        return self.proc.returncode

    def running(self) -> bool:
        return self.proc.poll() is None

    def rss(self) -> int:
        return int(Path(f"/proc/{self.proc.pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# A line server whose "slow" request takes a while: `SLOW_ECHO % seconds`. Answers "done <line>".
SLOW_ECHO = """
local net, log = require "moonlet.net", require "moonlet.log"
net.listen { port = 0, handler = function(conn)
  while true do
    local line = conn:readline()
    if not line then return end
    if line == "slow" then log.info("slow: in its handler") sleep(%s) end
    conn:write("done ", line, "\\n")
  end
end }
"""


class Client:
    """A blocking test client with line helpers."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"closed with {self.buf!r} unread")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def recv_exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"closed after {len(self.buf)} of {n} bytes")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_all(self) -> bytes:
        """Everything until the server closes."""
        data, self.buf = self.buf, b""
        while chunk := self.sock.recv(65536):
            data += chunk
        return data

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def run_app() -> Iterator:  # type: ignore[type-arg]
    """run_app(path, *args, options=[...]) starts a server; all are stopped at the end of the test."""
    servers: list[Server] = []

    def start(
        app: Path | str, *args: str, options: list[str] | None = None, ready: re.Pattern[bytes] = LISTENING
    ) -> Server:
        server = Server(Path(app), list(args), options, ready)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(signal.SIGKILL)


@pytest.fixture
def lua_server(tmp_path: Path, run_app) -> Iterator:  # type: ignore[no-untyped-def,type-arg]
    """lua_server(source) runs a Lua snippet as an app; the snippet must listen (port 0 is fine)."""

    def start(
        source: str, *args: str, options: list[str] | None = None, ready: re.Pattern[bytes] = LISTENING
    ) -> Server:
        path = tmp_path / f"app{len(list(tmp_path.glob('app*.lua')))}.lua"
        path.write_text(textwrap.dedent(source).lstrip("\n"))
        return run_app(path, *args, options=options, ready=ready)

    yield start


def run_script(
    tmp_path: Path, source: str, *args: str, timeout: float = 20, options: list[str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run a Lua script that does not serve (``moonlet run`` as a script runner)."""
    path = tmp_path / "script.lua"
    path.write_text(textwrap.dedent(source).lstrip("\n"))
    return subprocess.run(
        [sys.executable, "-m", "runtime", "run", *one_worker(options), str(path), *args],
        cwd=ROOT,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


class InProcess(Protocol):
    def __call__(
        self, source: str, *args: str, virtual_time: bool = True, options: list[str] | None = None
    ) -> tuple[int, list[str]]: ...


def run_in_process(
    tmp_path: Path,
    source: str,
    *args: str,
    virtual_time: bool = True,
    name: str = "app.lua",
    options: list[str] | None = None,
) -> tuple[int, list[str]]:
    """Run a Lua app to its end in this process (a ``Host``, no console) and collect what it prints: the
    harness behind ``lua_run``, for helpers that have no fixture at hand. ``options``: ``moonlet run``'s,
    read by its own parser (``--stall-budget 0.2``, ``--db PATH``, ...)."""
    app = tmp_path / name
    app.write_text(textwrap.dedent(source))
    clock: Literal["jumping"] | bool = "jumping" if virtual_time else False
    limits = run_limits(options) if options else None
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="replace")
    with contextlib.redirect_stdout(out):
        code = Host(str(app), list(args), limits, console=False, virtual_time=clock).run()
    out.flush()
    return code, out.buffer.getvalue().decode("utf-8", "replace").splitlines()  # type: ignore[attr-defined]


@pytest.fixture
def lua_run(tmp_path: Path) -> InProcess:
    """The in-process harness: run a Lua app to its end inside the test's process (a ``Host``: no subprocess,
    no console), by default on the virtual clock, jumping from the start, so sleeps, timers and timeouts
    take no real time while sockets on 127.0.0.1 stay real. Returns (exit status, printed lines)."""

    def run(
        source: str, *args: str, virtual_time: bool = True, options: list[str] | None = None
    ) -> tuple[int, list[str]]:
        return run_in_process(tmp_path, source, *args, virtual_time=virtual_time, options=options)

    return run


class _Lines(logging.Handler):
    """A host's log records as the lines ``moonlet run`` writes to stderr (level, logger, message)."""

    def __init__(self, lines: list[bytes]) -> None:
        super().__init__(logging.DEBUG)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}\n".encode())


class HostServer:
    """A server app run by a ``Host`` in a thread of the test's process, on the real clock: real sockets on
    127.0.0.1, no process to start. The same surface as :class:`Server` for a test that only talks to it
    (``port``, ``connect``, ``wait_log``, ``log_text``, ``stop``); a test that signals the process or reads
    its memory keeps :class:`Server`."""

    def __init__(
        self,
        app: Path,
        args: list[str],
        options: list[str] | None = None,
        ready: re.Pattern[bytes] = LISTENING,
    ) -> None:
        self.log_lines: list[bytes] = []
        self.clients: list[Client] = []
        self._handler = _Lines(self.log_lines)
        logger = logging.getLogger("moonlet")
        self._level = logger.level
        logger.setLevel(logging.DEBUG if "--debug" in (options or []) else logging.INFO)
        logger.addHandler(self._handler)
        limits = run_limits(options) if options else None
        self.host = Host(str(app), args, limits, console=False)
        self.exit_code: int | None = None
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"host {app.name}", daemon=True)
        self.thread.start()
        match = self.wait_log(ready, timeout=15)
        self.port = int(match.group(2)) if (match.lastindex or 0) >= 2 else 0

    def running(self) -> bool:
        return self.thread.is_alive()

    def rss(self) -> int:
        """The resident size of the test's process: a growth between two readings is the host's."""
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        try:
            self.exit_code = self.host.run()
        except BaseException as e:  # (the test sees it: stop() raises it)
            self.failure = e

    def wait_log(self, pattern: re.Pattern[bytes] | bytes, timeout: float = 5) -> re.Match[bytes]:
        regex = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))
        deadline = time.monotonic() + timeout
        while True:
            ended = not self.thread.is_alive()  # (before reading: its last lines are then in)
            for line in list(self.log_lines):
                if (m := regex.search(line)) is not None:
                    return m
            if ended or time.monotonic() > deadline:
                ending = f" (it ended: {self.failure!r}, status {self.exit_code})" if ended else ""
                raise AssertionError(
                    f"log never showed {regex.pattern!r}{ending}; log so far:\n{self.log_text()}"
                )
            time.sleep(0.005)

    def log_text(self) -> str:
        return b"".join(self.log_lines).decode("utf-8", "replace")

    def connect(self, timeout: float = 5) -> Client:
        client = Client(socket.create_connection(("127.0.0.1", self.port), timeout=timeout))
        self.clients.append(client)
        return client

    def stop(self, timeout: float = 10, now: bool = False) -> int:
        """Drain and stop it as SIGTERM would (``now``: as a second SIGTERM, at once); its exit status."""
        for client in self.clients:
            client.close()
        self.host.stop_soon()
        if now:
            self.host.stop_soon()
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.host.stop_soon()
            self.thread.join(timeout)
        logger = logging.getLogger("moonlet")
        logger.removeHandler(self._handler)
        logger.setLevel(self._level)
        assert not self.thread.is_alive(), "the host did not stop"
        if self.failure is not None:
            raise self.failure
        assert self.exit_code is not None
        return self.exit_code


@pytest.fixture
def lua_host(tmp_path: Path) -> Iterator:  # type: ignore[type-arg]
    """lua_host(source, options=[...]) runs a Lua snippet that listens (port 0 is fine) in this process, on
    the real clock (:class:`HostServer`); each is stopped at the end of the test."""
    hosts: list[HostServer] = []

    def start(
        source: str, *args: str, options: list[str] | None = None, ready: re.Pattern[bytes] = LISTENING
    ) -> HostServer:
        path = tmp_path / f"app{len(hosts)}.lua"
        path.write_text(textwrap.dedent(source).lstrip("\n"))
        hosts.append(HostServer(path, list(args), options, ready))
        return hosts[-1]

    yield start
    for host in hosts:
        host.stop(now=True)  # (as the process fixtures' SIGKILL: what a test left running is not its subject)


def console(server, command: str) -> str:  # type: ignore[no-untyped-def]
    """What a server process's console answers to ``command`` (through ``moonlet repl -e``)."""
    return subprocess.run(
        [sys.executable, "-m", "runtime", "repl", "-e", command, str(server.proc.pid)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout


def wait_listening(port: int, what: str, timeout: float = 10) -> None:
    """Wait until something accepts on 127.0.0.1:port (a peer server the test started)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"{what} did not start"
            time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[int]:
    _need("redis-server", shutil.which("redis-server") is not None)
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
    )
    wait_listening(port, "redis-server")
    yield port
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def _servers_once() -> Iterator[dict[str, Server]]:
    servers: dict[str, Server] = {}
    yield servers
    for server in servers.values():
        server.stop(signal.SIGKILL)


@pytest.fixture
def lua_server_once(_servers_once: dict[str, Server], tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Like lua_server, but one server per source for the whole module (hypothesis runs many examples)."""

    def start(source: str) -> Server:
        if source not in _servers_once:
            path = tmp_path_factory.mktemp("app") / "app.lua"
            path.write_text(textwrap.dedent(source).lstrip("\n"))
            _servers_once[source] = Server(path, [])
        return _servers_once[source]

    return start


@pytest.fixture
def run_app_once(_servers_once: dict[str, Server]):  # type: ignore[no-untyped-def]
    """Like run_app, but one server per command line for the whole module."""

    def start(app: str, *args: str) -> Server:
        key = " ".join([app, *args])
        if key not in _servers_once:
            _servers_once[key] = Server(Path(app), list(args))
        return _servers_once[key]

    return start


def _need(tool: str, ok: bool) -> None:
    """Skip a test whose peer is missing; in CI (tests/run.sh installs them all) that is a failure."""
    if not ok:
        message = f"{tool} missing (tests/run.sh installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[object]:
    from postgres import Cluster, bindir

    _need("PostgreSQL", bindir() is not None)
    cluster = Cluster()
    yield cluster
    cluster.cleanup()


@pytest.fixture(scope="session")
def _pg_shared(pg_cluster) -> Iterator[object]:  # type: ignore[no-untyped-def]
    server = pg_cluster.start()
    yield server
    server.stop()


@pytest.fixture
def pg_url(_pg_shared, request) -> str:  # type: ignore[no-untyped-def]
    """A fresh, empty database on the session's PostgreSQL server."""
    name = "t_" + re.sub(r"\W", "_", request.node.name)[:50].lower()
    return str(_pg_shared.new_database(name))


@pytest.fixture
def pg_server(pg_cluster) -> Iterator[object]:  # type: ignore[no-untyped-def]
    """A PostgreSQL server of the test's own, to stop and restart."""
    server = pg_cluster.start()
    yield server
    server.stop()


# -- the fast subset ----------------------------------------------------------------------------------------
# A test that starts another process (a server, a real client, a peer) through a fixture, or a script or
# program in its own body, is marked `slow` here: it pays a process start and runs on the real clock (a test
# whose helper starts one and takes seconds is marked by hand). `pytest -m "not slow"` runs the rest, mostly
# in this process (on virtual time, or a Host in a thread): 282 tests in 39 s on this machine;
# `bash tests/run.sh` runs everything.
_PROCESS_FIXTURES = {
    "run_app", "lua_server", "run_app_once", "lua_server_once", "redis_server", "pg_cluster", "pg_server",
    "pg_url", "memcached", "agent", "target",
}  # fmt: skip
_STARTS_A_PROCESS = re.compile(r"\b(run_script|subprocess\.(run|Popen|check_output)|Popen|snmp|repl)\(")


# -- the engine matrix ---------------------------------------------------------------------------------
# The suite runs on the engine MOONLET_ENGINE names (lua54 when unset; .ci/run runs it on both). A test of
# what only Lua 5.4 has (64-bit integers, its syntax, an app that declares `moonlet: engine lua54`, the hook
# machinery it reads) carries `@pytest.mark.lua54("why")` and is skipped on LuaJIT with that reason; a module
# that runs no engine (lint, layout, packaging) carries `one_engine` and runs on the Lua 5.4 leg only.
ENGINE = engine.requested()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        needs = item.get_closest_marker("lua54")
        if needs is not None and ENGINE != "lua54":
            item.add_marker(pytest.mark.skip(reason=f"Lua 5.4 only: {needs.args[0] if needs.args else '?'}"))
        if item.get_closest_marker("one_engine") and ENGINE != "lua54":
            item.add_marker(pytest.mark.skip(reason="runs no engine: checked on the Lua 5.4 leg"))
        function = getattr(item, "function", None)
        if function is None or item.get_closest_marker("slow"):
            continue
        uses = set(getattr(item, "fixturenames", ()))
        if uses & _PROCESS_FIXTURES or _STARTS_A_PROCESS.search(inspect.getsource(function)):
            item.add_marker(pytest.mark.slow)


# -- TLS certificates, made by openssl for the session -------------------------------------------
def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def issue(d: Path, name: str, cn: str, san: str) -> None:
    """A certificate for ``cn`` (and the subjectAltNames ``san``) signed by the test CA in ``d``."""
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
            f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)  # fmt: skip
    (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=d)  # fmt: skip


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test CA (ca.pem) and certificates it signed: server (localhost, 127.0.0.1), other (other.test and
    *.wild.test, for SNI) and client (a client certificate), each NAME.pem with NAME.key."""
    d = tmp_path_factory.mktemp("certs")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
            "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=moonlet test CA", cwd=d)  # fmt: skip
    issue(d, "server", "localhost", "DNS:localhost,IP:127.0.0.1")
    issue(d, "other", "other.test", "DNS:other.test,DNS:*.wild.test")
    issue(d, "client", "a client", "DNS:client.test")
    return d
