"""Logging and standard output for Lua code (calls; they never suspend)."""

from __future__ import annotations

import logging
import sys

from runtime.kernel.core import Kernel
from runtime.kernel.ops import Op

app_log = logging.getLogger("moonlet.app")

_LEVELS = {b"debug": logging.DEBUG, b"info": logging.INFO, b"warn": logging.WARNING, b"error": logging.ERROR}


class SystemService:
    def __init__(self, kernel: Kernel) -> None:
        kernel.register_call(Op.LOG, self._log)
        kernel.register_call(Op.PRINT, self._print)

    def _log(self, level: bytes, message: bytes, _: object) -> object:
        app_log.log(_LEVELS.get(level, logging.INFO), "%s", message.decode("utf-8", "replace"))
        return True

    def _print(self, text: bytes, _a: object, _b: object) -> object:
        out = sys.stdout.buffer
        out.write(text)
        out.flush()
        return True
