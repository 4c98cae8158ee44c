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
* One fast path resumes tasks outside :meth:`Kernel.resume`: a connection feeding bytes to the task
  waiting to read it (``Connection.data_received``) serves a ``RECV`` on that same connection inline, the
  echo cycle in one Python frame, with the same bookkeeping (``runs``, ``current``, :meth:`failed`); any
  other request it hands to :meth:`Kernel.serve`.
* Lua errors reach here as exceptions only from a connection's handler, which runs as its coroutine's own
  function so that its reads wait shallow (``bare`` tasks: see ``ended`` in ``_host.lua``; its return ends
  it too), and for the two that escape any ``xpcall``: running out of memory, and a task the stall hook
  stops. Every other task body runs under ``xpcall`` in ``_host.lua`` and ends with an ``EXIT`` request
  carrying the traceback. A handler that refuses its arguments raises :class:`BadRequestError`, which
  becomes a Lua error at the app's line (misuse, as Lua's own "bad argument"); any other Python exception
  in a handler is a host bug: it is logged with its traceback and ends only that task.
* Ending a task (it returned, failed, or was killed) unregisters whatever it was waiting on, ends the tasks
  in its scope, wakes the tasks waiting for it, and tells its owner.
* A wake-up reaches only the wait it answers. Every resume ends the task's current suspension and counts
  (``Task.runs``); a resume put off to a later loop turn (:meth:`Kernel.resume_soon`, a timer) carries the
  count it was made for and is dropped, and counted in ``stale_wakeups``, if the task was resumed meanwhile,
  instead of being delivered to whatever the task waits on next. Resumes made at once, by whoever finds the
  task registered with it (a reader, an idle worker), answer the current suspension by construction.
* Host objects reach Lua as numbers (``kernel/handles.py``): an op's handle argument is looked up and
  checked before its handler runs, and no reply carries a host object.
"""

from __future__ import annotations

import inspect
import logging
import sys
import typing
from collections.abc import Callable
from typing import Any, Final

from runtime.kernel.handles import CHECK_CROSSING, Handles, check_plain
from runtime.kernel.ops import CALLS, YIELDING, Op, op_of
from runtime.kernel.task import PARKED, Extra, Owner, Task
from runtime.lua.state import LuaError, LuaFunction, LuaObject, lifted, lua_type_of, recover, resume_thread

log = logging.getLogger("moonlet")


class _Suspend:
    __slots__ = ()

    def __repr__(self) -> str:
        return "SUSPEND"


SUSPEND: Final = _Suspend()


class BadRequestError(Exception):
    """A request or call whose arguments are not what its op takes (a forged or stale handle, a method called
    with another object as self): raised in Lua as an error at the app's line that called the stdlib, worded
    as Lua's own argument errors (:func:`bad_argument`); a ``pcall`` catches it. Never a host bug."""


MAX_IMMEDIATE = 64  # immediate replies in a row before a task goes to the back of the ready queue
_EXIT = int(Op.EXIT)

RequestHandler = Callable[[Task, Any, Any, Any], object]
CallHandler = Callable[[Any, Any, Any], object]


def lua_type(value: object) -> str:
    """What Lua calls ``value``'s type, or a host handle's kind (its class's ``KIND``, else its name)."""
    kind = lua_type_of(value)
    if kind is not None:
        return str(kind)
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, bytes | str):
        return "string"
    return str(getattr(type(value), "KIND", type(value).__name__.lower()))


def bad_argument(i: int, fn: str, expected: str, got: object) -> BadRequestError:
    """Misuse found on the host side, worded as Lua's own: ``bad argument #1 to 'wait' (task expected, got
    table)``; raised in Lua at the app's line (see ``Kernel.failed`` and ``Kernel.call``)."""
    return BadRequestError(f"bad argument #{i} to '{fn}' ({expected} expected, got {lua_type(got)})")


def bad_request(op: object, handler: object, handle: type | None, got: object) -> BadRequestError:
    """The error for a request or call with an unknown op, or a first argument of the wrong type (``got``:
    what it was, the object its number names if it names one)."""
    if handler is None:
        return BadRequestError(f"unknown host request {op!r}")
    assert handle is not None
    expected = str(getattr(handle, "KIND", handle.__name__.lower()))
    return bad_argument(1, op_of(op).name.lower(), expected, got)  # type: ignore[arg-type]


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
    if frames and frames[-1] == "(...tail calls...)":  # (a connection's handler, called by its entry)
        frames.pop()
    return message + (" | stack: " + " < ".join(frames) if frames else "")


def handle_kind(handler: Callable[..., object], yields: bool) -> type | None:
    """The class a handler's handle parameter is annotated with (after the task, for a yielding request),
    if it is one of the services' classes; else None (the handler takes what it is given)."""
    params = list(inspect.signature(handler).parameters)
    index = 1 if yields else 0
    if len(params) <= index:
        return None
    hint = typing.get_type_hints(handler).get(params[index])
    if isinstance(hint, type) and hint.__module__.startswith("runtime.services."):
        return hint
    return None


def lua_objects(*args: object) -> list[object]:
    """The Lua objects among a call's arguments (for :func:`check_not_kept`)."""
    return [x for x in args if isinstance(x, LuaObject)]


def references(objects: list[object]) -> list[int]:
    """Each object's reference count, counted the same way before a handler runs and after."""
    return [sys.getrefcount(x) for x in objects]


def check_not_kept(objects: list[object], before: list[int], result: object, op: str) -> None:
    """(the crossing check) A call's handler kept none of the Lua objects handed to it: lupa ties each to
    the calling coroutine, and one kept past it crashes the process later, when it is used or released (the
    door's rule: only plain values cross in calls, moonlet/_host.lua; what must be kept crosses in a yield,
    or as a number). ``before``: :func:`references` as the handler began."""
    for obj, was, now in zip(objects, before, references(objects), strict=True):
        returned = (result is obj) + (sum(r is obj for r in result) if isinstance(result, tuple) else 0)
        if now - returned > was:
            raise RuntimeError(f"{op}: the host kept a Lua object handed to it in a call")


class Kernel:
    def __init__(self, call_soon: Callable[..., object]) -> None:
        self._call_soon = call_soon
        self._handlers: list[RequestHandler | None] = [None] * (max(Op) + 1)
        self._calls: list[CallHandler | None] = [None] * (max(Op) + 1)
        # per op: the type its first argument must be (a host handle), or None
        self._handles: list[type | None] = [None] * (max(Op) + 1)
        self._body: LuaFunction | None = None
        self._ended: LuaFunction | None = None  # (see set_body)
        self.job_body: LuaFunction | None = None  # (see set_body)
        self._misuse_where: Callable[[object], bytes | None] | None = None  # (see set_body)
        self._misuse_raise_in: Callable[[object, bytes], None] | None = None
        self.live = 0  # tasks started and not yet ended
        # those tasks but the handlers of open connections, which their connections list (the console lists
        # both; a dict takes less room than a set)
        self.tasks: dict[Task, None] = {}
        self.current: Task | None = None  # the task being resumed, if any
        self.main: Task | None = None  # the app's main chunk (what it opens lives as long as the process)
        self.stale_wakeups = 0  # put-off resumes dropped: their task had been resumed meanwhile
        self.on_idle: Callable[[], None] | None = None  # called when `live` drops to zero
        self.handles = Handles()
        self._resolve = self.handles.resolve
        self.register(Op.EXIT, self._exit)
        self.register_call(Op.RELEASE, self._release)

    # -- wiring ----------------------------------------------------------------------------------
    def register(self, op: Op, handler: RequestHandler, handle: type | None = None) -> None:
        """``handle``: the type the request's first argument must be (checked before the handler runs)."""
        assert op in YIELDING, f"{op!r} is a call, not a yielding request"
        assert self._handlers[op] is None, f"{op!r} has two handlers"
        self._handlers[op] = handler
        self._handles[op] = handle

    def register_call(self, op: Op, handler: CallHandler, handle: type | None = None) -> None:
        assert op in CALLS, f"{op!r} is a yielding request, not a call"
        assert self._calls[op] is None, f"{op!r} has two handlers"
        self._calls[op] = handler
        self._handles[op] = handle

    def wire(self, service: Any) -> None:
        """Register every op that ``service.SERVES`` names, its one declaration: the handler of op ``X`` is
        the service's method ``_x`` (docs/naming.md), a yielding request's or a call's by the op's kind; the
        request's first argument must be a host handle of the class that handler's parameter is annotated
        with, when that class is a service's (``Connection``, ``Listener``, ``Channel``, ...)."""
        for op in sorted(service.SERVES):
            handler = getattr(service, "_" + op.name.lower())
            (self.register if op.yields else self.register_call)(op, handler, handle_kind(handler, op.yields))

    def missing_handlers(self) -> list[Op]:
        return [op for op in Op if (self._handlers if op.yields else self._calls)[op] is None]

    def set_body(
        self,
        body: LuaFunction,
        misuse: Any = None,
        job_body: LuaFunction | None = None,
        ended: LuaFunction | None = None,
    ) -> None:
        """``body(fn, ...)`` is the Lua wrapper every task runs in; ``misuse``: its helpers that raise a
        refused request at the app's line; ``job_body(job, ...)``: the wrapper of a task whose function Lua
        registered under a number (``spawn``, timers, console chunks); ``ended(co, msg)``: after a task's
        coroutine failed outside any wrapper, its buffered output handed on and its traceback (all four from
        ``_host.lua``)."""
        self._body = body
        self.job_body = job_body
        self._ended = ended
        if misuse is not None:
            self._misuse_where, self._misuse_raise_in = misuse[b"where"], misuse[b"raise_in"]

    # -- tasks -----------------------------------------------------------------------------------
    def spawn(
        self,
        owner: Owner,
        fn: object,
        *args: object,
        body: LuaFunction | None = None,
        scope: bool = False,
        extra: Extra | None = None,
        soon: bool = False,
        bare: bool = False,
    ) -> Task:
        """Start ``body(fn, *args)`` as a new task (``body`` defaults to the one from ``set_body``); with
        ``bare``, ``fn(*args)`` as the coroutine's own function (a connection's handler: it keeps the door's
        task rules itself, see ``start_task`` in ``_host.lua``, so that its waits sit shallow).

        The task runs until its first wait now, or on the next loop turn with ``soon``. With ``scope`` the
        task bounds the lifetime of the tasks spawned under it (a connection's handler). A task started while
        another runs belongs to that one's scope, if it has one.
        """
        body = body or self._body
        assert body is not None, "set_body() first"
        if CHECK_CROSSING:
            check_plain(args, f"the arguments of a task for {owner.describe()}", LuaObject)
        task = Task(fn.coroutine(*args) if bare else body.coroutine(fn, *args), owner)  # type: ignore[attr-defined]
        task.extra = extra
        if scope:
            task.root = task
        else:
            parent = self.current
            root = parent.root if parent is not None else None
            if root is not None and root.co is not None:
                task.root = root
                root_extra = root.extra
                if root_extra is None:
                    root.extra = root_extra = Extra()
                if root_extra.children is None:
                    root_extra.children = set()
                root_extra.children.add(task)
        self.live += 1
        if not bare:  # (a connection lists its handler itself: an entry here is ~30 B an idle one would keep)
            self.tasks[task] = None
        if soon:
            self.resume_soon(task, None)
        else:
            self.resume(task, None)
        return task

    def resume(self, task: Task, value: object) -> None:
        """Resume ``task`` with ``value`` and serve its requests until it waits or ends. Only for whoever
        finds ``task`` waiting on it now; a resume put off to later goes through :meth:`resume_soon`."""
        co = task.co
        if co is None:  # ended or killed: never resumed again
            return
        if CHECK_CROSSING:
            check_plain(value, f"a reply to {task.describe()}", LuaObject)
        task.runs += 1  # (before `current`: the stall guard's thread reads them in the other order)
        self.current = task
        try:
            self.serve(task, resume_thread(co, value))
        except Exception as e:
            self.failed(task, e)
        finally:
            self.current = None

    def serve(self, task: Task, req: object) -> None:
        """Serve the request ``task`` has just yielded, and the ones after it, until it waits or ends.

        Called inside a run (``current`` is ``task``): by :meth:`resume`, and by the two fast paths that
        resume a task themselves (the echo cycle, a connection feeding its reader, ``services/stream.py``;
        the request cycle, a request worker handed a parked connection's bytes, ``services/httpserver.py``),
        which hand over every request they do not serve inline. (Going through :meth:`resume` instead costs
        kv.lua's unpipelined PING 23,631 instructions a request against 19,572: measured.) Exceptions go to
        the caller, for :meth:`failed`.
        """
        co = task.co
        assert co is not None
        handlers, handles = self._handlers, self._handles
        budget = MAX_IMMEDIATE
        while True:
            if type(req) is not tuple or len(req) != 4:
                self._stray(task, req)
                return
            op, a, b, c = req
            if not co and op != _EXIT:  # returned values, not a request: see _returned
                self._returned(task)
                return
            try:
                handler, handle = handlers[op], handles[op]
            except (IndexError, TypeError):
                handler = handle = None
            if handler is None:
                raise bad_request(op, None, None, a)
            if handle is not None:  # a host handle: its number, resolved to the object (kernel/handles.py)
                obj = self._resolve(a, handle)
                if obj is None:
                    raise bad_request(op, handler, handle, self.handles.found(a))
                a = obj
            value = handler(task, a, b, c)
            if value is SUSPEND:
                return
            budget -= 1
            if budget == 0:
                self.resume_soon(task, value)
                return
            if CHECK_CROSSING:
                check_plain(value, f"a reply to {task.describe()}", LuaObject)
            task.runs += 1
            req = resume_thread(co, value)

    def failed(self, task: Task, e: Exception) -> None:
        """End ``task`` after its run raised ``e``."""
        if type(e) is StopIteration:  # (its coroutine returned nothing)
            self._returned(task)
        elif isinstance(e, BadRequestError):  # misuse: a forged handle, or a method given another object
            if self._misuse_raise_in is not None and task.co is not None:
                self._misuse_raise_in(task.co, str(e).encode())  # an error the app may catch, at its line
                self.resume_soon(task, None)  # (not nested: a loop of misuses cannot recurse)
                return
            log.error("bad host request from %s: %s; ending that task", task.describe(), e)
            self._end(task, ok=False, error=f"bad host request: {e}".encode())
        elif isinstance(e, LuaError):  # a connection handler's error, out of memory, a stall, a stray resume
            extra = task.extra
            stall = extra.stall if extra is not None else None
            message = str(e).encode() or (b"not enough memory" if isinstance(e, MemoryError) else b"")
            error = self._traceback(task, message)  # (for a stall too: it hands on the task's output)
            error = stall or error
            self._end(task, ok=False, error=error, results=error.split(b"\n", 1)[0])
            recover()  # (LuaJIT: what the task left is collected before the host allocates in the state)
        else:
            log.error("internal error while serving %s; ending that task", task.describe(), exc_info=e)
            self._end(task, ok=False, error=b"internal error in the host (see the log)")

    def _returned(self, task: Task) -> None:
        """``task``'s coroutine returned, a bare task's handler (a body ends returning an ``EXIT`` request):
        its buffered output goes out, and it has ended. (lupa raises StopIteration for no values.)"""
        if self._ended is not None and task.co is not None:
            try:
                self._ended(task.co, None)
            except Exception as e:  # (its output refused, or no memory left to send it)
                self.failed(task, e)
                return
        self._end(task, ok=True, error=None)

    def _traceback(self, task: Task, msg: bytes) -> bytes:
        """``msg`` with the traceback of the failed coroutine, its buffered output handed on (``ended``)."""
        fallback = msg or b"(an error value that is not a string)"
        if self._ended is None or task.co is None:
            return fallback
        try:
            text = lifted(self._ended, task.co, msg)
        except Exception:  # (out of memory again, or output refused: the message alone)
            return fallback
        return text if isinstance(text, bytes) else fallback

    def kill(self, task: Task, reason: bytes) -> bool:
        """End ``task`` now; it is never resumed again and its owner is told. A task cannot kill itself."""
        if task is self.current:
            return False
        if task.co is not None:
            self._end(task, ok=False, error=reason)
        return True

    def end_children(self, task: Task, reason: bytes) -> None:
        """End the tasks in ``task``'s scope now, ``task`` going on (a reused HTTP request task, between two
        requests); they are never resumed again."""
        extra = task.extra
        if extra is not None and extra.children:
            children, extra.children = extra.children, None
            for child in children:
                self._end(child, ok=False, error=reason)

    def check_idle(self) -> None:
        """Tell the host when nothing is left to run (it may then end, see host.py)."""
        if self.live == 0 and self.on_idle is not None:
            self.on_idle()

    def watch(self, task: Task, watcher: Task) -> None:
        """Unpark ``watcher`` (see services/tasks.py) when ``task`` ends."""
        extra = task.extra
        if extra is None:
            task.extra = extra = Extra()
        if extra.watchers is None:
            extra.watchers = []
        extra.watchers.append(watcher)

    def call(self, op: int, a: object = None, b: object = None, c: object = None, d: object = None) -> object:
        """Entry point of ``host.call``: a synchronous request from Lua (a fourth value only where needed)."""
        try:
            handler, handle = self._calls[op], self._handles[op]
        except (IndexError, TypeError):
            handler = handle = None
        try:
            if handler is None:
                raise bad_request(op, None, None, a)
            if handle is not None:
                obj = self._resolve(a, handle)
                if obj is None:
                    raise bad_request(op, handler, handle, self.handles.found(a))
                a = obj
            if not CHECK_CROSSING:
                return handler(a, b, c) if d is None else handler(a, b, c, d)  # type: ignore[call-arg]
            handed = lua_objects(a, b, c, d)
            before = references(handed)
            result = handler(a, b, c) if d is None else handler(a, b, c, d)  # type: ignore[call-arg]
            check_plain(result, f"the result of {op_of(op).name}", LuaObject)
            check_not_kept(handed, before, result, op_of(op).name)
            return result
        except BadRequestError as e:  # (raised in Lua: at the app's line, as Lua's own argument errors)
            task = self.current
            where = None
            if self._misuse_where is not None and task is not None and task.co is not None:
                where = self._misuse_where(task.co)
            if where is None:
                raise
            raise BadRequestError(f"{where.decode('utf-8', 'replace')}: {e}") from None

    def resume_soon(self, task: Task, value: object) -> None:
        """Resume ``task`` with ``value`` on a later loop turn, if it has not been resumed by then (see the
        rules: such a wake-up belongs to the suspension it was made for)."""
        self._call_soon(self.resume_if, task, task.runs, value)

    def resume_if(self, task: Task, runs: int, value: object) -> None:
        """Resume ``task`` if it is still in the suspension that ``runs`` (its ``Task.runs`` then) names;
        else drop ``value`` and count it. For wake-ups put off to later (``resume_soon``, timers)."""
        if task.runs != runs:
            if task.co is not None:
                self.stale_wakeups += 1
            return
        self.resume(task, value)

    # -- internals -------------------------------------------------------------------------------
    def _release(self, n: object, _b: object, _c: object) -> None:
        # RELEASE (number): a Lua table that held a handle was collected (see kernel/handles.py)
        self.handles.release(n)

    def _exit(self, task: Task, ok: object, value: object, error_value: object) -> object:
        # ok: value is the packed results (spawned tasks) or nil; failed: value is the traceback and
        # error_value what the task raised (for wait() to return)
        if ok:
            self._end(task, ok=True, error=None, results=value)
        else:
            self._end(task, ok=False, error=value if isinstance(value, bytes) else None, results=error_value)
        return SUSPEND

    def _end(self, task: Task, ok: bool, error: bytes | None, results: object = None) -> None:
        if task.co is None:
            return
        task.co = None
        self.live -= 1
        self.tasks.pop(task, None)
        waiting, timer = task.waiting, task.timer
        task.waiting = task.timer = None
        if waiting is not None:
            waiting.forget(task)
        if timer is not None:
            timer.cancel()
        root, task.root = task.root, None  # (a connection's handler is its own root: no cycle outlives it)
        if root is not None and root is not task and root.extra is not None and root.extra.children:
            root.extra.children.discard(task)
        extra = task.extra
        if extra is not None:
            extra.result = (ok, results if ok or results is not None else error)
            for cleanup in extra.on_end:
                cleanup()
            extra.on_end.clear()  # (a cleanup's closure holds what holds the task: no cycle left behind)
            if extra.owned:  # the connections it opened and did not hand on close with it
                owned, extra.owned = extra.owned, None
                for thing in owned:
                    thing.close()
            if extra.children:
                self.end_children(task, b"cancelled: " + task.describe().encode() + b" ended")
        self.handles.retire(task)
        owner: Owner = task.owner
        try:
            owner.task_exited(task, ok, error)  # (before the watchers go: it may look at them)
        finally:
            if extra is not None and extra.watchers:
                watchers, extra.watchers = extra.watchers, None
                for watcher in watchers:
                    self.wake(watcher, True)
            self.check_idle()

    def wake(self, task: Task, value: object) -> bool:
        """Resume a task parked in PARK with ``value`` on the next loop turn; False if it is not parked."""
        if task.waiting is not PARKED:
            return False
        task.waiting = None
        timer = task.timer
        if timer is not None:
            task.timer = None
            timer.cancel()
        self.resume_soon(task, value)
        return True

    def _stray(self, task: Task, req: object) -> None:
        if not task.co:  # (returned values, not a request)
            self._returned(task)
            return
        log.error(
            "%s yielded %r, which is not a host request: coroutine.yield was called outside a coroutine "
            "the app created (use the moonlet API, or yield inside your own coroutine); ending that task",
            task.describe(),
            req,
        )
        self._end(task, ok=False, error=b"stray coroutine.yield")
