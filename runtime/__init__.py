"""moonlet: a Lua-first scripting runtime for network servers, hosted by Python on uvloop.

The public Python surface is small on purpose (pinned by ``tests/test_public_api.py``): people program moonlet
in Lua; Python code embeds it through :class:`Host`.
"""

from runtime.config import Limits
from runtime.errors import AppLoadError, MoonletError
from runtime.host import Host

__version__ = "0.1.0"

__all__ = ["AppLoadError", "Host", "Limits", "MoonletError", "__version__"]
