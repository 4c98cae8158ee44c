"""The process's memory, as the console's ``\\stats`` and ``\\gc`` show it.

The resident size alone cannot tell a leak from an allocator that keeps freed pages (glibc's heaps and
Python's arenas give memory back to the system only when whole regions are free), so the live heaps are
counted too: Python's allocated blocks, and the bytes glibc's ``malloc`` has handed out (every thread's
arena: the C side of uvloop, libuv, sqlite and lupa). A leak grows a heap; fragmentation grows only the
resident size.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Callable
from typing import cast


class _Mallinfo2(ctypes.Structure):
    _fields_ = [  # (glibc's struct mallinfo2, in its order)
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                     "fordblks", "keepcost")
    ]  # fmt: skip


def _mallinfo2() -> Callable[[], _Mallinfo2] | None:
    name = ctypes.util.find_library("c")
    try:
        function = ctypes.CDLL(name).mallinfo2  # (glibc 2.33 and later)
    except (OSError, AttributeError, TypeError):
        return None
    function.restype = _Mallinfo2
    function.argtypes = []
    return cast("Callable[[], _Mallinfo2]", function)


_MALLINFO2 = _mallinfo2()


def resident_bytes() -> int:
    """The process's resident set size."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def c_heap_bytes() -> int | None:
    """Bytes in use from ``malloc`` (small blocks and mmapped ones), or None off glibc."""
    if _MALLINFO2 is None:
        return None
    info = _MALLINFO2()
    return int(info.uordblks + info.hblkhd)


def python_heap_blocks() -> int:
    """Memory blocks Python's allocator has handed out and not yet had back."""
    return sys.getallocatedblocks()
