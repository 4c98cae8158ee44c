"""moonlet: a Lua-first scripting runtime for network servers, hosted by Python on uvloop.

The public Python surface is small on purpose (pinned by ``tests/test_public_api.py``): people program moonlet
in Lua; Python code embeds it through :class:`Host`. ``Host`` is imported on first use, so that a command can
choose the Lua engine (``runtime.lua.engine``) before lupa is loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runtime.config import Limits
from runtime.errors import AppLoadError, MoonletError

if TYPE_CHECKING:
    from runtime.host import Host

__version__ = "0.1.0"

__all__ = ["AppLoadError", "Host", "Limits", "MoonletError", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Host":
        from runtime.host import Host  # noqa: PLC0415 (lupa loads with the host, once the engine is chosen)

        return Host
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
