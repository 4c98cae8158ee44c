"""SQLite through aiosqlite: one writer and several readers, each its own thread, never the loop's.

* WAL mode: readers run in parallel with the single writer. Writes are serialised by one lock; a
  transaction holds it from BEGIN IMMEDIATE to COMMIT/ROLLBACK.
* A busy timeout waits for locks held by other processes; past it the error is ``database is locked``.
* A per-query timeout really stops the query: awaiting is abandoned *and* ``interrupt()`` is called, since
  cancelling an aiosqlite await leaves the query running in its thread.
* Values keep SQLite's types: integer, real, text (as bytes) and blob; NULL is None.
* Reads are fresh: a statement on a reader starts a new snapshot, so it sees every write acknowledged
  before it. An open ``db.rows`` cursor holds its snapshot until it ends, so it never runs on a reader that
  other statements are routed to: each has a connection of its own (kept for reuse, ``MAX_CURSORS`` open
  at most; more wait for one, within the query timeout).
* An open snapshot stops checkpoints from passing it (and any open reader stops the WAL from restarting),
  so the WAL grows while a cursor is open and others write. The bound: when the WAL file passes
  ``max_wal`` bytes (checked as each write of this process is acknowledged, and every half second while
  cursors are open, for other processes' writes), every cursor open on the database in this process ends:
  its next fetch fails with ``snapshot too old``, as PostgreSQL's ``old_snapshot_threshold`` does. The WAL
  is then checkpointed and, at its restart, truncated back to ``max_wal`` (``journal_size_limit``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import sqlite3
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import aiosqlite

from runtime.databases import (
    Cursor,
    Database,
    DatabaseError,
    Options,
    Params,
    QueryTimeoutError,
    Row,
    finite,
)
from runtime.lua.values import SLICE
from runtime.threads import LowPrioritySQLite

T = TypeVar("T")

_INSERTS = re.compile(r"\s*(INSERT|REPLACE)\b", re.IGNORECASE)  # statements that set last_insert_rowid
MAX_CURSORS = 64  # db.rows loops open at once outside transactions, each on its own connection and thread
WAL_CHECK_EVERY = 0.5  # seconds between checks of the WAL's size while cursors are open


class SQLiteDatabase(Database):
    dialect = "sqlite"

    def __init__(self, path: str, options: Options) -> None:
        super().__init__("sqlite:" + path, options)
        self.path = path
        self._writer: aiosqlite.Connection | None = None
        self._readers: list[aiosqlite.Connection] = []
        self._next_reader = 0
        self._write_lock = asyncio.Lock()
        self._open_lock = asyncio.Lock()
        self._ready = False
        self._cursor_slots = asyncio.Semaphore(MAX_CURSORS)
        self._idle_cursor_conns: list[aiosqlite.Connection] = []  # kept for the next cursor
        self._cursors: set[SQLiteCursor] = set()  # open, outside transactions: each holds a snapshot
        self._wal_timer: asyncio.TimerHandle | None = None
        self._closing_work: set[asyncio.Task[None]] = set()

    # -- the interface -----------------------------------------------------------------------------
    async def query(self, session: object, sql: str, params: Params) -> list[Row]:
        conn = await self._conn_for(session, write=False)
        return await self._guarded(conn, self._fetch(conn, sql, params))

    async def exec(self, session: object, sql: str, params: Params) -> tuple[int, int | None]:
        if session is not None:
            conn = await self._conn_for(session, write=True)
            return await self._guarded(conn, self._change(conn, sql, params))
        await self._open()
        async with self._write_lock:
            conn = await self._conn_for(None, write=True)
            try:
                return await self._guarded(conn, self._change(conn, sql, params))
            except DatabaseError as e:
                await self._reopen_if_read_only(e)
                raise
            finally:
                self._check_wal()

    async def exec_many(self, session: object, sql: str, sets: list[Params]) -> tuple[int, int | None]:
        if session is not None:
            conn = await self._conn_for(session, write=True)
            return await self._guarded(conn, self._change_many(conn, sql, sets, own_transaction=False))
        await self._open()
        async with self._write_lock:
            conn = await self._conn_for(None, write=True)
            try:
                return await self._guarded(conn, self._change_many(conn, sql, sets, own_transaction=True))
            except DatabaseError as e:
                await self._reopen_if_read_only(e)
                raise
            finally:
                self._check_wal()

    async def open_cursor(self, session: object, sql: str, params: Params) -> Cursor:
        if session is not None:  # inside a transaction: on its connection, ending with it
            conn = await self._conn_for(session, write=True)
            return SQLiteCursor(self, conn, await self._guarded(conn, conn.execute(sql, params)), own=False)
        await self._open()
        try:
            await asyncio.wait_for(self._cursor_slots.acquire(), finite(self.options.query_timeout))
        except TimeoutError:
            raise QueryTimeoutError from None
        try:
            conn = self._idle_cursor_conns.pop() if self._idle_cursor_conns else await self._reader()
        except BaseException:
            self._cursor_slots.release()
            raise
        try:
            cursor = await self._guarded(conn, conn.execute(sql, params))
        except BaseException:
            self._cursor_done(conn)
            raise
        opened = SQLiteCursor(self, conn, cursor, own=True)
        self._cursors.add(opened)
        if self._wal_timer is None:
            self._wal_timer = asyncio.get_running_loop().call_later(WAL_CHECK_EVERY, self._wal_tick)
        return opened

    def _cursor_done(self, conn: aiosqlite.Connection) -> None:
        """A cursor's own connection is free again: kept for the next one (as many as there are readers)."""
        self._cursor_slots.release()
        if self._ready and len(self._idle_cursor_conns) < self.options.readers:
            self._idle_cursor_conns.append(conn)
        else:
            self._in_background(conn.close())

    def _in_background(self, work: Awaitable[None]) -> None:
        job = asyncio.ensure_future(work)
        self._closing_work.add(job)
        job.add_done_callback(self._closing_work.discard)

    def _wal_tick(self) -> None:
        self._wal_timer = None
        self._check_wal()
        if self._cursors:
            self._wal_timer = asyncio.get_running_loop().call_later(WAL_CHECK_EVERY, self._wal_tick)

    def _check_wal(self) -> None:
        """End every open cursor once the WAL has passed its bound (the rule is in the module's header)."""
        if not self._cursors:
            return
        try:
            size = os.stat(self.path + "-wal").st_size
        except OSError:
            return
        if size <= self.options.max_wal:
            return
        reason = (
            f"snapshot too old: the write-ahead log passed {self.options.max_wal} bytes while this query "
            "was open (read it faster, or in smaller ranges)"
        )
        for cursor in list(self._cursors):
            cursor.expire(reason)
        if self._writer is not None:
            self._in_background(self._checkpoint(self._writer))

    @staticmethod
    async def _checkpoint(writer: aiosqlite.Connection) -> None:
        with contextlib.suppress(sqlite3.Error, ValueError):
            await writer.execute("PRAGMA wal_checkpoint(PASSIVE)")

    async def begin(self) -> object:
        await self._open()
        await self._write_lock.acquire()
        try:
            assert self._writer is not None
            await self._guarded(self._writer, self._writer.execute("BEGIN IMMEDIATE"))
        except DatabaseError as e:
            await self._reopen_if_read_only(e)
            self._write_lock.release()
            raise
        except BaseException:
            self._write_lock.release()
            raise
        return self._writer

    async def _reopen_if_read_only(self, error: DatabaseError) -> None:
        """A file opened while its filesystem was read-only stays read-only in that connection, even once
        the filesystem is writable again: close every connection, so the next statement opens afresh."""
        if "readonly database" in str(error):
            await self.close()

    async def finish(self, session: object, commit: bool) -> None:
        assert self._writer is not None and session is self._writer
        try:
            await self._guarded(self._writer, self._writer.execute("COMMIT" if commit else "ROLLBACK"))
        except DatabaseError:
            with contextlib.suppress(sqlite3.Error):
                await self._writer.execute("ROLLBACK")
            raise
        finally:
            self._write_lock.release()
            self._check_wal()

    async def close(self) -> None:
        for cursor in list(self._cursors):
            cursor.expire("closed")
        if self._wal_timer is not None:
            self._wal_timer.cancel()
            self._wal_timer = None
        conns = [c for c in [self._writer, *self._readers, *self._idle_cursor_conns] if c is not None]
        self._writer, self._readers, self._idle_cursor_conns, self._ready = None, [], [], False
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.close()

    # -- helpers -----------------------------------------------------------------------------------
    @staticmethod
    async def _fetch(conn: aiosqlite.Connection, sql: str, params: Params) -> list[Row]:
        async with conn.execute(sql, params) as cursor:
            rows = list(await cursor.fetchall())
            names = [str(d[0]).encode() for d in cursor.description or ()]
        out: list[Row] = []
        for first in range(0, len(rows), SLICE):  # (a big result: the loop serves others between slices)
            if first:
                await asyncio.sleep(0)
            out.extend(dict(zip(names, row, strict=True)) for row in rows[first : first + SLICE])
        return out

    @staticmethod
    async def _change(conn: aiosqlite.Connection, sql: str, params: Params) -> tuple[int, int | None]:
        async with conn.execute(sql, params) as cursor:
            await cursor.fetchall()  # a RETURNING clause's rows: stepping through them finishes the statement
            return cursor.rowcount, cursor.lastrowid

    @staticmethod
    async def _change_many(
        conn: aiosqlite.Connection, sql: str, sets: list[Params], own_transaction: bool
    ) -> tuple[int, int | None]:
        """The sets through one prepared statement (sqlite3's executemany, one hop to the thread); outside a
        transaction in one of its own, so that they land together and the file is synced once, not per set."""
        if own_transaction:
            await conn.execute("BEGIN IMMEDIATE")
        try:
            async with conn.executemany(sql, sets) as cursor:
                changes, last = cursor.rowcount, None
            if changes > 0 and _INSERTS.match(sql):  # (executemany leaves lastrowid unset)
                async with conn.execute("SELECT last_insert_rowid()") as cursor:
                    row = await cursor.fetchone()
                    last = row[0] if row else None
            if own_transaction:
                await conn.execute("COMMIT")
        except BaseException:
            if own_transaction and conn.in_transaction:
                with contextlib.suppress(sqlite3.Error, ValueError):
                    await conn.execute("ROLLBACK")
            raise
        return changes, last

    async def _guarded(self, conn: aiosqlite.Connection, work: Awaitable[T]) -> T:
        """Await ``work`` under the query timeout, with SQLite's errors as DatabaseError."""
        timeout = self.options.query_timeout
        try:
            if timeout == math.inf:
                return await work
            try:
                return await asyncio.wait_for(work, timeout)
            except TimeoutError:
                await conn.interrupt()  # stop it in its thread too
                raise QueryTimeoutError from None
        except (sqlite3.Error, ValueError, OSError) as e:
            raise DatabaseError(str(e)) from e

    async def _conn_for(self, session: object, write: bool) -> aiosqlite.Connection:
        await self._open()
        if session is not None or write:
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
            except (sqlite3.Error, OSError) as e:
                await self.close()
                raise DatabaseError(str(e)) from e
            except BaseException:
                await self.close()
                raise
            self._ready = True

    async def _connect(self) -> None:
        busy_ms = int(self.options.busy_timeout * 1000)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        writer = await aiosqlite.connect(self.path, isolation_level=None, factory=LowPrioritySQLite)
        self._writer = writer
        writer.text_factory = bytes
        await writer.execute(f"PRAGMA busy_timeout = {busy_ms}")
        await writer.execute("PRAGMA journal_mode = WAL")
        await writer.execute("PRAGMA synchronous = NORMAL")  # with WAL: a commit survives a process crash
        await writer.execute(f"PRAGMA journal_size_limit = {self.options.max_wal}")
        for _ in range(self.options.readers):
            self._readers.append(await self._reader())

    async def _reader(self) -> aiosqlite.Connection:
        reader = await aiosqlite.connect(self.path, isolation_level=None, factory=LowPrioritySQLite)
        try:
            reader.text_factory = bytes
            await reader.execute(f"PRAGMA busy_timeout = {int(self.options.busy_timeout * 1000)}")
            await reader.execute("PRAGMA query_only = ON")
        except BaseException:
            await reader.close()
            raise
        return reader


class SQLiteCursor(Cursor):
    """A statement stepped in its connection's thread, ``n`` rows a hop: on a connection of its own (``own``),
    given back when it ends, or on its transaction's."""

    def __init__(
        self, db: SQLiteDatabase, conn: aiosqlite.Connection, cursor: aiosqlite.Cursor, own: bool
    ) -> None:
        self._db = db
        self._conn = conn
        self._own = own
        self._cursor: aiosqlite.Cursor | None = cursor
        self._names = [str(d[0]).encode() for d in cursor.description or ()]
        self._expired = ""  # why the database ended it (its next fetch says so)

    async def fetch(self, n: int) -> list[Row]:
        if self._expired:
            raise DatabaseError(self._expired)
        cursor = self._cursor
        if cursor is None:
            return []
        rows = list(await self._db._guarded(self._conn, cursor.fetchmany(n)))
        if len(rows) < n:
            await self.close()
        return [dict(zip(self._names, row, strict=True)) for row in rows]

    def expire(self, reason: str) -> None:
        """End it now (its snapshot goes); its next fetch fails with ``reason``."""
        self._expired = reason
        self._db._in_background(self.close())

    async def close(self) -> None:
        cursor, self._cursor = self._cursor, None
        if cursor is None:
            return
        self._db._cursors.discard(self)
        try:
            with contextlib.suppress(sqlite3.Error, ValueError):
                await cursor.close()
        finally:
            if self._own:
                self._db._cursor_done(self._conn)
