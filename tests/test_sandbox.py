"""The Lua state is built by one audited function, and app code cannot reach the host or the system."""

from __future__ import annotations

import pytest

from conftest import run_script
from runtime.lua import state


def test_runtime_constructor_options_do_not_regress(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}
    real = state._lupa.LuaRuntime

    def spy(**kwargs: object) -> object:
        seen.update(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(state._lupa, "LuaRuntime", spy)
    lua = state.new_lua_runtime(64 << 20)
    assert seen["encoding"] is None
    assert seen["register_eval"] is False and seen["register_builtins"] is False
    assert seen["max_memory"] == 64 << 20
    assert callable(seen["attribute_handlers"][0])  # type: ignore[index]
    assert lua.eval(b"python") is None
    assert lua.eval(b"_VERSION") == (b"Lua 5.1" if state.LUAJIT else b"Lua 5.4")


def test_python_objects_handed_to_lua_expose_no_attributes() -> None:
    lua = state.new_lua_runtime(64 << 20)
    probe = lua.eval(b"function(obj) return pcall(function() return obj.__class__ end) end")
    ok, err = probe(object())
    assert ok is False and b"not allowed" in bytes(str(err), "utf-8")


def test_runaway_allocation_is_a_lua_memory_error_not_a_crash() -> None:
    lua = state.new_lua_runtime(32 << 20)
    hog = b"pcall(function() local t = {} for i = 1, 1e9 do t[i] = ('x'):rep(100) .. i end end)"
    try:
        ok, err = lua.eval(hog)
    except state.LuaMemoryError:  # LuaJIT: the heap, full of garbage, had no room for the results
        assert state.LUAJIT
        ok, err = False, b"not enough memory"
    assert ok is False and b"not enough memory" in err
    state.make_room(lua)  # (what the host does before it hands LuaJIT values; nothing to do on Lua 5.4)
    assert lua.eval(b"1 + 1") == 2  # the state is still usable


ESCAPES = """
local results = {}
local function try(name, f)
  local ok, err = pcall(f)
  results[#results + 1] = name .. "=" .. (ok and "OPEN" or "closed")
end
try("python", function() return rawget(_G, "python").eval end)
try("io", function() return rawget(_G, "io").open end)
try("os.execute", function() return assert(os.execute) end)
try("os.exit", function() return assert(os.exit) end)
try("debug", function() return rawget(_G, "debug").getinfo end)
try("dofile", function() return assert(rawget(_G, "dofile")) end)
try("loadfile", function() return assert(rawget(_G, "loadfile")) end)
try("package.loadlib", function() return rawget(_G, "package").loadlib end)
try("binary-chunk", function() return assert(load(string.dump(function() end), "x", "b")) end)
try("private-door", function() return require("moonlet._host") end)
try("strict-read", function() return undefined_global end)
try("strict-write", function() (function() new_global = 1 end)() end)
print(table.concat(results, " "))
"""


def test_sandbox_escape_paths_are_closed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = run_script(tmp_path, ESCAPES)
    assert result.returncode == 0, result.stderr
    words = result.stdout.decode().split()
    assert len(words) == 12
    assert all(w.endswith("=closed") for w in words), words


def test_a_host_handle_held_by_lua_is_a_number_with_nothing_to_walk(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = run_script(
        tmp_path,
        """
        local net = require "moonlet.net"
        local server = assert(net.listen { port = 0, handler = function() end })
        print(pcall(function() return server._py.__class__ end))
        print(pcall(function() return server._py.server end))
        server:close()
    """,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["false", "false"]
    # (Lua 5.4: "attempt to index a number value (field '_py')"; LuaJIT: "... field '_py' (a number value)")
    assert all("attempt to index" in line and "a number value" in line for line in lines), lines
