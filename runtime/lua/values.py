"""Plain values: the only Lua values that may leave a Lua state (for a pool thread, a database, Python).

Plain means nil, booleans, numbers, strings (bytes) and tables of these. A table whose keys are exactly
1..n becomes a list, any other a dict; functions, coroutines and userdata are refused with a clear error,
as are cycles and nesting deeper than ``MAX_DEPTH``. Python ``str`` coming back is encoded as UTF-8, since
Lua strings are bytes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator, Iterable
from typing import Any

from runtime.lua.state import LuaRuntimeFacade, lua_type_of, make_room

MAX_DEPTH = 64
Plain = None | bool | int | float | bytes | list["Plain"] | dict[Any, "Plain"]


class NotPlainError(ValueError):
    """A value that cannot cross between Lua states."""


def to_plain(value: object, depth: int = 0) -> Plain:
    """A Lua value (as lupa hands it to Python), or a host function's Python value, as plain Python data."""
    if value is None or isinstance(value, bool | int | float | bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, list | tuple | dict):  # (a Python host function's containers)
        if depth >= MAX_DEPTH:
            raise NotPlainError(f"tables nested deeper than {MAX_DEPTH} levels (or a cycle) cannot cross")
        if not isinstance(value, dict):
            return [to_plain(v, depth + 1) for v in value]
        keys = [k.encode() if isinstance(k, str) else k for k in value]
        if not all(isinstance(k, bool | int | float | bytes) for k in keys):
            raise NotPlainError("table keys must be numbers, strings or booleans to cross")
        return {k: to_plain(v, depth + 1) for k, v in zip(keys, value.values(), strict=True)}
    if lua_type_of(value) != "table":
        kind = lua_type_of(value) or type(value).__name__
        raise NotPlainError(
            f"a {kind} cannot cross (only nil, booleans, numbers, strings and tables of these)"
        )
    if depth >= MAX_DEPTH:
        raise NotPlainError(f"tables nested deeper than {MAX_DEPTH} levels (or a cycle) cannot cross")
    table: Any = value
    items = [(k, to_plain(v, depth + 1)) for k, v in table.items()]
    if all(type(k) is int for k, _ in items) and sorted(k for k, _ in items) == list(
        range(1, len(items) + 1)
    ):
        return [v for _, v in sorted(items, key=lambda kv: kv[0])]
    out: dict[Any, Plain] = {}
    for k, v in items:
        if not isinstance(k, bool | int | float | bytes):
            raise NotPlainError("table keys must be numbers, strings or booleans to cross")
        out[k] = v
    return out


def from_plain(lua: LuaRuntimeFacade, value: object, depth: int = 0) -> object:
    """Plain Python data as a Lua value of ``lua`` (lists and tuples become arrays, dicts tables)."""
    if value is None or isinstance(value, bool | int | float | bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if depth >= MAX_DEPTH:
        raise NotPlainError(f"data nested deeper than {MAX_DEPTH} levels cannot cross")
    if depth == 0:
        make_room(lua)  # (LuaJIT: tables are built outside a protected call)
    if isinstance(value, list | tuple):
        return lua.table_from([from_plain(lua, v, depth + 1) for v in value])
    if isinstance(value, dict):
        return lua.table_from(
            {from_plain(lua, k, depth + 1): from_plain(lua, v, depth + 1) for k, v in value.items()}
        )
    raise NotPlainError(f"a Python {type(value).__name__} cannot cross into Lua (only plain data)")


# -- large values: sized for byte bounds, converted in slices --------------------------------------------
SLICE = 4096  # entries of one table converted in one go; a bigger table is built a slice per loop turn
ENTRY_BYTES = 16  # what a value's size counts for each number, boolean and table entry besides strings


def plain_size(value: object) -> int:
    """What a plain value weighs against a byte bound: its strings' bytes, and ``ENTRY_BYTES`` for every
    value and table entry besides (a rule, not Python's or Lua's exact allocation)."""
    if isinstance(value, bytes | str):
        return len(value) + ENTRY_BYTES
    if isinstance(value, list | tuple):
        return _items_size(value) + ENTRY_BYTES
    if isinstance(value, dict):
        return _items_size(value) + _items_size(value.values()) + ENTRY_BYTES
    return ENTRY_BYTES


def _items_size(items: Iterable[object]) -> int:
    size = 0
    for v in items:
        kind = type(v)
        if kind is bytes:
            size += len(v)  # type: ignore[arg-type]
        elif kind is list or kind is dict or kind is tuple or kind is str:
            size += plain_size(v) - ENTRY_BYTES
    return size + ENTRY_BYTES * len(items)  # type: ignore[arg-type]


def is_large(value: object) -> bool:
    """A table of more than ``SLICE`` entries: ``from_plain_in_slices`` converts it over several turns."""
    return isinstance(value, list | tuple | dict) and len(value) > SLICE


async def from_plain_in_slices(lua: LuaRuntimeFacade, value: object) -> object:
    """``from_plain``, giving the event loop a turn after each ``SLICE`` entries of a large table, so a
    5,000,000-element result costs other connections a few milliseconds at a time, not seconds."""
    if not is_large(value):
        return from_plain(lua, value)
    steps = _slices(lua, value, 0, lua.eval(b"table.move"))
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value
        await asyncio.sleep(0)


def _slices(lua: LuaRuntimeFacade, value: object, depth: int, move: Any) -> Generator[None, None, object]:
    if depth >= MAX_DEPTH:
        raise NotPlainError(f"data nested deeper than {MAX_DEPTH} levels cannot cross")
    if isinstance(value, list | tuple):
        table = lua.table_from([])
        for first in range(0, len(value), SLICE):
            part = []
            for v in value[first : first + SLICE]:
                part.append(
                    (yield from _slices(lua, v, depth + 1, move))
                    if is_large(v)
                    else from_plain(lua, v, depth + 1)
                )
            move(lua.table_from(part), 1, len(part), first + 1, table)
            yield
        return table
    if isinstance(value, dict):
        table = lua.table_from([])
        items = list(value.items())
        for first in range(0, len(items), SLICE):
            for k, v in items[first : first + SLICE]:
                key = from_plain(lua, k, depth + 1)
                table[key] = (
                    (yield from _slices(lua, v, depth + 1, move))
                    if is_large(v)
                    else from_plain(lua, v, depth + 1)
                )
            yield
        return table
    return from_plain(lua, value, depth)
