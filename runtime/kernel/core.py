"""The kernel: resume a coroutine, decode the one request it yields, hand it to the owning service.

Rules this module keeps:

* It knows nothing of sockets, clocks or databases. Services register a handler per :class:`Op`; the
  kernel looks the handler up in a list indexed by the op number (the only decoder of requests).
* A handler returns the value to resume the coroutine with at once, or :data:`SUSPEND` after it has
  arranged for somebody to call :meth:`Kernel.resume` later. Replies are plain values: ``bytes``, numbers,
  booleans, ``None``, or a tuple, which Lua receives as several values (``(None, b"timeout")`` arrives as
  ``nil, "timeout"``).
* A task is resumed only from a loop callback, never from inside another task's request or call, so at most
  one coroutine runs at a time and no coroutine is resumed while it is running. Services that wake a task
  from inside a request use ``loop.call_soon``.
* Fairness: a task whose requests keep being answered at once (a loop of writes to a fast peer) is put
  back in the loop's ready queue after ``MAX_IMMEDIATE`` of them, so it cannot starve other connections.
* Lua errors never reach here as exceptions: every task body runs under ``xpcall`` in ``_host.lua`` and
  ends with an ``EXIT`` request carrying the traceback. A Python exception in a handler is a host bug: it is
  logged with its traceback and ends only that task.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

from runtime.kernel.ops import CALLS, YIELDING, Op
from runtime.kernel.task import Owner, Task
from runtime.lua.state import LuaError, LuaFunction

log = logging.getLogger("moonlet")


class _Suspend:
    __slots__ = ()

    def __repr__(self) -> str:
        return "SUSPEND"


SUSPEND: Final = _Suspend()

MAX_IMMEDIATE = 64  # immediate replies in a row before a task goes to the back of the ready queue

RequestHandler = Callable[[Task, Any, Any, Any], object]
CallHandler = Callable[[Any, Any, Any], object]


def one_line(traceback: bytes | str | None) -> str:
    """A Lua error and its traceback as one readable log line."""
    if traceback is None:
        return "(no message)"
    text = traceback.decode("utf-8", "replace") if isinstance(traceback, bytes) else traceback
    lines = [line.strip() for line in text.splitlines()]
    message, frames = lines[0], []
    for line in lines[1:]:
        if not line or line == "stack traceback:" or line.startswith("[C]: in function 'xpcall'"):
            continue
        if "moonlet/_host.lua" in line:  # the task wrapper itself is noise
            continue
        frames.append(line)
    return message + (" | stack: " + " < ".join(frames) if frames else "")


class Kernel:
    def __init__(self, call_soon: Callable[..., object]) -> None:
        self._call_soon = call_soon
        self._handlers: list[RequestHandler | None] = [None] * (max(Op) + 1)
        self._calls: list[CallHandler | None] = [None] * (max(Op) + 1)
        self._body: LuaFunction | None = None
        self.live = 0  # tasks started and not yet ended
        self.on_idle: Callable[[], None] | None = None  # called when `live` drops to zero
        self.register(Op.EXIT, self._exit)

    # -- wiring ----------------------------------------------------------------------------------
    def register(self, op: Op, handler: RequestHandler) -> None:
        assert op in YIELDING, f"{op!r} is a call, not a yielding request"
        assert self._handlers[op] is None or op is Op.EXIT, f"{op!r} has two handlers"
        self._handlers[op] = handler

    def register_call(self, op: Op, handler: CallHandler) -> None:
        assert op in CALLS, f"{op!r} is a yielding request, not a call"
        assert self._calls[op] is None, f"{op!r} has two handlers"
        self._calls[op] = handler

    def missing_handlers(self) -> list[Op]:
        return [op for op in Op if (self._handlers if op.yields else self._calls)[op] is None]

    def set_body(self, body: LuaFunction) -> None:
        """``body(fn, ...)`` is the Lua wrapper every task runs in (``_host.lua``)."""
        self._body = body

    # -- tasks -----------------------------------------------------------------------------------
    def spawn(self, owner: Owner, fn: object, *args: object) -> Task:
        """Start ``fn(*args)`` as a new task and run it until its first wait."""
        assert self._body is not None, "set_body() first"
        task = Task(self._body.coroutine(fn, *args), owner)
        self.live += 1
        self.resume(task, None)
        return task

    def resume(self, task: Task, value: object) -> None:
        """Resume ``task`` with ``value`` and serve its requests until it waits or ends."""
        co = task.co
        if co is None:  # ended or killed: never resumed again
            return
        send = co.send
        handlers = self._handlers
        budget = MAX_IMMEDIATE
        try:
            while True:
                req = send(value)
                if type(req) is not tuple or len(req) != 4:
                    self._stray(task, req)
                    return
                handler = handlers[req[0]]
                value = handler(task, req[1], req[2], req[3])  # type: ignore[misc]
                if value is SUSPEND:
                    return
                budget -= 1
                if budget == 0:
                    self._call_soon(self.resume, task, value)
                    return
        except LuaError as e:  # only outside the task's xpcall: out of memory, or a stray resume
            self._end(task, ok=False, error=str(e).encode())
        except Exception:
            log.exception("internal error while serving %s; ending that task", task.describe())
            self._end(task, ok=False, error=b"internal error in the host (see the log)")

    def call(self, op: int, a: object = None, b: object = None, c: object = None) -> object:
        """Entry point of ``host.call``: a synchronous request from Lua."""
        try:
            handler = self._calls[op]
        except (IndexError, TypeError):
            handler = None
        if handler is None:
            raise ValueError(f"unknown host call {op!r}")
        return handler(a, b, c)

    def kill(self, task: Task, reason: bytes) -> None:
        """End ``task`` now; it is never resumed again and its owner is told."""
        if task.co is not None:
            self._end(task, ok=False, error=reason)

    # -- internals -------------------------------------------------------------------------------
    def _exit(self, task: Task, ok: object, error: object, _: object) -> object:
        self._end(task, ok=bool(ok), error=error if isinstance(error, bytes) else None)
        return SUSPEND

    def _end(self, task: Task, ok: bool, error: bytes | None) -> None:
        if task.co is None:
            return
        task.co = None
        self.live -= 1
        owner: Owner = task.owner
        try:
            owner.task_exited(task, ok, error)
        finally:
            if self.live == 0 and self.on_idle is not None:
                self.on_idle()

    def _stray(self, task: Task, req: object) -> None:
        log.error(
            "%s yielded %r, which is not a host request: coroutine.yield was called outside a coroutine "
            "the app created (use the moonlet API, or yield inside your own coroutine); ending that task",
            task.describe(),
            req,
        )
        self._end(task, ok=False, error=b"stray coroutine.yield")
