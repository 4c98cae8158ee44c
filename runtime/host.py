"""The host: one worker process serving one Lua app.

Assembles the pieces (Lua state, kernel, services), runs the app's main chunk as the first task, serves until
there is nothing left to do or a signal arrives, and drains gracefully:

* SIGTERM or SIGINT: stop accepting; reads that would wait for new bytes return ``nil, "closed"`` so handlers
  finish what they are doing, write their answers and end; after ``drain_timeout`` whatever is left is closed
  (buffered output is still sent). Exit status 0. A second signal stops at once.
* An app that listens on nothing and has no task left ends by itself (so ``moonlet run`` runs client scripts).
* A Lua error in the main chunk ends the process with status 1 and the traceback in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import resource
import signal
import threading
from pathlib import Path
from typing import Literal

import uvloop

from runtime.config import Limits, PoolConfig
from runtime.console.files import remove_console_files
from runtime.console.server import ConsoleContext, ConsoleService
from runtime.errors import AppLoadError
from runtime.kernel.core import Kernel, one_line
from runtime.kernel.task import Task
from runtime.listeners import ENV as SUPERVISOR_ENV
from runtime.listeners import adopt_orphans
from runtime.lua.interrupt import new_interrupter
from runtime.lua.state import LUAJIT, memory_room_kb, new_lua_runtime, watch_memory
from runtime.lua.stdlib import bootstrap
from runtime.services.clock import LagMonitor
from runtime.services.registry import Services, wire_services
from runtime.services.stream import StreamService
from runtime.services.tasks import StallGuard
from runtime.threadclock import ThreadClock
from runtime.virtualtime import VirtualTimeLoop

log = logging.getLogger("moonlet")

# Lua instructions between two stall checks in coroutines that carry a periodic count hook (those the app
# creates itself; every coroutine where the stall guard cannot arm hooks): each check is one call into the
# host (~0.3 us).
STALL_CHECK_EVERY = 1_000_000


class _Main:
    """Owner of the task that runs the app's main chunk."""

    def __init__(self, host: Host) -> None:
        self._host = host

    def describe(self) -> str:
        return f"main chunk of {self._host.app_path}"

    def task_exited(self, task: Task, ok: bool, error: bytes | None) -> None:
        if not ok:
            log.error("app failed: %s", one_line(error))
            self._host.fail()
        elif self._host.engine is not None:  # the load generator or test runner is done: so is the process
            self._host.finish()


class _MetricsListener:
    """The task that opens ``--metrics``' listener: a failure to (a port in use) stops the server."""

    def __init__(self, host: Host) -> None:
        self._host = host

    def describe(self) -> str:
        return "the --metrics listener"

    def task_exited(self, task: Task, ok: bool, error: bytes | None) -> None:
        if not ok:
            first = (error or b"failed").partition(b"\n")[0]  # (its message, not the traceback)
            log.error("%s", first.decode("utf-8", "replace"))
            self._host.fail()


class Host:
    def __init__(
        self,
        app_path: str,
        app_args: list[str],
        limits: Limits | None = None,
        *,
        pools: dict[str, PoolConfig] | None = None,
        engine: tuple[str, dict[str, float | int | str | None]] | None = None,
        console: bool = True,
        console_tcp: int | None = None,
        metrics: tuple[str, int] | None = None,
        virtual_time: bool | Literal["jumping"] = False,
    ) -> None:
        self.console_tcp = console_tcp
        self.metrics = metrics  # --metrics: where the exposition listens (host, port)
        # True: run on the loop whose clock tests can make jump (moonlet test); "jumping": that loop, jumping
        # from the start (a whole app in virtual time: the in-process test harness, tests/conftest.py)
        self.virtual_time = virtual_time
        self.console_wanted = console
        self.app_path = app_path
        self.pools = pools
        # a stdlib module whose main(script_main, options, ...) runs the app's main chunk and then does its
        # job (moonlet bench's load generator, moonlet test's runner); None to serve the app itself
        self.engine = engine
        self.app_args = app_args
        self.limits = limits or Limits()
        self.exit_code = 0
        self._done: asyncio.Future[None] | None = None
        self._stopping = False
        self.stream: StreamService | None = None
        self.kernel: Kernel | None = None
        self.console: ConsoleService | None = None
        self.services: Services | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # (while it serves: stop_soon)

    def run(self) -> int:
        """Serve the app until it ends or is stopped; return the process exit status."""
        raise_file_limit()
        if not Path(self.app_path).is_file():
            raise AppLoadError(f"no such app file: {self.app_path}")
        jumping = self.virtual_time == "jumping"
        factory = (lambda: VirtualTimeLoop(jumping=jumping)) if self.virtual_time else uvloop.new_event_loop
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(self._serve())
        return self.exit_code

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        kernel = self.kernel = Kernel(loop.call_soon)
        services = wire_services(kernel, loop, self.limits, self.app_path, self.pools)
        self.services = services
        self.stream, tasks = services.stream, services.tasks
        if isinstance(loop, VirtualTimeLoop):
            loop.in_flight = services.in_flight
            loop.waits_on_io = services.waits_on_io

        def running() -> str | None:  # (asked from the lag monitor's watchdog thread)
            task = kernel.current
            return task.describe() if task is not None else None

        # (the signal handlers below are not added yet: the loop's signal socket is known once they are)
        lag_args = (loop, self.limits.loop_lag_warn, running)
        loop_clock = ThreadClock.here()  # (budgets count the loop thread's work: runtime/threadclock.py)

        lua = new_lua_runtime(self.limits.lua_max_memory)
        watch_memory(lua, _exit_to_be_replaced)
        budget = self.limits.stall_budget
        interrupter = new_interrupter(lua) if budget > 0 else None
        if budget > 0 and interrupter is None:
            log.warning("stall budget: cannot arm hooks in this lupa build; every coroutine checks instead")
        unstoppable = _exit_to_be_replaced if LUAJIT else None
        stall_guard = (
            StallGuard(kernel, budget, interrupter, loop_clock, unstoppable)
            if interrupter is not None
            else None
        )
        tasks.guard = stall_guard
        lua_limits = {
            "max_line": self.limits.max_line,
            "max_read": self.limits.max_read,
            "write_high_water": self.limits.write_high_water,
            "stall_check_every": STALL_CHECK_EVERY if budget > 0 else 0,
            "stall_armed": 1 if stall_guard is not None else 0,  # tasks wait to be armed (no periodic hook)
            "memory_room_kb": memory_room_kb(self.limits.lua_max_memory),  # (LuaJIT: runtime/lua/state.py)
        }
        boot = bootstrap(lua, kernel.call, lua_limits, self.app_path, self.app_args)
        kernel.set_body(boot[b"body"], boot[b"misuse"], boot[b"task_body"], boot[b"ended"])
        for service in services.all():
            service.bind(lua)  # replies are built in the main Lua state
        main, error = boot[b"load_main"]()
        if main is None:
            raise AppLoadError((error or b"cannot load the app").decode("utf-8", "replace"))

        kernel.on_idle = self._check_idle
        # (signals reach the main thread only: a host in another thread, as the in-process test harness runs
        # one, is stopped with stop_soon)
        signals = threading.current_thread() is threading.main_thread()
        self._loop = loop
        for sig in (signal.SIGTERM, signal.SIGINT) if signals else ():
            loop.add_signal_handler(sig, self._on_signal, sig)
        if signals:  # logrotate's convention: the log files are reopened
            loop.add_signal_handler(signal.SIGUSR1, self._reopen)
        if signals and supervised():  # the supervisor asks a worker to serve a dead worker's share meanwhile
            loop.add_signal_handler(signal.SIGUSR2, self._adopt_orphans)
        lag = LagMonitor(
            *lag_args,
            clock=loop_clock,
            block_limit=self.limits.block_limit,
            drain_timeout=self.limits.drain_timeout,
            signal_fd=signal_socket() if signals else None,
            before_exit=lambda: remove_console_files(os.getpid()),
            figures=services.metrics.figures,
        )
        console = None
        if self.console_wanted and self.engine is None:
            context = ConsoleContext(boot=boot, services=services, lag=lag, lua=lua)
            console = ConsoleService(kernel, loop, self.app_path, context, self.console_tcp)
            try:
                await console.start()
            except OSError as e:
                log.warning("no console: %s", e)
                console.stop()  # (what it opened before failing)
                console = None
        self.console = console
        lag.start()
        if stall_guard is not None:
            stall_guard.start()
        try:
            args = [a.encode() for a in self.app_args]
            if self.engine is None:
                kernel.main = kernel.spawn(_Main(self), main, *args)
                if self.metrics is not None:
                    listen = boot[b"stdlib"](b"moonlet.metrics")[b"_listen"]
                    kernel.spawn(_MetricsListener(self), listen, self.metrics[0].encode(), self.metrics[1])
            else:
                module, given = self.engine
                engine = boot[b"stdlib"](module.encode())[b"_main"]
                options = lua.table_from(
                    {
                        k.encode(): v.encode() if isinstance(v, str) else v
                        for k, v in given.items()
                        if v is not None
                    }
                )
                kernel.main = kernel.spawn(_Main(self), engine, main, options, *args)
            self._check_idle()
            await self._done
        finally:
            lag.stop()
            if stall_guard is not None:
                stall_guard.stop()
            if console is not None:
                console.stop()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2) if signals else ():
                loop.remove_signal_handler(sig)
            for each in services.all():
                await each.close()
            await asyncio.sleep(0)  # let transports flush and close

    def _check_idle(self) -> None:
        """An app with no task left and no service that keeps it alive (a listener, a timer) has finished."""
        assert self.kernel is not None and self.services is not None
        if self.kernel.live == 0 and not any(s.keeps_alive() for s in self.services.all()):
            self._finish()

    def finish(self) -> None:
        self._finish()

    def stop_soon(self) -> None:
        """From another thread: drain and stop as on SIGTERM (a second call stops at once)."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # (it has just ended: its loop is closed)
                loop.call_soon_threadsafe(self._on_signal, signal.SIGTERM)

    def _finish(self) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    def fail(self) -> None:
        self.exit_code = 1
        self._finish()

    def _on_signal(self, sig: int) -> None:
        assert self.stream is not None
        if self._stopping:
            if supervised():
                # A signal sent to the whole process group (Ctrl-C in a terminal, `timeout`, `kill -TERM
                # -PGID`, systemd's control group) reaches this worker and its supervisor, which forwards it:
                # one shutdown. Stopping at once is the supervisor's call (it kills its workers).
                log.debug("%s: already draining", signal.Signals(sig).name)
                return
            log.warning("second %s: stopping now", signal.Signals(sig).name)
            self._finish()
            return
        self._stopping = True
        log.info(
            "%s: draining (no new connections; up to %.3gs for handlers to finish)",
            signal.Signals(sig).name,
            self.limits.drain_timeout,
        )
        assert self.services is not None
        for service in self.services.all():
            service.drain()
        if self.console is not None:
            self.console.stop_tcp()
        asyncio.get_running_loop().call_later(self.limits.drain_timeout, self._drain_expired)
        self._check_idle()

    def _reopen(self) -> None:
        assert self.services is not None
        for service in self.services.all():
            service.reopen()

    def _adopt_orphans(self) -> None:
        if self._stopping or self.stream is None:
            return
        stream = self.stream
        try:
            adopted = adopt_orphans()
        except OSError as e:
            log.warning("cannot take over a dead worker's connections: %s", e)
            return
        stream.release_adopted({slot for _, _, slot, _ in adopted})
        for host, port, slot, sock in adopted:
            stream.background.run(stream.adopt(host, port, slot, sock))

    def _drain_expired(self) -> None:
        assert self.stream is not None
        if self._done is not None and not self._done.done():
            kernel = self.kernel
            log.warning(
                "drain timeout: %d tasks still running, %d connections open; ending them",
                kernel.live if kernel is not None else 0,
                len(self.stream.connections),
            )
            self._finish()


def _exit_to_be_replaced(what: str) -> None:
    """LuaJIT's last resorts, against a loop no hook can stop (runtime/services/tasks.py) and live data no
    task holds filling the heap (runtime/lua/state.py): say what happened, and exit as a blocked loop does
    (status 70), so that the supervisor replaces the worker."""
    log.critical("%s; exiting so that the worker is replaced", what)
    with contextlib.suppress(Exception):
        remove_console_files(os.getpid())
    logging.shutdown()
    os._exit(LagMonitor.BLOCKED_EXIT)


def signal_socket() -> int | None:
    """The socket the event loop reads arriving signals from (set by add_signal_handler), or None."""
    try:
        fd = signal.set_wakeup_fd(-1)
    except ValueError:  # (not the main thread)
        return None
    if fd < 0:
        return None
    signal.set_wakeup_fd(fd)  # (put back as it was)
    return fd


def supervised() -> bool:
    """This process is a worker of `moonlet run --workers N` (see runtime/supervisor.py)."""
    return bool(os.environ.get(SUPERVISOR_ENV))


def raise_file_limit() -> None:
    """Every connection is a file descriptor: allow as many as the hard limit does."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def limits_from(**overrides: float | str | None) -> Limits:
    """Limits with some fields overridden (ignores None values)."""
    return dataclasses.replace(Limits(), **{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]


__all__ = ["Host", "limits_from"]
