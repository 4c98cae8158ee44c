"""The stall guard's mechanism: a hook registered unarmed costs nothing, and another thread can arm it."""

from __future__ import annotations

import ctypes
import threading
import time

import lupa.lua54 as lupa54  # type: ignore[import-untyped]
import pytest

from runtime.lua.interrupt import Interrupter, new_interrupter
from runtime.lua.state import LuaError, new_lua_runtime


@pytest.fixture
def lua_and_interrupter():
    lua = new_lua_runtime(64 << 20)
    interrupter = new_interrupter(lua)
    assert interrupter is not None, "this lupa build cannot arm hooks: every task would pay a count hook"
    return lua, interrupter


def hook_mask(interrupter: Interrupter, co: object) -> int:
    lib = ctypes.CDLL(lupa54.__file__)
    lib.lua_gethookmask.argtypes = [ctypes.c_void_p]
    lib.lua_gethookmask.restype = ctypes.c_int
    return int(lib.lua_gethookmask(interrupter.state_of(co)))  # type: ignore[arg-type]


@pytest.mark.lua54("reads Lua 5.4's per-coroutine hook fields (LuaJIT has one hook per state)")
def test_a_registered_hook_is_unarmed_until_another_thread_arms_it(lua_and_interrupter) -> None:
    lua, interrupter = lua_and_interrupter
    spin = lua.eval(
        b"""function()
          debug.sethook(function(event) error("stopped at a " .. event .. " event", 0) end, "")
          coroutine.yield("registered")
          local n = 0
          while true do n = n + 1 end
        end"""
    )
    co = spin.coroutine()
    assert co.send(None) == b"registered"
    assert hook_mask(interrupter, co) == 0  # nothing runs before each instruction

    def arm_later() -> None:
        time.sleep(0.2)
        interrupter.arm(co)

    threading.Thread(target=arm_later).start()
    started = time.monotonic()
    with pytest.raises(LuaError, match="stopped at a count event"):
        co.send(None)
    assert 0.15 < time.monotonic() - started < 5


def test_each_coroutine_state_is_found(lua_and_interrupter) -> None:
    lua, interrupter = lua_and_interrupter
    where = lua.eval(b"function() coroutine.yield(tostring(coroutine.running())) end")
    for _ in range(3):
        co = where.coroutine()
        address = int(co.send(None).split(b": ")[1], 16)
        assert interrupter.state_of(co) == address
