"""The databases behind ``moonlet.db``: one interface, an engine per URL scheme.

``open_database(url)`` picks the engine: ``sqlite:PATH`` (or a bare path) is the embedded SQLite file,
``postgresql://...`` a PostgreSQL server through an asyncpg pool. Each engine runs queries off the event
loop's critical path (SQLite in its own threads, PostgreSQL over non-blocking sockets) and speaks the same
terms to the service above it: rows as dicts of column name to plain value, ``(changes, last_id)`` for a
change, and a *session* object for a transaction.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import urllib.parse
from typing import Any, ClassVar

Params = tuple[Any, ...] | dict[str, Any]
Row = dict[bytes, Any]


class DatabaseError(Exception):
    """A query failed; the message is what Lua sees after ``database error: ``."""


class QueryTimeoutError(Exception):
    """A query ran past the per-query timeout (it has been stopped)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Options:
    """Per-database settings: from ``db.open(url, opts)`` or, for the default database, the command line."""

    query_timeout: float = 30.0  # seconds a query may run before it is stopped
    busy_timeout: float = 5.0  # SQLite: seconds to wait for a lock held by another process
    readers: int = 4  # SQLite: reader connections beside the one writer
    max_wal: int = 64 * 1024 * 1024  # SQLite: bytes of WAL that open db.rows cursors may pin
    pool_size: int = 10  # PostgreSQL: connections at most
    connect_timeout: float = 5.0  # PostgreSQL: seconds one connection attempt may take


class Cursor(abc.ABC):
    """An open query's rows, fetched a batch at a time; memory holds one batch, whatever the result's size."""

    @abc.abstractmethod
    async def fetch(self, n: int) -> list[Row]:
        """Up to ``n`` more rows; fewer (or none) at the end."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the query (and the connection it held). Closing twice is closing once."""


class Database(abc.ABC):
    dialect: ClassVar[str]

    def __init__(self, url: str, options: Options) -> None:
        self.url = url
        self.options = options
        self.handle = 0  # Lua's number for it (runtime/kernel/handles.py)

    @property
    def name(self) -> str:
        """The URL without its password, for logs and errors."""
        return redact(self.url)

    @abc.abstractmethod
    async def query(self, session: object, sql: str, params: Params) -> list[Row]:
        """Rows of a query, in ``session`` (a transaction) or on any connection (``None``)."""

    @abc.abstractmethod
    async def exec(self, session: object, sql: str, params: Params) -> tuple[int, int | None]:
        """Run a statement that changes data: rows changed and the id of the last row inserted."""

    @abc.abstractmethod
    async def open_cursor(self, session: object, sql: str, params: Params) -> Cursor:
        """Start a query whose rows are fetched in batches (``db.rows``), in ``session`` or on a connection of
        its own until the cursor is closed."""

    @abc.abstractmethod
    async def exec_many(self, session: object, sql: str, sets: list[Params]) -> tuple[int, int | None]:
        """Run one statement once per parameter set, all or none (in ``session``, or in a transaction of its
        own), in one trip to the database: rows changed in all, and the last row's id."""

    @abc.abstractmethod
    async def begin(self) -> object:
        """Start a transaction; its session object is passed back to query/exec/finish."""

    @abc.abstractmethod
    async def finish(self, session: object, commit: bool) -> None:
        """Commit or roll back, and let the session's connection go."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close every connection (at shutdown)."""


def redact(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def is_url(text: str) -> bool:
    return text.startswith("sqlite:") or "://" in text


def open_database(url: str, options: Options) -> Database:
    """The engine for ``url``; ValueError with a readable message for one that cannot be served."""
    if url.startswith(("postgresql://", "postgres://")):
        from runtime.databases.postgres import PostgresDatabase  # noqa: PLC0415 (asyncpg loads when used)

        return PostgresDatabase(url, options)
    if url.startswith("sqlite:") or not is_url(url):
        from runtime.databases.sqlite import SQLiteDatabase  # noqa: PLC0415 (the engines import this module)

        path = url.removeprefix("sqlite:").removeprefix("//") if url.startswith("sqlite:") else url
        if path in ("", ":memory:"):
            raise ValueError(
                "sqlite: needs a file path (an in-memory database would differ on each of its connections)"
            )
        return SQLiteDatabase(path, options)
    scheme = url.split(":", 1)[0]
    raise ValueError(f"unsupported database URL scheme {scheme!r} (use sqlite:PATH or postgresql://...)")


def finite(seconds: float) -> float | None:
    """A timeout for asyncio: None for never."""
    return None if seconds == math.inf else seconds
