"""Thread pools: blocking and CPU-heavy work off the event loop.

A pool is a few threads, each with its own Lua state (built by the same bootstrap, without the door to the
host), fed from one queue. lupa releases the GIL while Lua runs, so Lua jobs on two threads use two cores.
A job is either a Lua function (``pool.run(module, fn, ...)``: the module is found the way the app's own
``require`` finds it) or a Python host function registered by the application (``pool.call(name, ...)``,
see runtime/hostfn.py). Only plain values cross (runtime/lua/values.py).

The calling coroutine is suspended until the job's results come back through
``loop.call_soon_threadsafe``. A pool's queue is bounded: past it ``pool.run`` returns ``nil, "busy"`` at
once. A job past its timeout is answered ``nil, "timeout"`` at once, and a Lua job is also stopped in its
thread by a count hook; a Python host function cannot be stopped and runs to its end (its result dropped).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

from runtime import hostfn
from runtime.config import Limits
from runtime.kernel.core import SUSPEND, Kernel
from runtime.kernel.ops import Op
from runtime.kernel.task import Task
from runtime.lua.state import LuaError, new_lua_runtime
from runtime.lua.stdlib import bootstrap
from runtime.lua.values import NotPlainError, from_plain, to_plain
from runtime.threads import lower_this_thread

log = logging.getLogger("moonlet")

_BUSY = (None, b"busy")
_TIMEOUT = (None, b"timeout")


@dataclass(frozen=True)
class PoolConfig:
    name: str
    size: int
    queue: int  # jobs waiting beyond the running ones before `busy`
    timeout: float  # seconds per job (math.inf: none)


def default_pools() -> dict[str, PoolConfig]:
    cores = os.cpu_count() or 1
    return {
        "cpu": PoolConfig("cpu", cores, 256 * cores, 60.0),
        "io": PoolConfig("io", 32, 4096, 60.0),
    }


class Job:
    __slots__ = ("args", "deadline", "done", "function", "module", "pool", "task", "timer")

    def __init__(self, pool: Pool, task: Task, module: str | None, function: str, args: list[Any]) -> None:
        self.pool = pool
        self.task = task
        self.module = module  # None for a Python host function
        self.function = function
        self.args = args
        self.deadline = math.inf
        self.done = False
        self.timer: asyncio.TimerHandle | None = None


class _Worker:
    """One pool thread's own Lua state, made on first use in that thread."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.deadline = math.inf
        self._run_job: Any = None
        self._lua: Any = None

    def expired(self) -> bool:
        return time.monotonic() > self.deadline

    def run(self, job: Job) -> tuple[bool, list[Any] | bytes]:
        self.deadline = job.deadline
        try:
            if job.module is None:
                return True, self._call_python(job)
            return self._call_lua(job)
        except NotPlainError as e:
            return False, f"{job.function}: {e}".encode()
        except LuaError as e:  # raised outside the job's xpcall: out of memory, or the deadline
            return False, str(e).encode()
        except Exception as e:  # a host function raised
            return False, f"{job.function}: {type(e).__name__}: {e}".encode()
        finally:
            self.deadline = math.inf

    def _call_python(self, job: Job) -> list[Any]:
        fn = hostfn.lookup(job.function)
        result = fn(*job.args)
        values = list(result) if isinstance(result, tuple) else [result]
        return [to_plain(v) for v in values]

    def _call_lua(self, job: Job) -> tuple[bool, list[Any] | bytes]:
        if self._run_job is None:
            pool = self.pool
            self._lua = new_lua_runtime(pool.limits.lua_max_memory)
            boot = bootstrap(self._lua, None, {"stall_check_every": 0}, pool.app_path, [])
            self._run_job = boot[b"run_job"]
        lua = self._lua
        args = lua.table_from([from_plain(lua, a) for a in job.args])
        assert job.module is not None
        r = self._run_job(job.module.encode(), job.function.encode(), args, len(job.args), self.expired)
        values = list(r) if isinstance(r, tuple) else [r]
        if values[0] is not True:
            return False, values[1] if len(values) > 1 and isinstance(values[1], bytes) else b"job failed"
        return True, [to_plain(v) for v in values[1:]]


class Pool:
    def __init__(self, config: PoolConfig, service: PoolService) -> None:
        self.config = config
        self.service = service
        self.limits = service.limits
        self.app_path = service.app_path
        self.jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.pending = 0  # queued or running (touched on the loop thread only)
        self.threads: list[threading.Thread] = []

    def submit(self, job: Job) -> bool:
        if self.pending >= self.config.size + self.config.queue:
            return False
        self.pending += 1
        if len(self.threads) < min(self.pending, self.config.size):
            thread = threading.Thread(target=self._work, name=f"moonlet-{self.config.name}", daemon=True)
            self.threads.append(thread)
            thread.start()
        self.jobs.put(job)
        return True

    def _work(self) -> None:
        lower_this_thread()
        worker = _Worker(self)
        call_soon = self.service.loop.call_soon_threadsafe
        while (job := self.jobs.get()) is not None:
            if job.done:  # timed out or its task ended while it waited in the queue
                call_soon(self.service.finished, job, None)
                continue
            outcome = worker.run(job)
            try:
                call_soon(self.service.finished, job, outcome)
            except RuntimeError:  # the loop is closed: shutting down
                return

    def stop(self) -> None:
        for _ in self.threads:
            self.jobs.put(None)


class PoolService:
    """POOL_RUN and POOL_CALL; owns the pools named in the configuration."""

    def __init__(
        self,
        kernel: Kernel,
        loop: asyncio.AbstractEventLoop,
        limits: Limits,
        app_path: str | None,
        pools: dict[str, PoolConfig] | None = None,
    ) -> None:
        self.kernel = kernel
        self.loop = loop
        self.limits = limits
        self.app_path = app_path
        self.lua: Any = None  # the main Lua state, to build replies in (set by the host)
        self.pools = {name: Pool(cfg, self) for name, cfg in (pools or default_pools()).items()}
        kernel.register(Op.POOL_RUN, self._run)
        kernel.register(Op.POOL_CALL, self._call)

    def _run(self, task: Task, where: object, target: object, args: object) -> object:
        if not isinstance(target, bytes) or b"\0" not in target:
            raise TypeError("pool.run: bad target")
        module, function = target.decode().split("\0", 1)
        return self._submit(task, where, module, function, args)

    def _call(self, task: Task, where: object, name: object, args: object) -> object:
        if not isinstance(name, bytes):
            raise TypeError("pool.call: bad name")
        function = name.decode()
        try:
            hostfn.lookup(function)
        except KeyError as e:
            return (None, str(e.args[0]).encode())
        return self._submit(task, where, None, function, args)

    def _submit(self, task: Task, where: object, module: str | None, function: str, args: object) -> object:
        name, timeout = self._where(where, (module is None and function) or None)
        pool = self.pools.get(name)
        if pool is None:
            return (None, f"no pool named '{name}' (configured: {', '.join(self.pools)})".encode())
        try:
            plain = to_plain(args)
        except NotPlainError as e:
            return (None, f"arguments: {e}".encode())
        # args is table.pack(...): {n = count, [1] = ..., ...}, possibly with holes
        packed = plain if isinstance(plain, dict) else {}
        count = packed.get(b"n", 0)
        arg_list = [packed.get(i) for i in range(1, int(count) + 1)] if isinstance(count, int) else []
        job = Job(pool, task, module, function, arg_list)
        timeout = timeout if timeout is not None else pool.config.timeout
        if timeout != math.inf:
            job.deadline = time.monotonic() + timeout
            job.timer = self.loop.call_later(timeout, self._expire, job)
        if not pool.submit(job):
            if job.timer is not None:
                job.timer.cancel()
            return _BUSY
        return SUSPEND

    def _where(self, where: object, host_function: str | None) -> tuple[str, float | None]:
        """The pool (and timeout override) a job goes to: given by Lua, else the host function's own."""
        name: str | None = None
        timeout: float | None = None
        if isinstance(where, bytes) and where:
            text = where.decode()
            name, _, t = text.partition("\0")
            timeout = float(t) if t else None
        if not name:
            name = hostfn.pool_of(host_function) if host_function else "cpu"
        return name, timeout

    def _expire(self, job: Job) -> None:
        if not job.done:
            job.done = True
            self.kernel.resume(job.task, _TIMEOUT)

    def finished(self, job: Job, outcome: tuple[bool, list[Any] | bytes] | None) -> None:
        job.pool.pending -= 1
        if job.timer is not None:
            job.timer.cancel()
        if job.done or outcome is None:
            return
        job.done = True
        ok, value = outcome
        if not ok:
            assert isinstance(value, bytes)
            self.kernel.resume(job.task, (None, value))
            return
        assert isinstance(value, list)
        try:
            reply = tuple(from_plain(self.lua, v) for v in value)
        except NotPlainError as e:
            self.kernel.resume(job.task, (None, f"results: {e}".encode()))
            return
        self.kernel.resume(job.task, reply if len(reply) != 1 else reply[0])

    def stop(self) -> None:
        for pool in self.pools.values():
            pool.stop()


__all__ = ["PoolConfig", "PoolService", "default_pools"]
