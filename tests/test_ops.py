"""The request vocabulary is closed: defined once in Python, used by name in Lua, each with one handler."""

from __future__ import annotations

import re
import sys

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


def declared_arity() -> dict[str, int]:
    """Each op's arguments as its declaration in ops.py names them (the parenthesised list that starts its
    signature; a table's fields are one argument)."""
    arity: dict[str, int] = {}
    for op in Op:
        m = re.match(r"\(([^)]*)\)", op.signature)
        assert m, f"{op.name}: its signature does not start with its arguments: {op.signature!r}"
        params = re.sub(r"\{[^}]*\}", "T", m.group(1))
        arity[op.name] = 0 if not params.strip() else len(params.split(","))
    return arity


def call_arguments(source: str, start: int) -> list[str]:
    """The top-level arguments of the call whose '(' is at ``start``."""
    depth, quote, args, current = 0, "", [], []
    i = start + 1
    while i < len(source):
        c = source[i]
        if quote:
            if c == "\\":
                current.append(source[i : i + 2])
                i += 2
                continue
            if c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            if depth == 0:
                args.append("".join(current).strip())
                return [a for a in args if a]
            depth -= 1
        elif c == "," and depth == 0:
            args.append("".join(current).strip())
            current = []
            i += 1
            continue
        current.append(c)
        i += 1
    raise AssertionError("unbalanced call")


def test_every_lua_call_site_passes_what_its_op_declares() -> None:
    """A request or call made with an op (by name, or a local alias of it) passes no more arguments than the
    op's declaration in ops.py names; every op has a declaration."""
    arity = declared_arity()
    assert set(arity) == {op.name for op in Op}, {op.name for op in Op} - set(arity)
    checked, wrong = 0, []
    for name, source in lua_sources().items():
        aliases: dict[str, str] = {}
        for m in re.finditer(r"local ([\w, ]+?)\s*=\s*((?:OP\.\w+\s*,?\s*)+)", source):
            names = [n.strip() for n in m.group(1).split(",")]
            ops = re.findall(r"OP\.(\w+)", m.group(2))
            aliases.update(dict(zip(names, ops, strict=False)))
        for m in re.finditer(r"(?<![\w:.])(?:host\.|door\.)?(request|call)\(", source):
            args = call_arguments(source, m.end() - 1)
            if not args:
                continue
            op = args[0][3:] if args[0].startswith("OP.") else aliases.get(args[0])
            if op is None or op not in arity:
                continue
            checked += 1
            if len(args) - 1 > arity[op]:
                line = source[: m.start()].count("\n") + 1
                wrong.append(f"{name}:{line}: {op} takes {arity[op]}, given {len(args) - 1}")
    assert checked > 60, checked
    assert wrong == [], wrong


def test_every_handler_takes_exactly_what_its_op_declares() -> None:
    """The arguments ops.py declares for each op are the ones its handler names (after the task, for a
    yielding request; a parameter named ``_...`` pads to the door's fixed three): one declaration, checked
    against the code that reads it. (A Lua call site may pass fewer: Lua's missing arguments are nil.)"""
    import asyncio
    import inspect

    from runtime.config import Limits
    from runtime.services.registry import wire_services

    arity = declared_arity()
    loop = asyncio.new_event_loop()
    try:
        kernel = Kernel(loop.call_soon)
        wire_services(kernel, loop, Limits())
        wrong = []
        for op in Op:
            handler = (kernel._handlers if op.yields else kernel._calls)[op]
            params = list(inspect.signature(handler).parameters)[1 if op.yields else 0 :]  # type: ignore[arg-type]
            named = [p for p in params if not p.startswith("_")]
            if len(named) != arity[op.name]:
                wrong.append(f"{op.name}: declares {arity[op.name]}, its handler takes {named}")
        assert wrong == [], wrong
    finally:
        loop.close()


def test_every_service_declares_the_ops_it_serves() -> None:
    """Each op's handler is a method of the service whose SERVES names it, and each service serves all it
    names: the ops a service owns are declared once, beside it (EXIT and RELEASE are the kernel's own)."""
    import asyncio

    from runtime.config import Limits
    from runtime.services.registry import wire_services

    loop = asyncio.new_event_loop()
    try:
        kernel = Kernel(loop.call_soon)
        wire_services(kernel, loop, Limits())
        served: dict[type, set[Op]] = {}
        for op in Op:
            if op in (Op.EXIT, Op.RELEASE):
                continue
            handler = (kernel._handlers if op.yields else kernel._calls)[op]
            # (a method's class; a static method's too, from where it was defined)
            module = sys.modules[handler.__module__]  # type: ignore[union-attr]
            owner = getattr(module, handler.__qualname__.split(".")[0])  # type: ignore[union-attr]
            assert op in getattr(owner, "SERVES", frozenset()), f"{op.name} is served by {owner.__name__}"
            served.setdefault(owner, set()).add(op)
        for owner, ops in served.items():
            assert ops == set(owner.SERVES), (owner.__name__, set(owner.SERVES) - ops)  # type: ignore[attr-defined]
    finally:
        loop.close()
