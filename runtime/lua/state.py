"""Building the Lua state: the one audited constructor, and a typed facade over lupa.

Every ``LuaRuntime`` in moonlet comes from :func:`new_lua_runtime`. What it guarantees, each point pinned by
``tests/test_sandbox.py``:

* The engine this process runs (``runtime/lua/engine.py``): Lua 5.4 (``lupa.lua54``), whose count hook
  fires in every loop and whose ``max_memory`` fails cleanly, or LuaJIT (``lupa.luajit21``), for which the
  host keeps memory headroom (below) and the stall guard has a last resort (``services/tasks.py``).
* ``encoding=None``: Lua strings arrive in Python as ``bytes`` and client bytes pass through untouched (the
  default UTF-8 decoding raises on the first invalid byte).
* No ``python.eval``, no ``python.builtins``, and the ``python`` global removed: Lua cannot name Python.
* Attribute access on Python objects handed to Lua goes through an allow-list that is empty: Lua may hold
  the few it is given (the door's functions, a console session) and pass them back through the door, but
  never walk from them (``x.__class__`` and the like raise). Host handles are numbers, not objects
  (``runtime/kernel/handles.py``). Item access is not covered by lupa's filter, so no dict or list is
  ever handed to Lua.
* ``max_memory`` is set, so a runaway allocation raises a Lua memory error instead of taking the process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, cast

from runtime.lua import engine

_lupa: Any = engine.lupa_module()

LuaError: type[Exception] = _lupa.LuaError
LuaMemoryError: type[Exception] = _lupa.LuaMemoryError
# "table", "function", "thread" or "userdata" for a Lua object lupa hands to Python; None for anything else
lua_type_of: Callable[[object], str | None] = _lupa.lua_type
# The class of every Lua object lupa hands to Python (a table, a function, a coroutine); not exported by name
LuaObject: type = type(_lupa.LuaRuntime().eval("{}")).__mro__[1]


class LuaThread(Protocol):
    """A Lua coroutine as lupa hands it to Python."""

    def send(self, value: object, /) -> Any: ...


# ``resume_thread(co, value)``: the coroutine's ``send``, taken from the class once (looking ``co.send`` up
# on each resume goes through lupa's attribute hook for Lua objects: ~500 instructions per crossing). lupa
# does not export the class by name: it is found on a throwaway coroutine.
resume_thread: Callable[[LuaThread, object], Any] = type(
    _lupa.LuaRuntime().eval("function() end").coroutine()
).send

LUAJIT = engine.current() == "luajit"
# LuaJIT, unlike Lua 5.4, collects no garbage when an allocation fails, and one made outside a protected
# call (lupa pushing a value the host hands in, making a task's coroutine, building a table) that fails
# panics and ends the process. So a LuaJIT state keeps HEADROOM free (an eighth of a smaller limit) for the
# host's own allocations: every run ends with at least that much free, as the door collects garbage before
# a coroutine waits or ends and fails the task otherwise (moonlet/_host.lua, ``memory_room_kb``); after a
# task fails, :func:`recover` collects what it left; before the host builds a table, :func:`make_room`.
HEADROOM = 8 << 20

_watched: LuaRuntimeFacade | None = None
_limited_state: LuaRuntimeFacade | None = None
_on_full: Callable[[str], None] | None = None


class LuaFunction(Protocol):
    def __call__(self, *args: object) -> Any: ...

    def coroutine(self, *args: object) -> LuaThread: ...


class LuaRuntimeFacade(Protocol):
    def execute(self, code: bytes, *args: object) -> Any: ...

    def eval(self, code: bytes, *args: object) -> Any: ...

    def table_from(self, *args: object) -> Any: ...

    def globals(self) -> Any: ...

    def get_memory_used(self) -> int: ...

    def get_max_memory(self) -> int: ...

    def set_max_memory(self, max_memory: int, /) -> None: ...


# Attributes Lua may read, per Python type. Empty on purpose: everything Lua needs goes through the door.
ALLOWED_ATTRIBUTES: dict[type, frozenset[str]] = {}


def _get_attribute(obj: object, name: object) -> object:
    if isinstance(name, str) and name in ALLOWED_ATTRIBUTES.get(type(obj), ()):
        return getattr(obj, name)
    raise AttributeError(f"access to attribute {name!r} is not allowed from Lua")


def _set_attribute(obj: object, name: object, value: object) -> None:
    raise AttributeError("Python objects are read-only from Lua")


def new_lua_runtime(max_memory: int) -> LuaRuntimeFacade:
    """The one audited constructor of a moonlet Lua state."""
    runtime = _lupa.LuaRuntime(
        encoding=None,
        register_eval=False,
        register_builtins=False,
        unpack_returned_tuples=True,
        attribute_handlers=(_get_attribute, _set_attribute),
        max_memory=max_memory,
    )
    runtime.execute(b"python = nil")
    return cast(LuaRuntimeFacade, runtime)


def _limited(limit: int | None) -> bool:
    """A state made with a limit (lupa reports none, or a wrapped-around one, for a state without)."""
    return bool(limit) and limit is not None and limit < 1 << 62


def _headroom(limit: int) -> int:
    return min(HEADROOM, limit // 8)  # (a small limit keeps an eighth free)


def memory_room_kb(max_memory: int) -> int:
    """The door's threshold (``memory_room_kb``): KiB of Lua heap past which a LuaJIT state collects, or
    fails the waiting task; 0 (no check) on Lua 5.4 or without a limit."""
    return (max_memory - _headroom(max_memory)) // 1024 if LUAJIT and max_memory else 0


def watch_memory(lua: LuaRuntimeFacade, on_full: Callable[[str], None]) -> None:
    """``lua`` is the loop thread's state (see :func:`lifted`); LuaJIT: ``on_full`` is told when live data no
    task holds any more than the limit allows for (a global filled to the limit): it ends the process."""
    global _watched, _on_full, _limited_state
    limited = _limited(lua.get_max_memory())  # (each state replaces the last: tests run hosts one by one)
    _limited_state = lua if limited else None
    _watched, _on_full = (lua, on_full) if limited and LUAJIT else (None, None)


def lifted(fn: Callable[..., Any], *args: object) -> Any:
    """``fn(*args)``, a Lua function of the loop thread's state, run with its memory limit lifted by the
    headroom: the host's work after a task failed (``Kernel.failed``), when that task, out of memory
    perhaps, still holds the heap full until the door's ``ended`` lets go of what its coroutine held."""
    lua = _limited_state
    if lua is None:
        return fn(*args)
    hard = lua.get_max_memory()
    lua.set_max_memory(hard + _headroom(hard))
    try:
        return fn(*args)
    finally:
        lua.set_max_memory(hard)


def recover() -> None:
    """LuaJIT: after a task of the loop thread's state failed (out of memory, perhaps), collect what it left
    before the host allocates in the state again; live data leaving less than the headroom goes to
    ``on_full``. Lua 5.4: nothing to do."""
    if _watched is None:
        return
    try:
        make_room(_watched)
    except LuaMemoryError:
        used = _watched.get_memory_used() >> 20
        if _on_full is not None:
            _on_full(
                f"the Lua heap holds {used} MiB of live data after a full collection, too near --max-memory"
            )


def make_room(lua: LuaRuntimeFacade) -> None:
    """LuaJIT: if less than :data:`HEADROOM` of ``lua``'s limit is free, collect its garbage (the limit
    lifted for the collection's own needs); if live data still leaves less, raise ``LuaMemoryError``. Lua
    5.4: nothing to do (it collects when an allocation fails, and fails in a protected call)."""
    if not LUAJIT:
        return
    hard = lua.get_max_memory()
    if not _limited(hard) or lua.get_memory_used() <= hard - _headroom(hard):
        return
    lua.set_max_memory(hard + _headroom(hard))
    try:
        lua.globals()[b"collectgarbage"](b"collect")
    finally:
        lua.set_max_memory(hard)
    if lua.get_memory_used() > hard - _headroom(hard):
        raise LuaMemoryError("not enough memory")


# lupa's module for this process' engine (tests and tools that build a bare state beside moonlet's)
lupa_of_this_engine: Any = _lupa
