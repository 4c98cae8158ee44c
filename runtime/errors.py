"""One root for every exception the host raises; each subclass says who raises it and when.

Operational failures seen by Lua code are *not* exceptions: they come back as ``nil, err`` with one of the
documented error strings in :data:`runtime.services.stream.ERRORS`. These classes are for the host itself.
"""

from __future__ import annotations


class MoonletError(Exception):
    """Root of every error raised by the moonlet host."""


class AppLoadError(MoonletError):
    """The app file could not be found, read or compiled (raised by ``Host.run`` before serving)."""
