"""The embedded database: SQLite through aiosqlite, one writer and several readers, never on the loop thread.

* Every connection is an aiosqlite connection, i.e. its own thread; queries never run on the event loop.
* WAL mode: readers (``db.query``) run in parallel with the single writer (``db.exec``, transactions).
  Writes are serialised by one lock; a transaction holds it from BEGIN IMMEDIATE to COMMIT/ROLLBACK.
* A busy timeout waits for locks held by other processes; past it the error is ``database is locked``.
* A per-query timeout really stops the query: awaiting is abandoned *and* ``interrupt()`` is called, since
  cancelling an aiosqlite await leaves the query running in its thread.
* Values keep SQLite's types: integer, real, text and blob arrive in Lua as numbers and strings, NULL as nil.
  A Lua string that is valid UTF-8 is bound as TEXT, any other as a BLOB (``db.blob(s)`` forces a BLOB).
* A task that ends while it holds a transaction (an error, a cancel, its connection closed) has it rolled
  back, so the writer is never left locked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sqlite3
from pathlib import Path
from typing import Any

import aiosqlite

from runtime.config import Limits
from runtime.kernel.core import SUSPEND, Kernel
from runtime.kernel.ops import Op
from runtime.kernel.task import Extra, Task
from runtime.lua.values import NotPlainError, from_plain, to_plain
from runtime.services.background import Background
from runtime.threads import LowPrioritySQLite

log = logging.getLogger("moonlet")

BLOB_KEY = b"__moonlet_blob"


class QueryTimeoutError(Exception):
    """A query ran past the per-query timeout (it has been interrupted)."""


class Transaction:
    """The writer, held by one task between DB_BEGIN and DB_END."""

    __slots__ = ("db", "open", "task")

    def __init__(self, db: DatabaseService, task: Task) -> None:
        self.db = db
        self.task = task
        self.open = True


def _bind(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value
    if isinstance(value, dict) and BLOB_KEY in value:
        return value[BLOB_KEY]
    if isinstance(value, list | dict):
        raise NotPlainError("a table cannot be bound as a query parameter (use db.blob(s) for bytes)")
    return value


def _params(plain: Any) -> tuple[Any, ...] | dict[str, Any]:
    """Lua's parameters: counted positional values or one array for ``?``, a table of names for ``:name``."""
    if isinstance(plain, list):  # one array of values: positional
        return tuple(_bind(v) for v in plain)
    if not isinstance(plain, dict):
        return ()
    if b"#" in plain:  # positional values, counted (see db.lua)
        count = int(plain[b"#"])
        return tuple(_bind(plain.get(i)) for i in range(1, count + 1))
    return {(k.decode() if isinstance(k, bytes) else str(k)): _bind(v) for k, v in plain.items()}


class DatabaseService:
    def __init__(self, kernel: Kernel, loop: asyncio.AbstractEventLoop, limits: Limits, path: str) -> None:
        self.kernel = kernel
        self.loop = loop
        self.limits = limits
        self.path = path
        self.lua: Any = None  # the main Lua state, to build replies in (set by the host)
        self._writer: aiosqlite.Connection | None = None
        self._readers: list[aiosqlite.Connection] = []
        self._next_reader = 0
        self._write_lock = asyncio.Lock()
        self._open_lock = asyncio.Lock()
        self._ready = False
        self.background = Background(loop)
        kernel.register(Op.DB_QUERY, self._query)
        kernel.register(Op.DB_EXEC, self._exec)
        kernel.register(Op.DB_BEGIN, self._begin)
        kernel.register(Op.DB_END, self._end)

    # -- requests: each starts one asyncio task and resumes the Lua task with its reply ------------
    def _query(self, task: Task, tx: object, sql: object, params: object) -> object:
        return self._start(task, self._run_query(tx, sql, params))

    def _exec(self, task: Task, tx: object, sql: object, params: object) -> object:
        return self._start(task, self._run_exec(tx, sql, params))

    def _begin(self, task: Task, _a: object, _b: object, _c: object) -> object:
        return self._start(task, self._run_begin(task))

    def _end(self, task: Task, tx: object, commit: object, _c: object) -> object:
        if not isinstance(tx, Transaction) or tx.task is not task:
            raise TypeError("db: not this task's transaction")
        return self._start(task, self._finish(tx, bool(commit)))

    def _start(self, task: Task, work: Any) -> object:
        self.background.run(self._reply(task, work))
        return SUSPEND

    async def _reply(self, task: Task, work: Any) -> None:
        try:
            reply = await work
        except QueryTimeoutError:
            reply = (None, b"timeout")
        except NotPlainError as e:
            reply = (None, str(e).encode())
        except (sqlite3.Error, ValueError, OSError) as e:
            reply = (None, f"database error: {e}".encode())
        self.kernel.resume(task, reply)

    # -- the work ----------------------------------------------------------------------------------
    async def _run_query(self, tx: object, sql: object, params: object) -> object:
        conn = await self._conn_for(tx, write=False)
        rows, names = await self._timed(conn, self._fetch(conn, self._sql(sql), _params(to_plain(params))))
        return from_plain(self.lua, [dict(zip(names, row, strict=True)) for row in rows])

    async def _run_exec(self, tx: object, sql: object, params: object) -> object:
        text, bound = self._sql(sql), _params(to_plain(params))
        if isinstance(tx, Transaction):
            conn = await self._conn_for(tx, write=True)
            changes, last_id = await self._timed(conn, self._change(conn, text, bound))
        else:
            await self._open()
            async with self._write_lock:
                conn = await self._conn_for(None, write=True)
                changes, last_id = await self._timed(conn, self._change(conn, text, bound))
        return from_plain(self.lua, {b"changes": changes, b"last_id": last_id})

    async def _run_begin(self, task: Task) -> object:
        await self._open()
        await self._write_lock.acquire()
        try:
            assert self._writer is not None
            await self._writer.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._write_lock.release()
            raise
        tx = Transaction(self, task)
        if task.extra is None:
            task.extra = Extra()
        task.extra.on_end.append(lambda: self._abandon(tx))
        return tx

    async def _finish(self, tx: Transaction, commit: bool) -> object:
        if not tx.open:
            return (None, b"transaction already ended")
        tx.open = False
        assert self._writer is not None
        try:
            await self._writer.execute("COMMIT" if commit else "ROLLBACK")
        except sqlite3.Error:
            with contextlib.suppress(sqlite3.Error):
                await self._writer.execute("ROLLBACK")
            raise
        finally:
            self._write_lock.release()
        return True

    def _abandon(self, tx: Transaction) -> None:
        """The task ended inside its transaction: roll it back and free the writer."""
        if tx.open:
            log.warning("rolling back a transaction left open by %s", tx.task.describe())
            self.background.run(self._finish(tx, commit=False))

    # -- helpers -----------------------------------------------------------------------------------
    @staticmethod
    def _sql(sql: object) -> str:
        if not isinstance(sql, bytes):
            raise ValueError("SQL must be a string")
        return sql.decode("utf-8")

    @staticmethod
    async def _fetch(conn: aiosqlite.Connection, sql: str, params: Any) -> tuple[list[Any], list[bytes]]:
        async with conn.execute(sql, params) as cursor:
            rows = list(await cursor.fetchall())
            names = [str(d[0]).encode() for d in cursor.description or ()]
        return rows, names

    @staticmethod
    async def _change(conn: aiosqlite.Connection, sql: str, params: Any) -> tuple[int, int | None]:
        async with conn.execute(sql, params) as cursor:
            return cursor.rowcount, cursor.lastrowid

    async def _timed(self, conn: aiosqlite.Connection, work: Any) -> Any:
        timeout = self.limits.db_query_timeout
        if timeout == math.inf:
            return await work
        try:
            return await asyncio.wait_for(work, timeout)
        except TimeoutError:
            await conn.interrupt()  # stop it in its thread too
            raise QueryTimeoutError from None

    async def _conn_for(self, tx: object, write: bool) -> aiosqlite.Connection:
        await self._open()
        if isinstance(tx, Transaction):
            if not tx.open:
                raise ValueError("the transaction has ended")
            assert self._writer is not None
            return self._writer
        if write:
            assert self._writer is not None
            return self._writer
        reader = self._readers[self._next_reader % len(self._readers)]
        self._next_reader += 1
        return reader

    async def _open(self) -> None:
        if self._ready:
            return
        async with self._open_lock:
            if self._ready:
                return
            try:
                await self._connect()
            except BaseException:
                await self._close_all()
                raise
            self._ready = True

    async def _connect(self) -> None:
        busy_ms = int(self.limits.db_busy_timeout * 1000)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        writer = await aiosqlite.connect(self.path, isolation_level=None, factory=LowPrioritySQLite)
        self._writer = writer
        writer.text_factory = bytes
        await writer.execute(f"PRAGMA busy_timeout = {busy_ms}")
        await writer.execute("PRAGMA journal_mode = WAL")
        await writer.execute("PRAGMA synchronous = NORMAL")  # with WAL: a commit survives a process crash
        for _ in range(self.limits.db_readers):
            reader = await aiosqlite.connect(self.path, isolation_level=None, factory=LowPrioritySQLite)
            reader.text_factory = bytes
            await reader.execute(f"PRAGMA busy_timeout = {busy_ms}")
            await reader.execute("PRAGMA query_only = ON")
            self._readers.append(reader)

    async def _close_all(self) -> None:
        conns = [c for c in [self._writer, *self._readers] if c is not None]
        self._writer, self._readers, self._ready = None, [], False
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.close()

    async def close(self) -> None:
        """At shutdown: finish what is running, then close every connection."""
        if self.background.jobs:
            await asyncio.wait(list(self.background.jobs), timeout=self.limits.db_query_timeout)
        await self._close_all()
