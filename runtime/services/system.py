"""Logging and standard output for Lua code (calls; they never suspend)."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any, ClassVar, Protocol, runtime_checkable

from runtime.config import REPORT_FD_ENV, REPORT_PREFIX
from runtime.kernel.core import Kernel
from runtime.kernel.ops import Op
from runtime.lua.values import to_plain
from runtime.services import Quiet

app_log = logging.getLogger("moonlet.app")


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {(k.decode() if isinstance(k, bytes) else str(k)): _jsonable(v) for k, v in value.items()}
    return value


@runtime_checkable
class PrintTarget(Protocol):
    """Where ``print`` goes instead of standard output (a console session)."""

    def print_text(self, text: bytes) -> None: ...


_LEVELS = {b"debug": logging.DEBUG, b"info": logging.INFO, b"warn": logging.WARNING, b"error": logging.ERROR}


class SystemService(Quiet):
    SERVES: ClassVar[frozenset[Op]] = frozenset({Op.LOG, Op.PRINT, Op.REPORT})  # (its ops)

    def __init__(self, kernel: Kernel) -> None:
        # reports go to the descriptor the tool passed down, if any (see runtime/config.py), else stdout
        fd = os.environ.pop(REPORT_FD_ENV, None)
        self._reports: Any = sys.stdout.buffer
        if fd is not None and fd.isdigit():
            os.set_inheritable(int(fd), False)  # (not handed on to what the code under test starts)
            self._reports = os.fdopen(int(fd), "wb", buffering=0)
        self.kernel = kernel
        kernel.wire(self)  # (the ops in SERVES, each by its handler _<op>)

    def _log(self, level: bytes, message: bytes, _: object) -> object:
        app_log.log(_LEVELS.get(level, logging.INFO), "%s", message.decode("utf-8", "replace"))
        return True

    def _report(self, kind: bytes, data: object, _: object) -> object:
        """A record for a parent process (the load generator's workers report to ``moonlet bench``)."""
        record = {"kind": kind.decode(), "data": _jsonable(to_plain(data))}
        out = self._reports
        out.write(REPORT_PREFIX + json.dumps(record).encode() + b"\n")
        out.flush()
        return True

    def _print(self, text: bytes, target: object, _b: object) -> object:
        if isinstance(target, PrintTarget):  # a console session's print
            target.print_text(text)
            return True
        out = sys.stdout.buffer
        out.write(text)
        out.flush()
        return True
