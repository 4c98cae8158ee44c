"""Host functions: Python callables an application lets its Lua code call, as blocking jobs in a pool.

Any Python library (a blocking client, a parser, a numerical routine) becomes reachable from Lua without
stalling the event loop: register a function here and call it from Lua with ``pool.call(name, ...)``; it
runs in a pool thread (``io`` unless told otherwise), the calling coroutine waits, and every other
connection keeps being served.

    # myapp/hostfns.py   (run with: moonlet run --python myapp/hostfns.py myapp/app.lua)
    from runtime.hostfn import host_function

    @host_function("sha256", pool="cpu")
    def sha256(data: bytes) -> bytes:
        return hashlib.sha256(data).hexdigest().encode()

    -- Lua
    local digest = require("moonlet.pool").call("sha256", body)

Arguments arrive as plain Python data (Lua strings are ``bytes``, tables ``list`` or ``dict``); return plain
data (``str`` is encoded as UTF-8), or a tuple for several results. An exception becomes ``nil, err`` in Lua.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_registry: dict[str, tuple[Callable[..., Any], str]] = {}


def host_function(name: str | None = None, pool: str = "io") -> Callable[[F], F]:
    """Register the decorated callable as host function ``name`` (default: its own name)."""

    def register(fn: F) -> F:
        _registry[name or fn.__name__] = (fn, pool)
        return fn

    return register


def lookup(name: str) -> Callable[..., Any]:
    try:
        return _registry[name][0]
    except KeyError:
        raise KeyError(
            f"no host function named '{name}' (register it with runtime.hostfn.host_function)"
        ) from None


def pool_of(name: str) -> str:
    entry = _registry.get(name)
    return entry[1] if entry else "io"


def load_file(path: str) -> None:
    """Import a Python file that registers host functions (``moonlet run --python FILE``)."""
    file = Path(path)
    spec = importlib.util.spec_from_file_location(f"moonlet_hostfns_{file.stem}", file)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
