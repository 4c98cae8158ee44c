"""The console: a Lua REPL inside the live server, reached by ``moonlet repl``.

Where: a Unix socket ``<runtime dir>/<pid>.sock`` (runtime dir: ``$XDG_RUNTIME_DIR/moonlet`` or
``/tmp/moonlet-<uid>``, mode 0700), the socket mode 0600 whatever the umask, and beside it ``<pid>.json``
saying which app runs there (``moonlet repl`` lists and picks them). A peer whose uid (``SO_PEERCRED``) is
not the server's is refused and logged. Every request is logged with the peer's uid and pid.

Protocol: one JSON object per line each way. Requests: ``{"op": "eval", "code": ...}``, ``{"op": "check",
"code": ...}`` (is the chunk complete?), ``{"op": "complete", "text": ...}``, ``{"op": "cancel"}``,
``{"op": "command", "line": "connections"}``. Replies: ``{"ok": true, "values": [...]}`` (each value
written as Lua source, see ``stdlib_lua/moonlet/_show.lua``), ``{"ok": false, "error": traceback}``, or a
command's text; before it, ``{"print": text}`` for each ``print`` of the chunk.

A chunk runs as a task (so it may wait: ``db.query``, ``sleep``, ``net.connect`` work at the prompt), in an
environment per session that reads through to the app's globals (``x = 1`` stays in the session,
``_G.x = 1`` sets the app's global); the stall budget stops one that spins; ``cancel`` ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import logging
import os
import secrets
import socket
import struct
import time
from pathlib import Path
from typing import Any

from runtime.console import memory
from runtime.console.files import process_start, remove_stale, runtime_dir
from runtime.kernel.core import Kernel
from runtime.kernel.task import Extra, Task
from runtime.lua import engine
from runtime.services.registry import Services, runtime_statistics

MAX_BACKLOG = 1024 * 1024  # bytes of print and log output waiting for a session before more is dropped
GC_BUDGET = 1.0  # seconds of CPU the console's gc may spend on the Lua heap before it says it stopped

log = logging.getLogger("moonlet")

# A TCP console peer before its token: a few KiB, a few seconds, and a few such peers at once (any local
# user can connect to 127.0.0.1); after it, requests up to MAX_REQUEST bytes.
MAX_AUTH_REQUEST = 4096
AUTH_TIMEOUT = 5.0
MAX_UNAUTHENTICATED = 8
MAX_REQUEST = 1 << 20


def waiting_on(task: Task) -> str:
    """What a task waits for, in the app's terms (for \\tasks)."""
    waiting = task.waiting
    kind = type(waiting).__name__
    if kind == "Connection":  # (left set after a connection's wait: it is one if the connection says so)
        conn: Any = waiting
        if conn.reader is task:
            return f"waiting to read from {conn.describe()}"
        if conn.writer is task:
            return f"waiting for the peer to take output on {conn.describe()}"
        waiting = None
    if waiting is None:
        return "sleeping or waiting with a timeout" if task.timer is not None else "running or ready to run"
    if kind == "_Parked":
        return "waiting on a queue, semaphore, event, lock or task (task.wait, sync.*)"
    if kind == "RequestWorkers":
        return "an idle http worker, waiting for a connection with bytes"
    if kind == "Datagrams":
        return "waiting for a datagram"
    return f"waiting on {kind}"


class ConsoleSession(asyncio.Protocol):
    """One attached ``moonlet repl``; also the owner of the chunks it runs."""

    def __init__(self, console: ConsoleService, tcp: bool = False) -> None:
        self.console = console
        self.tcp = tcp  # a TCP session must first send {"op": "auth", "token": ...}
        self.authenticated = not tcp
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.env: Any = None
        self.running: Task | None = None
        self.peer = "?"
        self.following_log = False
        self.dropped = 0  # print and log lines not sent while the console was not reading

    # -- protocol ------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.tcp:
            peer = transport.get_extra_info("peername")
            self.peer = f"tcp {peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "tcp"
            waiting = self.console.unauthenticated
            if len(waiting) >= MAX_UNAUTHENTICATED:
                self.console.refuse_crowd(self.peer)
                transport.close()
                self.transport = None
                return
            waiting.add(self)
            self.console.loop.call_later(AUTH_TIMEOUT, self._auth_expired)
            return
        sock = transport.get_extra_info("socket")
        pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        self.peer = f"uid {uid} pid {pid}"
        if uid != os.getuid():
            log.warning("console: refused a peer with %s (the server runs as uid %d)", self.peer, os.getuid())
            transport.close()
            self.transport = None
            return
        log.info("console: attached (%s)", self.peer)
        self.env = self.console.boot[b"console_env"](self)
        self.console.sessions.add(self)

    def _auth_expired(self) -> None:
        if not self.authenticated and self.transport is not None:
            log.warning("console: refused %s (no token within %.0fs)", self.peer, AUTH_TIMEOUT)
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.console.unauthenticated.discard(self)
        if self not in self.console.sessions:
            return  # (refused before it was attached)
        self.console.sessions.discard(self)
        if self.running is not None:
            self.console.kernel.kill(self.running, b"cancelled: the console went away")
        log.info("console: detached (%s)", self.peer)

    def data_received(self, data: bytes) -> None:
        # one request per line; only the new bytes are searched for the line end, and what may wait for
        # one is bounded (a few KiB before the token)
        old = len(self.buffer)
        buffer = self.buffer + data
        pos = 0
        end = buffer.find(b"\n", old)
        while end >= 0:
            line = buffer[pos:end]
            pos = end + 1
            if line.strip():
                try:
                    self.handle(json.loads(line))
                except (ValueError, KeyError, TypeError) as e:
                    self.send({"ok": False, "error": f"bad console request: {e}"})
            if self.transport is None or self.transport.is_closing():
                self.buffer = b""
                return
            end = buffer.find(b"\n", pos)
        self.buffer = buffer[pos:]
        limit = MAX_REQUEST if self.authenticated else MAX_AUTH_REQUEST
        if len(self.buffer) > limit:
            log.warning("console: refused %s (a request over %d bytes)", self.peer, limit)
            self.send({"ok": False, "error": f"a console request is at most {limit} bytes"})
            self.buffer = b""
            if self.transport is not None:
                self.transport.close()

    def send(self, message: dict[str, Any]) -> None:
        if self.transport is not None:
            self.transport.write(json.dumps(message).encode() + b"\n")

    def send_output(self, key: str, text: str) -> None:
        """A ``print`` or log line: dropped (and counted, then said) while more than ``MAX_BACKLOG`` bytes
        wait for a console that is not reading, so a chunk that prints without end cannot grow the server."""
        transport = self.transport
        if transport is None:
            return
        if transport.get_write_buffer_size() > MAX_BACKLOG:
            self.dropped += 1
            return
        self.say_dropped(key)
        self.send({key: text})

    def say_dropped(self, key: str = "print") -> None:
        """The count of lines dropped since the console last read, if any: before the next line, and
        before a chunk's result (a chunk may end while its last lines are being dropped)."""
        if self.dropped:
            note = f"[{self.dropped} lines of output dropped: the console was not reading]\n"
            self.send({key: note if key == "print" else note.rstrip()})
            self.dropped = 0

    # -- requests ------------------------------------------------------------------------------------
    def handle(self, req: dict[str, Any]) -> None:
        op = req["op"]
        boot = self.console.boot
        if not self.authenticated:
            if op == "auth" and secrets.compare_digest(str(req.get("token", "")), self.console.token):
                self.authenticated = True
                self.console.unauthenticated.discard(self)
                self.env = boot[b"console_env"](self)
                self.console.sessions.add(self)
                log.info("console: attached (%s, token accepted)", self.peer)
                self.send({"ok": True, "values": []})
            else:
                log.warning("console: refused %s (no valid token)", self.peer)
                if self.transport is not None:
                    self.transport.close()
            return
        if op == "cancel":
            if self.running is not None:
                self.console.kernel.kill(self.running, b"cancelled at the console")
            return
        if op == "check":
            job, err, incomplete = self._compile(req["code"])
            if job is not None:
                boot[b"console_drop"](job)
            self.send({"complete": not incomplete})
            return
        if op == "complete":
            names = boot[b"console_complete"](self.env, req["text"].encode())
            self.send({"names": [n.decode() for n in names.values()]})
            return
        log.info("console (%s): %s", self.peer, (req.get("code") or req.get("line") or op)[:200])
        if self.running is not None:
            self.send({"ok": False, "error": "a chunk is still running (cancel it with Ctrl-C)"})
            return
        if op == "eval":
            job, err, _ = self._compile(req["code"])
            if job is None:
                self.send({"ok": False, "error": err})
                return
            self._run(job)
        elif op == "command":
            self.console.command(self, req["line"])
        else:
            self.send({"ok": False, "error": f"unknown op {op!r}"})

    def _compile(self, code: str) -> tuple[int | None, str, bool]:
        r = self.console.boot[b"console_compile"](self.env, code.encode())
        if isinstance(r, tuple):
            return None, (r[1] or b"").decode("utf-8", "replace"), bool(r[2]) if len(r) > 2 else False
        return int(r), "", False

    def _run(self, job: int) -> None:
        kernel = self.console.kernel
        task = kernel.spawn(self, job, False, body=kernel.job_body, extra=Extra("console chunk"))
        self.running = task if task.co is not None else None  # (it may have ended already)

    def print_text(self, text: bytes) -> None:
        """``print`` in a chunk of this session (or a function it defined): the text comes back here."""
        self.send_output("print", text.decode("utf-8", "replace"))

    # -- owner of the chunks -------------------------------------------------------------------------
    def describe(self) -> str:
        return f"console chunk ({self.peer})"

    def task_exited(self, task: Task, ok: bool, error: bytes | None) -> None:
        self.running = None
        self.say_dropped()
        result = task.extra.result if task.extra is not None else None
        if ok and result is not None and result[1] is not None:
            shown = self.console.boot[b"console_show"](result[1])
            self.send({"ok": True, "values": [v.decode("utf-8", "replace") for v in shown.values()]})
        else:
            text = error.decode("utf-8", "replace") if isinstance(error, bytes) else "failed"
            self.send({"ok": False, "error": text})


class _LogForwarder(logging.Handler):
    def __init__(self, console: ConsoleService) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        line = f"{time.strftime('%H:%M:%S')} {record.levelname} {record.name}: {record.getMessage()}"
        for session in list(self.console.sessions):
            if session.following_log:
                session.send_output("log", line)


@dataclasses.dataclass(frozen=True)
class ConsoleContext:
    """What the host hands the console: the live server's parts it shows and drives."""

    boot: Any  # the bootstrap's table (console_env, console_compile, console_show, reload_job, ...)
    services: Services
    lag: Any  # the lag monitor (worst loop lag, for \\stats)
    lua: Any  # the main Lua state


class ConsoleService:
    def __init__(
        self,
        kernel: Kernel,
        loop: asyncio.AbstractEventLoop,
        app_path: str,
        context: ConsoleContext,
        tcp_port: int | None = None,
    ) -> None:
        self.kernel = kernel
        self.loop = loop
        self.app_path = app_path
        self.boot: Any = context.boot
        self.services: Services | None = context.services
        self.lag: Any = context.lag
        self.lua: Any = context.lua
        self.sessions: set[ConsoleSession] = set()
        self.server: asyncio.AbstractServer | None = None
        self.path: Path | None = None
        self.started = time.time()
        self._forwarder = _LogForwarder(self)
        self.tcp_port = tcp_port  # --console-tcp: also listen on 127.0.0.1 (with a token)
        self.token = secrets.token_hex(16)
        self.tcp_server: asyncio.AbstractServer | None = None
        self.tcp_closed = False
        self.unauthenticated: set[ConsoleSession] = set()  # TCP peers that have not sent the token yet
        self._crowd_logged = 0.0

    async def start(self) -> None:
        directory = runtime_dir()
        self.path = directory / f"{os.getpid()}.sock"
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        old = os.umask(0o177)  # the socket is created 0600 whatever the umask ...
        try:
            self.server = await self.loop.create_unix_server(lambda: ConsoleSession(self), str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)  # ... and stays so
        info: dict[str, Any] = {
            "pid": os.getpid(),
            "process_start": process_start(os.getpid()),  # (tells this process from a later one with its pid)
            "app": self.app_path,
            "started": self.started,
        }
        if os.environ.get("MOONLET_WORKER"):  # one of a supervisor's workers: moonlet repl picks worker 1
            info["worker"], info["supervisor"] = int(os.environ["MOONLET_WORKER"]), os.getppid()
        if self.tcp_port is not None:
            port = self.tcp_port
            worker = int(os.environ.get("MOONLET_WORKER") or 1)
            if port:
                port += worker - 1  # worker N of a supervisor: PORT + N - 1, so each is reachable
            if await self._open_tcp(port, directory):
                info["tcp"] = self.tcp_server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            else:  # (the worker it replaces still drains: its console closes as the drain begins)
                log.warning("console: tcp 127.0.0.1:%d is in use; trying again every second", port)
                self.loop.create_task(self._retry_tcp(port, directory))
        directory.joinpath(f"{os.getpid()}.json").write_text(json.dumps(info))
        remove_stale(directory)  # (the files of processes killed outright)
        logging.getLogger("moonlet").addHandler(self._forwarder)
        log.info("console on %s (moonlet repl %d)", self.path, os.getpid())

    async def _open_tcp(self, port: int, directory: Path) -> bool:
        try:
            self.tcp_server = await self.loop.create_server(
                lambda: ConsoleSession(self, tcp=True), "127.0.0.1", port
            )
        except OSError:
            return False
        bound = self.tcp_server.sockets[0].getsockname()[1]
        token_path = directory / f"{os.getpid()}.token"
        fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.token)
        log.info("console also on tcp 127.0.0.1:%d (token in %s)", bound, token_path)
        return True

    async def _retry_tcp(self, port: int, directory: Path) -> None:
        for _ in range(120):
            await asyncio.sleep(1)
            if self.server is None or self.tcp_closed:
                return
            if await self._open_tcp(port, directory):
                info = json.loads(directory.joinpath(f"{os.getpid()}.json").read_text())
                info["tcp"] = port
                directory.joinpath(f"{os.getpid()}.json").write_text(json.dumps(info))
                return
        log.warning("console: gave up on tcp 127.0.0.1:%d", port)

    def refuse_crowd(self, peer: str) -> None:
        """A TCP peer refused: MAX_UNAUTHENTICATED others wait to authenticate (logged once a second)."""
        now = time.monotonic()
        if now - self._crowd_logged >= 1:
            self._crowd_logged = now
            log.warning(
                "console: refused %s (%d peers are waiting to authenticate)", peer, MAX_UNAUTHENTICATED
            )

    def stop_tcp(self) -> None:
        """The server drains: its TCP console port goes to the worker that replaces it (a reload)."""
        self.tcp_closed = True
        if self.tcp_server is not None:
            self.tcp_server.close()
            self.tcp_server = None

    def stop(self) -> None:
        logging.getLogger("moonlet").removeHandler(self._forwarder)
        if self.server is not None:
            self.server.close()
        if self.tcp_server is not None:
            self.tcp_server.close()
        if self.path is not None:
            for p in (self.path, self.path.with_suffix(".json"), self.path.with_suffix(".token")):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
        for session in [*self.sessions, *self.unauthenticated]:
            if session.transport is not None:
                session.transport.close()

    # -- backslash commands --------------------------------------------------------------------------
    def command(self, session: ConsoleSession, line: str) -> None:
        name, _, arg = line.strip().partition(" ")
        handler = getattr(self, f"_cmd_{name}", None)
        if handler is None:
            session.send({"ok": False, "error": f"unknown command \\{name} (\\help lists them)"})
            return
        handler(session, arg.strip())

    def _cmd_help(self, session: ConsoleSession, _arg: str) -> None:
        session.send({"text": HELP})

    def _rows(self, topic: str) -> list[str]:
        """Every service's lines for a listing (the service contract's console_rows)."""
        assert self.services is not None
        return [row for service in self.services.all() for row in service.console_rows(topic)]

    def _tasks(self) -> list[Task]:
        """Every live task: the kernel's, and the handlers of open connections."""
        assert self.services is not None
        return list(self.kernel.tasks) + self.services.stream.handlers()

    def _cmd_connections(self, session: ConsoleSession, _arg: str) -> None:
        session.send({"text": "\n".join(self._rows("connections")) or "no connections"})

    def _cmd_tasks(self, session: ConsoleSession, _arg: str) -> None:
        assert self.services is not None
        rows = []
        for task in self._tasks():
            rows.append(f"{id(task):x}  {task.describe()}  {waiting_on(task)}")
        rows += self._rows("tasks")  # (timers)
        session.send({"text": "\n".join(rows) or "no tasks"})

    def _cmd_pools(self, session: ConsoleSession, _arg: str) -> None:
        session.send({"text": "\n".join(self._rows("pools"))})

    def _cmd_stats(self, session: ConsoleSession, _arg: str) -> None:
        assert self.services is not None
        stats: dict[str, object] = {
            "uptime_s": round(time.time() - self.started, 1),
            "engine": engine.current(),
        }
        stats |= runtime_statistics(self.kernel, self.services)  # (what the metrics' gauges are too)
        stats |= {
            "process_memory_bytes": memory.resident_bytes(),
            "python_heap_blocks": memory.python_heap_blocks(),
            "c_heap_bytes": memory.c_heap_bytes(),
            "worst_loop_lag_ms": round(self.lag.worst * 1000, 1) if self.lag is not None else None,
        }
        session.send({"text": "\n".join(f"{k}: {v}" for k, v in stats.items())})

    def _cmd_metrics(self, session: ConsoleSession, _arg: str) -> None:
        """The Prometheus exposition moonlet.metrics answers (the app's metrics and the runtime's, of every
        worker), run as a chunk: its module loads on first use like any."""
        job, err, _ = session._compile(METRICS_CHUNK)
        if job is None:
            session.send({"ok": False, "error": err})
            return
        session._run(job)

    def _cmd_gc(self, session: ConsoleSession, _arg: str) -> None:
        """A full collection of the Lua heap (in steps, for at most ``GC_BUDGET`` seconds of CPU) and of
        Python's cycle collector, and what each freed."""
        lua_before = self.lua.get_memory_used() if self.lua is not None else 0
        complete = True
        if self.lua is not None:
            complete = bool(self.boot[b"collect"](GC_BUDGET))
            self.boot[b"flush_released"]()  # (the handles their tables held: kernel/handles.py)
        lua_after = self.lua.get_memory_used() if self.lua is not None else 0
        blocks_before = memory.python_heap_blocks()
        unreachable = gc.collect()
        lines = [
            f"lua_memory_bytes: {lua_before} -> {lua_after}"
            + (
                ""
                if complete
                else f" (stopped after {GC_BUDGET:g} s of CPU: the collector goes on as the app runs)"
            ),
            f"python_heap_blocks: {blocks_before} -> {memory.python_heap_blocks()}"
            f" ({unreachable} unreachable objects)",
        ]
        session.send({"text": "\n".join(lines)})

    def _cmd_kill(self, session: ConsoleSession, arg: str) -> None:
        assert self.services is not None
        for service in self.services.all():  # (a row a service listed: see the contract)
            done = service.kill(arg)
            if done is not None:
                session.send({"text": done})
                return
        for task in self._tasks():
            if f"{id(task):x}" == arg:
                self.kernel.kill(task, b"cancelled at the console")
                session.send({"text": f"cancelled {task.describe()}"})
                return
        session.send({"ok": False, "error": f"no connection or task {arg!r} (see \\connections, \\tasks)"})

    def _cmd_reload(self, session: ConsoleSession, arg: str) -> None:
        if not arg:
            session.send({"ok": False, "error": "usage: \\reload MODULE"})
            return
        session._run(int(self.boot[b"reload_job"](arg.encode())))

    def _cmd_log(self, session: ConsoleSession, arg: str) -> None:
        session.following_log = arg != "off"
        session.send(
            {"text": "following the server log (\\log off to stop)" if session.following_log else "ok"}
        )


METRICS_CHUNK = 'local text = require("moonlet.metrics").text() print((text:gsub("\\n$", "")))'

HELP = """\\connections      every connection: peer, age, bytes, what its coroutine waits on
\\tasks            tasks and timers
\\pools            thread pools and their queues
\\stats            uptime, tasks, connections, memory (Lua, process, the Python and C heaps), worst loop lag
\\metrics          the Prometheus metrics of every worker (moonlet.metrics: the app's and the runtime's)
\\gc               a full collection of the Lua and Python heaps; what each freed
\\kill ID          close a connection (stream or HTTP) or cancel a task (ids from \\connections, \\tasks)
\\reload MODULE    load a Lua module again (later requires get it; connections stay)
\\log [off]        follow the server log
Anything else is Lua, run in the server: `expr` and `return expr` print; waiting calls work."""
