"""Host handles: what Lua holds for a host object is a number, never the object itself.

Why not the object: lupa (2.8) wraps a Python object in a userdata and remembers the wrapper by the object's
address in a weak table of the Lua registry. When Lua drops a wrapper, the collector clears its entry before
the wrapper's finalizer runs; a wrapper made meanwhile can take the cleared slot, and the same object handed
to Lua again is then looked up in that slot and arrives as *another* object's wrapper. Under load this handed
an HTTP request worker a different connection (and once the console's session) than the one the host gave
it (issue 28; ``tests/test_handover.py`` shows the hazard in lupa alone). An object converted into Lua once
and never again never reads that cache, so the rule here is: **no host object crosses into Lua twice** -- in
practice, none crosses at all. Each gets a number the first time it is handed out, Lua passes the number
back, and the kernel turns it into the object (and checks its kind) before an op's handler sees it.

Rules:

* Numbers are never reused in a process, so a stale number can never name a newer object.
* A *host-held* number (:meth:`Handles.number`) resolves while the host keeps the object in use; the owner
  retires it when that use ends (a connection lost and served by no task, a listener closed, a task ended).
  A retired number resolves to its kind's stand-in (:meth:`Handles.set_gone`): an object of that kind in its
  final state, so an op on it answers as it would on the closed object (``nil, "closed"``), not as misuse.
* A *Lua-held* number (:meth:`Handles.hold`) is also owned by a Lua table (a task, a database, a transaction,
  a rows query, a pool job) whose ``__gc`` gives it back with ``RELEASE``; the object is forgotten once every
  such table has been collected and the host has retired it. So ``task:wait()`` on a task that ended long ago
  still finds its results.
* :func:`check_plain` is the boundary's check, on in the test suite (``MOONLET_CHECK_CROSSING=1``): a value
  about to cross into Lua that holds a host object is a bug at its site, raised at once.
  With it, a call's handler that keeps a Lua object handed to it is one too (``Kernel.call``:
  ``check_not_kept``): lupa ties such an object to the calling coroutine, and kept past it, it crashes the
  process when it is used or released, long after.
"""

from __future__ import annotations

import os
from typing import Any, Final

CHECK_CROSSING: Final = os.environ.get("MOONLET_CHECK_CROSSING") == "1"


class Handles:
    """The numbers Lua holds for host objects, and the objects they stand for (one per Lua state)."""

    __slots__ = ("_gone", "_held", "_next", "_objects", "_retired")

    def __init__(self) -> None:
        self._objects: dict[int, Any] = {}
        self._held: dict[int, int] = {}  # number -> Lua tables holding it (Lua-held numbers only)
        self._retired: set[int] = set()  # held numbers the host is done with, waiting for their last RELEASE
        self._next = 0
        self._gone: dict[type, Any] = {}

    def __len__(self) -> int:
        return len(self._objects)

    def number(self, obj: Any) -> int:
        """The number Lua gets for ``obj`` (``obj.handle``, given the first time)."""
        n: int = obj.handle
        if n == 0:
            self._next = n = self._next + 1
            obj.handle = n
            self._objects[n] = obj
        return n

    def hold(self, obj: Any, host_done: bool = False) -> int:
        """``obj``'s number for a Lua table that gives it back with ``RELEASE`` when collected;
        ``host_done``: the host needs no number for it itself (forgotten at the last release)."""
        n = self.number(obj)
        self._held[n] = self._held.get(n, 0) + 1
        if host_done:
            self._retired.add(n)
        return n

    def release(self, n: object) -> None:
        """A Lua table holding number ``n`` was collected."""
        if type(n) is not int:
            return
        left = self._held.get(n, 0) - 1
        if left > 0:
            self._held[n] = left
            return
        self._held.pop(n, None)
        if n in self._retired:
            self._retired.discard(n)
            self._objects.pop(n, None)

    def retire(self, obj: Any) -> None:
        """The host is done with ``obj``: its number now names its kind's stand-in (once no Lua table holds
        it)."""
        n: int = obj.handle
        if n == 0 or n not in self._objects:
            return
        if n in self._held:
            self._retired.add(n)
        else:
            del self._objects[n]

    def get(self, n: object) -> Any:
        """The object number ``n`` stands for; the kind's stand-in is not looked up here (None)."""
        return self._objects.get(n) if type(n) is int else None

    def resolve(self, n: object, kind: type) -> Any:
        """The ``kind`` object number ``n`` names: the live one, the stand-in if it was retired, or None
        (not a number this process gave out, or one of another kind)."""
        obj = self._objects.get(n) if type(n) is int else None
        if type(obj) is kind:
            return obj
        if obj is None and type(n) is int and 0 < n <= self._next:
            return self._gone.get(kind)
        return None

    def found(self, n: object) -> Any:
        """What a refused argument was, for the error message: the object a number names, else the value."""
        obj = self._objects.get(n) if type(n) is int else None
        return n if obj is None else obj

    def set_gone(self, kind: type, stand_in: object) -> None:
        """What a retired number of ``kind`` resolves to (an object of that kind in its final state)."""
        self._gone[kind] = stand_in

    def statistics(self) -> dict[str, int]:
        return {"handles": len(self._objects)}


_PLAIN: Final = (bytes, int, float, bool, str, type(None))


def check_plain(value: object, where: str, lua_object: type) -> None:
    """Raise if ``value`` (a reply, a call's result, a task's arguments) would hand Lua a host object."""
    values = value if type(value) is tuple else (value,)
    for v in values:
        if isinstance(v, (*_PLAIN, lua_object)):
            continue
        raise AssertionError(f"{where} hands Lua a {type(v).__name__}: host objects cross as numbers")
