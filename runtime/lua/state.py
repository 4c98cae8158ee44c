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

import lupa.lua54 as _lupa  # type: ignore[import-untyped]

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
