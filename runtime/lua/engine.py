"""Which Lua runs a process' code: Lua 5.4 (the default) or LuaJIT 2.1, both from the lupa wheel.

Rules:

1. One engine per process, chosen before the first Lua state is built: ``--engine`` of ``moonlet run`` and
   ``moonlet test``, else the ``MOONLET_ENGINE`` environment variable, else ``lua54``. The choice is written
   back to the environment, so worker processes, test processes and pool threads run the same engine.
2. Choosing another engine once lupa's module is loaded is an error, never a silent mix: lupa's error
   classes, its coroutine type and its number conversions differ between the two modules.
3. What the engines trade is stated in the README (Engines): LuaJIT is faster and has no 64-bit integers,
   no Lua 5.4 syntax (``//``, ``<close>``, bit operators) and no hooks inside compiled code; the stdlib's
   compat layer (``stdlib_lua/moonlet/_compat.lua``) fills in what it can, and the host keeps what
   differs for it in ``state.py`` (memory), ``services/tasks.py`` (stalls) and ``_host.lua`` (hooks).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

ENGINES = {"lua54": "lupa.lua54", "luajit": "lupa.luajit21"}
DEFAULT = "lua54"
VARIABLE = "MOONLET_ENGINE"


def requested() -> str:
    """The engine this process runs (rule 1); a ValueError names the choices for any other value."""
    name = os.environ.get(VARIABLE) or DEFAULT
    if name not in ENGINES:
        raise ValueError(f"unknown Lua engine {name!r} ({VARIABLE}): choose {' or '.join(ENGINES)}")
    return name


def choose(name: str) -> None:
    """Run this process (and the processes it starts) on engine ``name`` (rule 2)."""
    if name not in ENGINES:
        raise ValueError(f"unknown Lua engine {name!r}: choose {' or '.join(ENGINES)}")
    if _running is not None and _running != name:
        raise ValueError(f"this process already runs {_running}: the engine is chosen before the first state")
    os.environ[VARIABLE] = name


_running: str | None = None  # fixed by the first lupa_module()


def current() -> str:
    """The engine this process runs, or will run once its first state is built."""
    return _running or requested()


def lupa_module() -> ModuleType:
    """lupa's module for the engine this process runs; the first call fixes the engine."""
    global _running
    if _running is None:
        _running = requested()
    return importlib.import_module(ENGINES[_running])
