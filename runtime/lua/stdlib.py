"""Where the Lua standard library lives on disk, and the bootstrap that builds a state around it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import stdlib_lua  # a data package: only its location matters
from runtime.kernel.ops import Op
from runtime.lua.state import LuaRuntimeFacade


def stdlib_dir() -> Path:
    """``stdlib_lua/``, installed beside the ``runtime`` package (source tree, editable install or wheel)."""
    return Path(stdlib_lua.__file__).parent


DEBIAN_LUA = Path("/usr/share/lua/5.4")  # pure-Lua modules of Debian's lua-* packages


def module_dirs() -> list[Path]:
    """Where modules are found after the app's directory and its lib/: ``MOONLET_PATH`` (``--path``), the
    stdlib, then Debian's Lua 5.4 modules."""
    extra = [Path(p) for p in os.environ.get("MOONLET_PATH", "").split(os.pathsep) if p]
    dirs = [*extra, stdlib_dir()]
    if DEBIAN_LUA.is_dir():
        dirs.append(DEBIAN_LUA)
    return dirs


def bootstrap(
    lua: LuaRuntimeFacade,
    host_call: object,
    limits: dict[str, int],
    app_path: str | None,
    app_args: list[str],
) -> Any:
    """Run ``_bootstrap.lua`` in ``lua``; returns its table (``body``, ``load_main``, ``main_args``)."""
    root = stdlib_dir()
    source = (root / "moonlet" / "_bootstrap.lua").read_bytes()
    ops = lua.table_from({op.name.encode(): int(op) for op in Op})
    lua_limits = lua.table_from({k.encode(): v for k, v in limits.items()})
    lua_limits[b"module_dirs"] = lua.table_from([str(d).encode() for d in module_dirs()])
    args = lua.table_from([a.encode() for a in app_args])
    load = lua.globals()[b"load"]
    chunk = load(source, b"@" + str(root / "moonlet" / "_bootstrap.lua").encode(), b"t")
    if isinstance(chunk, tuple):  # nil, message
        raise RuntimeError(f"the Lua bootstrap does not compile: {chunk[1]!r}")
    return chunk(
        host_call, ops, lua_limits, str(root).encode(), app_path.encode() if app_path else None, args
    )
