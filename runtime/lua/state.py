"""Building the Lua state: the one audited constructor, and a typed facade over lupa.

Every ``LuaRuntime`` in moonlet comes from :func:`new_lua_runtime`. What it guarantees, each point pinned by
``tests/test_sandbox.py``:

* Lua 5.4 (``lupa.lua54``): its count hook fires in every loop and its ``max_memory`` fails cleanly.
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
_send: Callable[[LuaThread, object], Any] = type(_lupa.LuaRuntime().eval("function() end").coroutine()).send
resume_thread = _send

LUAJIT = engine.current() == "luajit"
# LuaJIT, unlike Lua 5.4, collects no garbage when an allocation fails: one made outside a protected call
# (lupa pushing a value the host hands in) that meets the limit panics and ends the process. So on LuaJIT
# the state's limit is ``max_memory`` + this reserve, and the host makes room before it hands values in to
# the watched state (the loop thread's: :func:`watch_memory`) or to a pool thread's (:func:`make_room`).
RESERVE = 32 << 20

_watched: LuaRuntimeFacade | None = None
_on_full: Callable[[str], None] | None = None

if LUAJIT:

    def resume_thread(co: LuaThread, value: object) -> Any:  # (LuaJIT: the reserve kept first)
        lua = _watched
        if lua is not None and lua.get_memory_used() > lua.get_max_memory() - RESERVE:
            make_room(lua)
        return _send(co, value)


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
    """The one audited constructor of a moonlet Lua state (on LuaJIT its limit includes :data:`RESERVE`)."""
    runtime = _lupa.LuaRuntime(
        encoding=None,
        register_eval=False,
        register_builtins=False,
        unpack_returned_tuples=True,
        attribute_handlers=(_get_attribute, _set_attribute),
        max_memory=max_memory + RESERVE if LUAJIT else max_memory,
    )
    runtime.execute(b"python = nil")
    return cast(LuaRuntimeFacade, runtime)


def watch_memory(lua: LuaRuntimeFacade, on_full: Callable[[str], None]) -> None:
    """LuaJIT: keep the reserve of ``lua`` (the loop thread's state) before every resume; ``on_full`` is
    told when live data alone passes the limit (it ends the process: the worker is replaced)."""
    global _watched, _on_full
    if LUAJIT:
        _watched, _on_full = lua, on_full


def make_room(lua: LuaRuntimeFacade, on_full: Callable[[str], None] | None = None) -> None:
    """LuaJIT: if ``lua`` uses more than its limit less :data:`RESERVE`, collect its garbage (with the
    reserve lent for the collection's own needs); if live data still passes the limit, tell ``on_full`` (by
    default the watched state's), or raise ``LuaMemoryError`` without one. Lua 5.4: nothing to do (it
    collects when an allocation fails)."""
    if not LUAJIT:
        return
    if on_full is None and lua is _watched:
        on_full = _on_full
    hard = lua.get_max_memory()
    if lua.get_memory_used() <= hard - RESERVE:
        return
    lua.set_max_memory(hard + RESERVE)
    try:
        lua.globals()[b"collectgarbage"](b"collect")
    finally:
        lua.set_max_memory(hard)
    used = lua.get_memory_used()
    if used > hard - RESERVE:
        why = f"the Lua heap holds {used >> 20} MiB of live data after a full collection, over its limit"
        if on_full is None:
            raise LuaMemoryError(why)
        on_full(why)
