"""``moonlet.shared``: dictionaries shared by every worker of a server (like OpenResty's ``ngx.shared``).

Built on LMDB (a memory-mapped, transactional key-value store): every operation is one LMDB transaction,
and write transactions are serialised across processes, so ``incr`` and ``add`` are atomic across workers.
Operations take microseconds and run on the loop thread as calls: commits are not synced to disk (it is a
dictionary shared by workers, not a database; ``bench/lua/shared_ops.lua`` measures it). Values are
strings, numbers or booleans, stored with their type and an optional expiry; an expired key reads as absent.

Where: ``$MOONLET_SHARED_DIR`` (set by the supervisor for all its workers), or a directory of this process.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Callable
from typing import Any, ClassVar

import lmdb

from runtime.kernel.core import Kernel
from runtime.kernel.ops import Op
from runtime.lua.values import to_plain
from runtime.services import Defaults

MAP_SIZE = 1 << 30  # address space reserved for the store (the file grows with use)
_HEAD = struct.Struct("<dc")  # expiry (0: never), type


def _encode(value: object, ttl: object, now: float) -> bytes:
    expires = now + ttl if isinstance(ttl, int | float) and ttl > 0 else 0.0
    if isinstance(value, bool):
        return _HEAD.pack(expires, b"b") + (b"1" if value else b"0")
    if isinstance(value, int):
        return _HEAD.pack(expires, b"i") + str(value).encode()
    if isinstance(value, float):
        return _HEAD.pack(expires, b"f") + repr(value).encode()
    if isinstance(value, bytes):
        return _HEAD.pack(expires, b"s") + value
    raise TypeError("shared dictionaries hold strings, numbers and booleans")


def _decode(raw: bytes | None, now: float) -> tuple[object, bool]:
    """(value, present): absent or expired keys are (None, False)."""
    if raw is None:
        return None, False
    expires, kind = _HEAD.unpack_from(raw)
    if expires and expires <= now:
        return None, False
    body = raw[_HEAD.size :]
    if kind == b"b":
        return body == b"1", True
    if kind == b"i":
        return int(body), True
    if kind == b"f":
        return float(body), True
    return bytes(body), True


class SharedService(Defaults):
    SERVES: ClassVar[frozenset[Op]] = frozenset(
        {Op.SHARED_DELETE, Op.SHARED_GET, Op.SHARED_INCR, Op.SHARED_KEYS, Op.SHARED_SET}
    )  # (its ops)

    def __init__(self, kernel: Kernel, now: Callable[[], float] = time.time) -> None:
        self.now = now  # wall clock (moved by virtual time in moonlet test)
        given = os.environ.get("MOONLET_SHARED_DIR")
        self._own = given is None
        self.path = given or tempfile.mkdtemp(prefix="moonlet-shared-")
        self.env: Any = None
        self.dbs: dict[bytes, Any] = {}
        kernel.wire(self)  # (the ops in SERVES, each by its handler _<op>)

    def _db(self, name: object) -> Any:
        if not isinstance(name, bytes):
            raise TypeError("shared: bad dictionary name")
        db = self.dbs.get(name)
        if db is None:
            if self.env is None:
                # no disk sync per commit (LMDB's default, ~0.3 ms a write here): a write is in the shared
                # memory map for every worker at once; a crash of the machine loses the store, a crash of a
                # worker does not (the store lives as long as the server, in a directory made for it)
                self.env = lmdb.open(
                    self.path,
                    map_size=MAP_SIZE,
                    max_dbs=256,
                    subdir=True,
                    lock=True,
                    sync=False,
                    metasync=False,
                )
            db = self.dbs[name] = self.env.open_db(name)
        return db

    def _shared_get(self, name: object, key: object, _c: object) -> object:
        db = self._db(name)
        with self.env.begin(db=db) as txn:
            value, present = _decode(txn.get(key), self.now())
        return value if present else None

    def _shared_set(self, name: object, key: object, value: object, how: object = None) -> object:
        """how: {mode = "set" | "add" | "replace", ttl = seconds (0: none)}; value nil deletes."""
        db = self._db(name)
        options = to_plain(how) if how is not None else {}
        if not isinstance(options, dict):
            options = {}
        mode = options.get(b"mode", b"set")
        ttl_value = options.get(b"ttl", 0)
        ttl = float(ttl_value) if isinstance(ttl_value, int | float) else 0.0
        with self.env.begin(db=db, write=True) as txn:
            _, present = _decode(txn.get(key), self.now())
            if mode == b"add" and present:
                return (False, b"exists")
            if mode == b"replace" and not present:
                return (False, b"not found")
            if value is None:
                txn.delete(key)
            else:
                txn.put(key, _encode(value, ttl, self.now()))
        return True

    def _shared_incr(self, name: object, key: object, by: object, init: object = None) -> object:
        db = self._db(name)
        if not isinstance(by, int | float):
            raise TypeError("shared: incr needs a number")
        with self.env.begin(db=db, write=True) as txn:
            raw = txn.get(key)
            now = self.now()
            current, present = _decode(raw, now)
            expires = _HEAD.unpack_from(raw)[0] if present and raw is not None else 0.0
            if not present:
                if init is None:
                    return (None, b"not found")
                current = init
            if not isinstance(current, int | float) or isinstance(current, bool):
                return (None, b"not a number")
            new = current + by
            ttl = expires - now if expires else None
            txn.put(key, _encode(new, ttl, now))
        return new

    def _shared_delete(self, name: object, key: object, _c: object) -> object:
        db = self._db(name)
        with self.env.begin(db=db, write=True) as txn:
            txn.delete(key)
        return True

    def _shared_keys(self, name: object, limit: object, _c: object) -> object:
        db = self._db(name)
        out: list[bytes] = []
        most = int(limit) if isinstance(limit, int) and limit > 0 else 1024
        now = self.now()
        with self.env.begin(db=db) as txn:
            for key, raw in txn.cursor():
                if _decode(raw, now)[1]:
                    out.append(bytes(key))
                    if len(out) >= most:
                        break
        return self.lua.table_from(out)

    def update(self, name: bytes, put: dict[bytes, object], add: dict[bytes, int | float]) -> None:
        """One write transaction (the runtime's metrics, runtime/services/metrics.py): the keys of ``put``
        set (None deletes), the numbers of ``add`` added to what their keys hold (0 when absent)."""
        db = self._db(name)
        now = self.now()
        with self.env.begin(db=db, write=True) as txn:
            for key, value in put.items():
                if value is None:
                    txn.delete(key)
                else:
                    txn.put(key, _encode(value, 0, now))
            for key, by in add.items():
                current, present = _decode(txn.get(key), now)
                if not present or not isinstance(current, int | float) or isinstance(current, bool):
                    current = 0
                txn.put(key, _encode(current + by, 0, now))

    # -- the service's lifecycle (runtime/services/__init__.py) -------------------------------------
    def keeps_alive(self) -> bool:
        return False

    def drain(self) -> None:
        pass

    def console_rows(self, topic: str) -> list[str]:
        return []

    def statistics(self) -> dict[str, int | float]:
        return {"shared_dicts": len(self.dbs)}

    async def close(self) -> None:
        if self.env is not None:
            self.env.close()
        if self._own:
            with contextlib.suppress(OSError):
                shutil.rmtree(self.path)
