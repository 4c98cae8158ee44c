"""The request vocabulary is closed: defined once in Python, used by name in Lua, each with one handler."""

from __future__ import annotations

import re

from conftest import ROOT
from runtime.kernel.core import Kernel
from runtime.kernel.ops import Op


def lua_sources() -> dict[str, str]:
    base = ROOT / "stdlib_lua" / "moonlet"
    return {str(p.relative_to(base)): p.read_text() for p in base.rglob("*.lua")}


def test_every_op_named_in_the_lua_stdlib_exists() -> None:
    used = set()
    for source in lua_sources().values():
        used |= set(re.findall(r"\bOP\.([A-Z_]+)", source))
    assert used, "the stdlib names no ops?"
    assert used <= {op.name for op in Op}, used - {op.name for op in Op}


def test_only_the_door_yields_to_the_host() -> None:
    for name, source in lua_sources().items():
        if name in ("_host.lua", "_bootstrap.lua"):
            continue
        assert "coroutine.yield" not in source and "raw_yield" not in source, name


def test_every_op_has_exactly_one_handler() -> None:
    import asyncio

    from runtime.config import Limits
    from runtime.services.registry import wire_services

    loop = asyncio.new_event_loop()
    try:
        kernel = Kernel(loop.call_soon)
        wire_services(kernel, loop, Limits())  # asserts that no op is left without a handler
        assert kernel.missing_handlers() == []
    finally:
        loop.close()


def test_a_yield_outside_the_apps_coroutines_is_a_lua_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from conftest import run_script

    # (it used to reach the kernel as a request; now it is standard Lua's error, with the app's line)
    result = run_script(tmp_path, "coroutine.yield('hello')")
    assert result.returncode == 1
    assert b"attempt to yield from outside a coroutine" in result.stderr
    assert b"script.lua:1" in result.stderr
