"""SQLite through aiosqlite: one writer and several readers, each its own thread, never the loop's.

* WAL mode: readers run in parallel with the single writer. Writes are serialised by one lock; a
  transaction holds it from BEGIN IMMEDIATE to COMMIT/ROLLBACK.
* A busy timeout waits for locks held by other processes; past it the error is ``database is locked``.
* A per-query timeout really stops the query: awaiting is abandoned *and* ``interrupt()`` is called, since
  cancelling an aiosqlite await leaves the query running in its thread.
* Values keep SQLite's types: integer, real, text (as bytes) and blob; NULL is None.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import sqlite3
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import aiosqlite

from runtime.databases import Cursor, Database, DatabaseError, Options, Params, QueryTimeoutError, Row
from runtime.threads import LowPrioritySQLite

T = TypeVar("T")

_INSERTS = re.compile(r"\s*(INSERT|REPLACE)\b", re.IGNORECASE)  # statements that set last_insert_rowid


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

    async def open_cursor(self, session: object, sql: str, params: Params) -> Cursor:
        conn = await self._conn_for(session, write=session is not None)
        cursor = await self._guarded(conn, conn.execute(sql, params))
        return SQLiteCursor(self, conn, cursor)

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

    async def close(self) -> None:
        conns = [c for c in [self._writer, *self._readers] if c is not None]
        self._writer, self._readers, self._ready = None, [], False
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.close()

    # -- helpers -----------------------------------------------------------------------------------
    @staticmethod
    async def _fetch(conn: aiosqlite.Connection, sql: str, params: Params) -> list[Row]:
        async with conn.execute(sql, params) as cursor:
            rows = await cursor.fetchall()
            names = [str(d[0]).encode() for d in cursor.description or ()]
        return [dict(zip(names, row, strict=True)) for row in rows]

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
        for _ in range(self.options.readers):
            reader = await aiosqlite.connect(self.path, isolation_level=None, factory=LowPrioritySQLite)
            reader.text_factory = bytes
            await reader.execute(f"PRAGMA busy_timeout = {busy_ms}")
            await reader.execute("PRAGMA query_only = ON")
            self._readers.append(reader)


class SQLiteCursor(Cursor):
    """A statement stepped in its connection's thread, ``n`` rows a hop (the connection goes on serving other
    statements in between: SQLite keeps several statements open on one connection)."""

    def __init__(self, db: SQLiteDatabase, conn: aiosqlite.Connection, cursor: aiosqlite.Cursor) -> None:
        self._db = db
        self._conn = conn
        self._cursor: aiosqlite.Cursor | None = cursor
        self._names = [str(d[0]).encode() for d in cursor.description or ()]

    async def fetch(self, n: int) -> list[Row]:
        cursor = self._cursor
        if cursor is None:
            return []
        rows = list(await self._db._guarded(self._conn, cursor.fetchmany(n)))
        if len(rows) < n:
            await self.close()
        return [dict(zip(self._names, row, strict=True)) for row in rows]

    async def close(self) -> None:
        cursor, self._cursor = self._cursor, None
        if cursor is not None:
            with contextlib.suppress(sqlite3.Error, ValueError):
                await cursor.close()
