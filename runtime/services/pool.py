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
import queue
import threading
import time
import types
from typing import Any, ClassVar

from runtime import hostfn
from runtime.config import Limits, PoolConfig, default_pools
from runtime.kernel.core import SUSPEND, BadRequestError, Kernel
from runtime.kernel.ops import Op
from runtime.kernel.task import Extra, Task
from runtime.lua.state import LuaError, make_room, new_lua_runtime
from runtime.lua.stdlib import bootstrap
from runtime.lua.values import NotPlainError, from_plain, from_plain_in_slices, is_large, plain_size, to_plain
from runtime.services import Defaults
from runtime.services.background import Background
from runtime.services.channels import CLOSED, TIMEOUT, CancelledError, Channel
from runtime.services.metrics import Figures
from runtime.threads import lower_this_thread

log = logging.getLogger("moonlet")

_BUSY = (None, b"busy")
_TIMEOUT = (None, b"timeout")
CHANNEL_BYTES = 256 * 1024  # bytes queued each way between a spawned job and its task (plain_size's rule)


class Job:
    __slots__ = (
        "args", "channel", "deadline", "done", "function", "module", "pool", "queued", "task", "timer",
        "waited",
    )  # fmt: skip

    def __init__(self, pool: Pool, task: Task, module: str | None, function: str, args: list[Any]) -> None:
        self.pool = pool
        self.task = task
        self.module = module  # None for a Python host function
        self.function = function
        self.args = args
        self.deadline = math.inf
        self.done = False
        self.timer: asyncio.TimerHandle | None = None
        self.channel: Channel | None = None  # a spawned job's pipe to its task (pool.spawn)
        self.queued = time.monotonic()
        self.waited = 0.0  # seconds it waited for a thread (set by the thread, read on the loop: metrics)


class _Worker:
    """One pool thread's own Lua state, made on first use in that thread."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.job: Job | None = None  # the job running in this thread
        self._run_job: Any = None
        self._lua: Any = None

    def expired(self) -> bool:
        job = self.job
        return job is not None and time.monotonic() > job.deadline  # (a cancelled spawn's is -inf)

    def run(self, job: Job) -> tuple[bool, list[Any] | bytes]:
        self.job = job
        try:
            if job.module is None:
                return True, self._call_python(job)
            return self._call_lua(job)
        except NotPlainError as e:
            return False, f"{job.function}: {e}".encode()
        except LuaError as e:  # raised outside the job's xpcall: out of memory, or the deadline
            return False, str(e).encode()
        except CancelledError:
            return False, b"cancelled"
        except Exception as e:  # a host function raised
            return False, f"{job.function}: {type(e).__name__}: {e}".encode()
        finally:
            self.job = None

    def _call_python(self, job: Job) -> list[Any]:
        fn = hostfn.lookup(job.function)
        result = fn(*job.args)
        channel = job.channel
        if channel is not None and isinstance(result, types.GeneratorType):  # it streams: each value sent
            while True:
                try:
                    value = next(result)
                except StopIteration as end:
                    result = end.value
                    break
                if not channel.thread_put(to_plain(value)):  # the task closed the channel: stop it
                    result.close()
                    result = None
                    break
        values = list(result) if isinstance(result, tuple) else [result]
        return [to_plain(v) for v in values]

    def _call_lua(self, job: Job) -> tuple[bool, list[Any] | bytes]:
        if self._run_job is None:
            pool = self.pool
            self._lua = new_lua_runtime(pool.limits.lua_max_memory)
            boot = bootstrap(self._lua, None, {"stall_check_every": 0}, pool.app_path, [])
            self._run_job = boot[b"run_job"]
        lua = self._lua
        make_room(lua)  # (LuaJIT: the job's arguments are built outside a protected call)
        args = lua.table_from([from_plain(lua, a) for a in job.args])
        assert job.module is not None
        channel = job.channel
        if channel is None:
            r = self._run_job(job.module.encode(), job.function.encode(), args, len(job.args), self.expired)
        else:

            def put(value: Any) -> object:
                return True if channel.thread_put(to_plain(value)) else CLOSED

            def get(timeout: object = None) -> object:
                wait = float(timeout) if isinstance(timeout, int | float) else None
                ok, value = channel.thread_get(wait)
                if ok:
                    return from_plain(lua, value)
                return TIMEOUT if value == b"timeout" else None

            r = self._run_job(
                job.module.encode(), job.function.encode(), args, len(job.args), self.expired,
                put, get, channel.thread_close,
            )  # fmt: skip
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
                if job.channel is not None:
                    job.channel.thread_finished((False, b"cancelled"))
                call_soon(self.service.finished, job, None)
                continue
            job.waited = time.monotonic() - job.queued
            outcome: tuple[bool, list[Any] | bytes] | None = worker.run(job)
            if job.channel is not None and outcome is not None:  # spawned: the outcome goes to the channel
                job.channel.thread_finished(outcome)
                outcome = None
            try:
                call_soon(self.service.finished, job, outcome)
            except RuntimeError:  # the loop is closed: shutting down
                return

    def stop(self) -> None:
        for _ in self.threads:
            self.jobs.put(None)


class PoolService(Defaults):
    """POOL_RUN and POOL_CALL; owns the pools named in the configuration."""

    SERVES: ClassVar[frozenset[Op]] = frozenset(
        {Op.CHAN_CLOSE, Op.CHAN_GET, Op.CHAN_PUT, Op.CHAN_WAIT, Op.POOL_CALL, Op.POOL_RUN, Op.POOL_SPAWN}
    )  # (its ops)

    def __init__(
        self,
        kernel: Kernel,
        loop: asyncio.AbstractEventLoop,
        limits: Limits,
        app_path: str | None,
        pools: dict[str, PoolConfig] | None = None,
        *,
        figures: Figures | None = None,
    ) -> None:
        self.kernel = kernel
        self.figures = figures or Figures()  # (the runtime's metrics: waits for a thread, refusals)
        self.loop = loop
        self.limits = limits
        self.app_path = app_path
        self.pools = {name: Pool(cfg, self) for name, cfg in (pools or default_pools()).items()}
        self.background = Background(loop)
        kernel.wire(self)  # (the ops in SERVES, each by its handler _<op>)

    def _pool_run(self, task: Task, where: object, target: object, args: object) -> object:
        module, function = _lua_target(target, "pool.run")
        return self._submit(task, where, module, function, args)

    def _pool_call(self, task: Task, where: object, name: object, args: object) -> object:
        if not isinstance(name, bytes):
            raise TypeError("pool.call: bad name")
        return self._submit(task, where, None, name.decode(), args)

    def _submit(
        self,
        task: Task,
        where: object,
        module: str | None,
        function: str,
        args: object,
        *,
        channel: bool = False,
    ) -> object:
        """Queue a job: SUSPEND (its task waits for it), a Channel (pool.spawn: it goes on), or nil, err."""
        if module is None:  # a Python host function: it must be registered
            try:
                hostfn.lookup(function)
            except KeyError as e:
                return (None, str(e.args[0]).encode())
        name, timeout, buffer = self._where(where, (module is None and function) or None)
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
        if channel:
            job.channel = Channel(self.kernel, self.loop, buffer or CHANNEL_BYTES, self.background)
            job.channel.job = job
            job.channel.to_lua = lambda v: from_plain(self.lua, v)
            job.channel.to_lua_in_slices = lambda v: from_plain_in_slices(self.lua, v)
        timeout = timeout if timeout is not None else pool.config.timeout
        if timeout != math.inf:
            job.deadline = time.monotonic() + timeout
            job.timer = self.loop.call_later(timeout, self._expire, job)
        if not pool.submit(job):
            if job.timer is not None:
                job.timer.cancel()
            self.figures.pool_busy[name] += 1
            return _BUSY
        if job.channel is None:
            return SUSPEND
        if task.extra is None:
            task.extra = Extra()
        task.extra.on_end.append(job.channel.cancel)  # the job is its task's: it stops when the task ends
        return self.kernel.handles.hold(job.channel, host_done=True)  # (pool.lua's job table holds it)

    def _where(self, where: object, host_function: str | None) -> tuple[str, float | None, int | None]:
        """The pool a job goes to (given by Lua, else the host function's own), and pool.named's timeout
        and channel buffer, if given."""
        options = to_plain(where) if where is not None else {}
        if not isinstance(options, dict):
            options = {}
        given, t, b = options.get(b"pool"), options.get(b"timeout"), options.get(b"buffer")
        name = given.decode() if isinstance(given, bytes) else None
        timeout = float(t) if isinstance(t, int | float) else None
        buffer = int(b) if isinstance(b, int | float) else None
        if not name:
            name = hostfn.pool_of(host_function) if host_function else "cpu"
        return name, timeout, buffer

    def _expire(self, job: Job) -> None:
        if not job.done:
            job.done = True
            if job.channel is not None:
                job.channel.expire()
                return
            self.kernel.resume(job.task, _TIMEOUT)

    # -- pool.spawn: a job that runs beside its task, with a channel between them ----------------------
    def _pool_spawn(self, where: object, target: object, args: object) -> object:
        task = self.kernel.current
        if task is None:
            raise BadRequestError("pool.spawn: not in a task")
        plain = to_plain(target)
        if not isinstance(plain, dict):
            raise BadRequestError("pool.spawn: bad target")
        host = plain.get(b"host")
        if not isinstance(host, bytes):
            module, function = _lua_target(target, "pool.spawn")
            return self._submit(task, where, module, function, args, channel=True)
        return self._submit(task, where, None, host.decode(), args, channel=True)

    def _chan_get(self, task: Task, ch: Channel, timeout: object, _c: object) -> object:
        if ch.getter is not None:  # (another task already waits in job:get)
            return _BUSY
        taken = ch.take()
        if taken is None:
            ch.park(task, "getter", timeout)
            return SUSPEND
        reply = ch.answer(task, taken)
        return SUSPEND if reply is None else reply

    def _chan_put(self, task: Task, ch: Channel, value: object, _c: object) -> object:
        if ch.putter is not None:
            return _BUSY
        try:
            plain = to_plain(value)
        except NotPlainError as e:
            return (None, f"put: {e}".encode())
        reply = ch.offer(plain, plain_size(plain), task)
        if reply is not None:
            return reply
        ch.park(task, "putter", None)
        return SUSPEND

    def _chan_wait(self, task: Task, ch: Channel, timeout: object, _c: object) -> object:
        if ch.waiter is not None:
            return _BUSY
        if ch.result is not None:
            reply = ch.outcome(task)
            return SUSPEND if reply is None else reply
        ch.park(task, "waiter", timeout)
        return SUSPEND

    def _chan_close(self, ch: Channel, _b: object, _c: object) -> object:
        ch.close()
        return True

    def finished(self, job: Job, outcome: tuple[bool, list[Any] | bytes] | None) -> None:
        job.pool.pending -= 1
        if job.waited:  # (0: it never reached a thread's work)
            self.figures.pool_wait[job.pool.config.name].observe(job.waited)
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
        if any(map(is_large, value)):  # (converted a slice per loop turn, the task waiting meanwhile)
            self.background.run(self._deliver_in_slices(job.task, job.task.runs, value))
            return
        try:
            reply = tuple(from_plain(self.lua, v) for v in value)
        except NotPlainError as e:
            self.kernel.resume(job.task, (None, f"results: {e}".encode()))
            return
        self.kernel.resume(job.task, reply if len(reply) != 1 else reply[0])

    async def _deliver_in_slices(self, task: Task, runs: int, values: list[Any]) -> None:
        try:
            reply = tuple([await from_plain_in_slices(self.lua, v) for v in values])
        except NotPlainError as e:
            self.kernel.resume_if(task, runs, (None, f"results: {e}".encode()))
            return
        self.kernel.resume_if(task, runs, reply if len(reply) != 1 else reply[0])

    # -- the service's lifecycle (runtime/services/__init__.py) -------------------------------------
    def keeps_alive(self) -> bool:
        return False

    def in_flight(self) -> bool:
        return any(pool.pending for pool in self.pools.values()) or bool(self.background.jobs)

    def drain(self) -> None:
        pass

    async def close(self) -> None:
        self.stop()

    def statistics(self) -> dict[str, int | float]:
        return {f"pool_{name}_jobs": pool.pending for name, pool in self.pools.items()}

    def console_rows(self, topic: str) -> list[str]:
        if topic != "pools":
            return []
        return [
            f"{name}: {len(p.threads)}/{p.config.size} threads, {p.pending} queued or running (max "
            f"{p.config.size + p.config.queue})"
            for name, p in self.pools.items()
        ]

    def stop(self) -> None:
        for pool in self.pools.values():
            pool.stop()


def _lua_target(target: object, what: str) -> tuple[str, str]:
    """A Lua job's {module =, fn =}."""
    plain = to_plain(target)
    module = plain.get(b"module") if isinstance(plain, dict) else None
    function = plain.get(b"fn") if isinstance(plain, dict) else None
    if not isinstance(module, bytes) or not isinstance(function, bytes):
        raise BadRequestError(f"{what}: bad target")
    return module.decode(), function.decode()


__all__ = ["PoolConfig", "PoolService", "default_pools"]
