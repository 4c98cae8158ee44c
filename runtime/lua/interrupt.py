"""Stopping Lua that runs too long, at no cost to Lua that does not: a hook armed from another thread.

A Lua 5.4 count hook is not free even when it rarely fires: while any hook is set on a coroutine the VM calls
``luaG_traceexec`` before *every* instruction (+40-50 % on moonlet's request path). So task coroutines run
with no hook at all, and a watchdog thread (``services/tasks.py``) arms one only in the coroutine that has
overrun its budget. What makes that sound:

* ``lua_sethook`` is meant to be called asynchronously: Lua's own interpreter calls it from a signal handler
  to stop a running script (``laction`` in ``lua.c``; ``ldebug.c`` documents which fields may be written
  that way). The watchdog calls it through ctypes on the symbol lupa's module exports, while the
  loop thread runs that coroutine with the GIL released.
* The hook it arms is the standard library's own (the C function behind ``debug.sethook``), which calls
  the Lua function registered for that coroutine. Each task registers its function when it starts, with an
  empty mask (``debug.sethook(fn, "")``): registered, not armed, so it costs nothing until armed.
* The coroutine's ``lua_State*`` comes from lupa's thread object, at an offset found once at start-up by
  comparing a live coroutine's address (``tostring(coroutine.running())``) with the object's fields, and
  checked on a second coroutine. The watchdog holds a reference to the object while it arms, so the state
  cannot be freed under it.
* Where any of this cannot be set up (another lupa layout), :func:`new_interrupter` returns ``None`` and
  the host falls back to a count hook in every coroutine (correct, and as slow as before).

One residual race is accepted, as in ``lua.c``: arming walks the coroutine's call-info list to set its
traps while the loop thread may be calling or returning; Lua frees unused call-info records only during a
garbage-collection step, so the window is a few instructions long, once per stopped stall.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from typing import Any

from runtime.lua import engine
from runtime.lua.state import LuaRuntimeFacade, LuaThread

LUA_MASKCOUNT = 1 << 3

_PROBE = b"""
function(arm_probe)
  if arm_probe then debug.sethook(function() end, "", 0x7fffffff) end -- the library's C hook, armed
  coroutine.yield(tostring(coroutine.running()))
  if arm_probe then debug.sethook() end
end
"""


class Interrupter:
    """Arms the standard library's count hook in a coroutine that another thread is running."""

    def __init__(self, lib: ctypes.CDLL, hook: int, offset: int) -> None:
        self._sethook: Any = lib.lua_sethook
        self._hook = hook
        self._offset = offset

    def state_of(self, co: LuaThread) -> int:
        """The ``lua_State*`` of a coroutine lupa created (``fn.coroutine(...)``)."""
        return int(ctypes.c_void_p.from_address(id(co) + self._offset).value or 0)

    def arm(self, co: LuaThread) -> None:
        """Call the Lua hook registered in ``co`` before its next instruction. ``co`` must stay referenced
        by the caller until this returns (so its state is alive)."""
        state = self.state_of(co)
        if state:
            self._sethook(state, self._hook, LUA_MASKCOUNT, 1)


def _address(text: object) -> int:
    assert isinstance(text, bytes) and text.startswith(b"thread: ")
    return int(text.split(b": ", 1)[1], 16)


def new_interrupter(lua: LuaRuntimeFacade) -> Interrupter | None:
    """Find what arming needs in this lupa build; ``None`` if anything does not check out."""
    try:
        lib = ctypes.CDLL(engine.lupa_module().__file__)
        lib.lua_sethook.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        lib.lua_sethook.restype = None
        lib.lua_gethook.argtypes = [ctypes.c_void_p]
        lib.lua_gethook.restype = ctypes.c_void_p
        lib.lua_gethookmask.argtypes = [ctypes.c_void_p]
        lib.lua_gethookmask.restype = ctypes.c_int
        probe = lua.eval(_PROBE)
        first: Any = probe.coroutine(True)
        state = _address(first.send(None))
        hook = lib.lua_gethook(state)
        if not hook or lib.lua_gethookmask(state) != LUA_MASKCOUNT:
            return None
        words = sys.getsizeof(first) // ctypes.sizeof(ctypes.c_void_p)
        fields = (ctypes.c_void_p * words).from_address(id(first))
        found = [i for i in range(words) if fields[i] == state]
        _finish(first)
        if len(found) != 1:
            return None
        interrupter = Interrupter(lib, int(hook), found[0] * ctypes.sizeof(ctypes.c_void_p))
        second: Any = probe.coroutine(False)
        ok = _address(second.send(None)) == interrupter.state_of(second)
        _finish(second)
        return interrupter if ok else None
    except (OSError, AttributeError, AssertionError, ValueError):
        return None


def _finish(co: Any) -> None:
    with contextlib.suppress(StopIteration):
        co.send(None)
