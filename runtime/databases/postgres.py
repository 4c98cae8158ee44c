"""PostgreSQL through an asyncpg connection pool, on the event loop's own non-blocking sockets.

* Statements are written in moonlet's parameter style (``?`` or ``:name``) and rewritten to ``$n``
  (see placeholders.py), so one app runs on SQLite or PostgreSQL; native ``$n`` works too.
* The pool opens connections on demand (up to ``pool_size``); a connection the server closed is replaced
  on its next use, so a server restart costs at most the statements that were in flight.
* While the server cannot be reached, statements fail at once with ``unavailable`` and connecting is
  retried with exponential backoff (0.1 s doubling to 5 s): a dead server is not hammered, and a live one
  is used again as soon as a retry succeeds. One log line when it goes away, one when it is back.
* The per-query timeout is asyncpg's: the server is asked to cancel the statement.
* Values arrive as plain data: numbers, strings, booleans, NULL as None; numeric as a number (an integer
  when integral); dates, times, intervals, UUIDs and JSON as PostgreSQL's text of them, which is also
  what they are given as; arrays as arrays.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import decimal
import logging
import re
import uuid
from typing import Any

import asyncpg

from runtime.databases import Cursor, Database, DatabaseError, Options, Params, QueryTimeoutError, Row, finite
from runtime.databases.placeholders import bind

log = logging.getLogger("moonlet")

# a connection could not be made (or the server is shutting down or starting up): back off and retry later
_UNREACHABLE = (OSError, asyncpg.CannotConnectNowError)
# a connection broke under a statement: the statement failed; the pool replaces the connection
_LOST = (asyncpg.ConnectionDoesNotExistError, ConnectionError)
_BACKOFF_FIRST, _BACKOFF_MAX = 0.1, 5.0


class Session:
    """A transaction: its connection and asyncpg's transaction on it."""

    __slots__ = ("conn", "tr")

    def __init__(self, conn: asyncpg.Connection, tr: Any) -> None:
        self.conn = conn
        self.tr = tr


class PostgresDatabase(Database):
    dialect = "postgresql"

    def __init__(self, url: str, options: Options) -> None:
        super().__init__(url, options)
        self._pool: asyncpg.Pool | None = None
        self._retry_at = 0.0  # loop time before which connecting is not tried again
        self._backoff = 0.0
        self._down_since: float | None = None
        self._down_reason = ""

    # -- the interface -----------------------------------------------------------------------------
    async def query(self, session: object, sql: str, params: Params) -> list[Row]:
        text, args = bind(sql, params)
        records = await self._run(session, lambda c: c.fetch(text, *args, timeout=self._timeout()))
        return [{k.encode(): _plain(v) for k, v in r.items()} for r in records]

    async def exec(self, session: object, sql: str, params: Params) -> tuple[int, int | None]:
        text, args = bind(sql, params)
        if _returns_rows(text):  # INSERT ... RETURNING id: the changes are the rows, last_id the last id
            records = await self._run(session, lambda c: c.fetch(text, *args, timeout=self._timeout()))
            last = records[-1][0] if records and len(records[-1]) else None
            return len(records), last if isinstance(last, int) else None
        status = await self._run(session, lambda c: c.execute(text, *args, timeout=self._timeout()))
        count = status.rsplit(" ", 1)[-1]
        return (int(count) if count.isdigit() else 0), None

    async def exec_many(self, session: object, sql: str, sets: list[Params]) -> tuple[int, int | None]:
        """asyncpg's executemany: one prepared statement, the sets pipelined, atomic (a transaction of its own
        outside ``session``). PostgreSQL reports no per-set counts there: changes is the number of sets."""
        if not sets:
            return 0, None
        bound = [bind(sql, params) for params in sets]
        text = bound[0][0]
        args = [a for _, a in bound]
        await self._run(session, lambda c: c.executemany(text, args, timeout=self._timeout()))
        return len(sets), None

    async def open_cursor(self, session: object, sql: str, params: Params) -> Cursor:
        """A server-side cursor: inside ``session``'s transaction, or on a connection and a (read-only)
        transaction of its own, held until the cursor is closed."""
        text, args = bind(sql, params)
        if isinstance(session, Session):
            cursor = await self._guarded(session.conn.cursor(text, *args, timeout=self._timeout()))
            return PgCursor(self, cursor, None)
        conn = await self._acquire()
        try:
            tr = conn.transaction(readonly=True)
            await self._guarded(tr.start())
            cursor = await self._guarded(conn.cursor(text, *args, timeout=self._timeout()))
        except BaseException:
            await self._release(conn)
            raise
        return PgCursor(self, cursor, (conn, tr))

    async def begin(self) -> object:
        conn = await self._acquire()
        try:
            tr = conn.transaction()
            await self._guarded(tr.start())
        except BaseException:
            await self._release(conn)
            raise
        return Session(conn, tr)

    async def finish(self, session: object, commit: bool) -> None:
        assert isinstance(session, Session)
        try:
            await self._guarded(session.tr.commit() if commit else session.tr.rollback())
        finally:
            await self._release(session.conn)

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), self.options.connect_timeout)
            except (TimeoutError, *_UNREACHABLE, *_LOST, asyncpg.InterfaceError):
                pool.terminate()

    # -- connections -------------------------------------------------------------------------------
    async def _run(self, session: object, statement: Any) -> Any:
        if isinstance(session, Session):
            return await self._guarded(statement(session.conn))
        conn = await self._acquire()
        try:
            return await self._guarded(statement(conn))
        finally:
            await self._release(conn)

    async def _acquire(self) -> asyncpg.Connection:
        loop = asyncio.get_running_loop()
        if self._down_since is not None and loop.time() < self._retry_at:
            wait = self._retry_at - loop.time()
            raise DatabaseError(f"unavailable ({self._down_reason}); next try in {wait:.1f} s")
        if self._pool is None:
            self._pool = asyncpg.create_pool(
                self.url,
                min_size=0,  # connect on demand: starting does not need the server up
                max_size=self.options.pool_size,
                timeout=self.options.connect_timeout,
                command_timeout=finite(self.options.query_timeout),
                init=_text_codecs,
            )
            await self._pool  # with min_size 0 this opens nothing yet
        try:
            conn = await self._pool.acquire(timeout=finite(self.options.query_timeout))
        except TimeoutError:
            raise DatabaseError(
                f"no connection within the query timeout ({self.options.pool_size} busy, or connecting hangs)"
            ) from None
        except _UNREACHABLE as e:
            self._went_down(loop.time(), e)
            raise DatabaseError(f"unavailable ({self._down_reason})") from e
        except asyncpg.PostgresError as e:  # e.g. a wrong password: no point in backing off silently
            raise DatabaseError(f"cannot connect: {e}") from e
        if self._down_since is not None:
            log.info("database %s is reachable again after %.1f s", self.name, loop.time() - self._down_since)
            self._down_since, self._backoff = None, 0.0
        return conn

    async def _release(self, conn: asyncpg.Connection) -> None:
        if self._pool is not None:
            try:
                await self._pool.release(conn)
            except (*_UNREACHABLE, *_LOST, asyncpg.PostgresError, asyncpg.InterfaceError):
                conn.terminate()

    def _went_down(self, now: float, error: BaseException) -> None:
        self._down_reason = str(error) or type(error).__name__
        self._backoff = min(_BACKOFF_MAX, self._backoff * 2) if self._backoff else _BACKOFF_FIRST
        self._retry_at = now + self._backoff
        if self._down_since is None:
            self._down_since = now
            log.warning("database %s is unreachable: %s; retrying with backoff", self.name, self._down_reason)

    def _timeout(self) -> float | None:
        return finite(self.options.query_timeout)

    @staticmethod
    async def _guarded(work: Any) -> Any:
        """Await ``work`` with asyncpg's errors as moonlet's."""
        try:
            return await work
        except TimeoutError:
            raise QueryTimeoutError from None
        except _LOST as e:
            raise DatabaseError(f"connection lost ({e})") from e
        except asyncpg.PostgresError as e:
            raise DatabaseError(str(e)) from e
        except (
            asyncpg.InterfaceError,
            OSError,
            ValueError,
            TypeError,
            OverflowError,
        ) as e:  # asyncpg checks arguments with these
            raise DatabaseError(str(e)) from e


class PgCursor(Cursor):
    def __init__(self, db: PostgresDatabase, cursor: Any, own: tuple[asyncpg.Connection, Any] | None) -> None:
        self._db = db
        self._cursor: Any = cursor
        self._own = own  # (connection, transaction) held for this cursor alone, or None inside a session

    async def fetch(self, n: int) -> list[Row]:
        if self._cursor is None:
            return []
        records = await self._db._guarded(self._cursor.fetch(n, timeout=self._db._timeout()))
        if len(records) < n:
            await self.close()
        return [{k.encode(): _plain(v) for k, v in r.items()} for r in records]

    async def close(self) -> None:
        self._cursor = None
        own, self._own = self._own, None
        if own is not None:
            conn, tr = own
            with contextlib.suppress(Exception):
                await tr.rollback()  # (it only read)
            await self._db._release(conn)


# Lua has no date, time or decimal types: these travel as their text both ways (numeric arrives as a number)
_AS_TEXT = ("date", "time", "timetz", "timestamp", "timestamptz", "interval", "uuid", "json", "jsonb")


async def _text_codecs(conn: asyncpg.Connection) -> None:
    for name in _AS_TEXT:
        await conn.set_type_codec(name, schema="pg_catalog", encoder=str, decoder=str, format="text")
    await conn.set_type_codec("numeric", schema="pg_catalog", encoder=str, decoder=_number, format="text")


def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


_RETURNING = re.compile(r"\breturning\b", re.IGNORECASE)


def _returns_rows(sql: str) -> bool:
    return _RETURNING.search(sql) is not None


def _plain(value: Any) -> Any:
    """An asyncpg value as plain data (see the module's docstring)."""
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return value
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() and value.is_finite() else float(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, asyncpg.Record):
        return {k.encode(): _plain(v) for k, v in value.items()}
    return str(value)
