"""moonlet.db's ops: queries, changes and transactions on any open database, each suspending only its task.

* The default database is the app's (``--db PATH|URL``, default ``APP.db`` beside the app); ``db.open(url)``
  opens others (one engine per URL, shared by every caller). Engines live in ``runtime.databases``.
* Lua parameters arrive as plain values: a Lua string that is valid UTF-8 is bound as text, any other as
  bytes (``db.blob(s)`` forces bytes); rows go back as Lua tables of column name to value.
* A task that ends while it holds a transaction (an error, a cancel, its connection closed) has it rolled
  back, so no connection or lock is left held.
* Failures answer ``nil, "timeout"`` or ``nil, "database error: ..."``; the server goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, ClassVar, cast

from runtime.config import Limits
from runtime.databases import (
    Cursor,
    Database,
    DatabaseError,
    Options,
    Params,
    QueryTimeoutError,
    open_database,
)
from runtime.kernel.core import SUSPEND, Kernel
from runtime.kernel.ops import Op
from runtime.kernel.task import Extra, Task
from runtime.lua.values import NotPlainError, from_plain, from_plain_in_slices, to_plain
from runtime.services import Defaults
from runtime.services.background import Background
from runtime.services.metrics import Figures

log = logging.getLogger("moonlet")

BLOB_KEY = b"__moonlet_blob"
MAX_BATCH = 1000  # rows a db.rows fetch brings at most


class OpenRows:
    """A ``db.rows`` query being read by one task: closed at the end of the rows, by the task, or with it."""

    KIND = "rows"  # (what a misuse error calls it)

    __slots__ = ("cursor", "handle", "open")

    def __init__(self, cursor: Cursor) -> None:
        self.cursor = cursor
        self.open = True
        self.handle = 0  # Lua's number for it (kernel/handles.py), held by db.lua's rows table


class Transaction:
    """A database session held by one task between DB_BEGIN and DB_END."""

    __slots__ = ("db", "handle", "open", "session", "task")

    def __init__(self, db: Database, session: object, task: Task) -> None:
        self.db = db
        self.session = session
        self.task = task
        self.open = True
        self.handle = 0  # Lua's number for it (kernel/handles.py), held by db.lua's transaction table


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


def _params(plain: Any) -> Params:
    """Lua's parameters: counted positional values or one array for ``?``, a table of names for ``:name``."""
    if isinstance(plain, list):  # one array of values: positional
        return tuple(_bind(v) for v in plain)
    if not isinstance(plain, dict):
        return ()
    if b"#" in plain:  # positional values, counted (see db.lua)
        count = int(plain[b"#"])
        return tuple(_bind(plain.get(i)) for i in range(1, count + 1))
    return {(k.decode() if isinstance(k, bytes) else str(k)): _bind(v) for k, v in plain.items()}


def default_database(limits: Limits, app_path: Path) -> Database:
    return open_database(limits.db_path or str(app_path.with_suffix(".db")), options_from(limits))


def options_from(limits: Limits, **given: Any) -> Options:
    defaults = Options()
    return Options(
        query_timeout=given.get("timeout", limits.db_query_timeout),
        busy_timeout=given.get("busy_timeout", limits.db_busy_timeout),
        readers=limits.db_readers,
        pool_size=given.get("pool_size", defaults.pool_size),
        max_wal=int(given.get("max_wal", defaults.max_wal)),
        connect_timeout=given.get("connect_timeout", defaults.connect_timeout),
    )


class DatabaseService(Defaults):
    SERVES: ClassVar[frozenset[Op]] = frozenset(
        {
            Op.DB_BEGIN,
            Op.DB_END,
            Op.DB_EXEC,
            Op.DB_EXEC_MANY,
            Op.DB_FETCH,
            Op.DB_OPEN,
            Op.DB_QUERY,
            Op.DB_ROWS,
            Op.DB_ROWS_CLOSE,
        }
    )  # (its ops)

    def __init__(
        self,
        kernel: Kernel,
        loop: asyncio.AbstractEventLoop,
        limits: Limits,
        default: Database,
        figures: Figures | None = None,
    ) -> None:
        self.kernel = kernel
        self.figures = figures or Figures()  # (the runtime's metrics: the time of each call)
        self.loop = loop
        self.limits = limits
        self.default = default
        self.opened: dict[str, Database] = {}  # by URL: db.open of the same URL shares one engine
        self.background = Background(loop)
        self.transactions: set[Transaction] = set()  # begun and not yet ended
        self.closing = False  # the server is stopping: no new statements
        kernel.wire(self)  # (the ops in SERVES, each by its handler _<op>)

    # -- db.open: a call, connecting happens at the first statement -------------------------------
    def _db_open(self, url: object, opts: object, _c: object) -> object:
        handles = self.kernel.handles
        if url is None:
            return handles.hold(self.default, host_done=True), self.default.dialect.encode()
        if not isinstance(url, bytes):
            return None, b"bad argument #1 to 'open' (URL string expected)"
        given = to_plain(opts) if opts is not None else {}
        assert isinstance(given, dict)
        known = {"timeout", "pool_size", "connect_timeout", "busy_timeout", "max_wal"}
        settings = {k.decode(): v for k, v in given.items() if isinstance(k, bytes)}
        unknown = sorted(set(settings) - known)
        if unknown or not all(isinstance(v, int | float) and v > 0 for v in settings.values()):
            return None, f"db.open: options are positive numbers among {', '.join(sorted(known))}".encode()
        if "pool_size" in settings:
            settings["pool_size"] = int(cast(float, settings["pool_size"]))
        key = url.decode("utf-8", "replace") + repr(sorted(settings.items()))
        db = self.opened.get(key)
        if db is None:
            try:
                db = open_database(url.decode("utf-8", "replace"), options_from(self.limits, **settings))
            except ValueError as e:
                return None, str(e).encode()
            self.opened[key] = db
        return handles.hold(db, host_done=True), db.dialect.encode()

    # -- requests: each starts one asyncio task and resumes the Lua task with its reply ------------
    def _db_query(self, task: Task, target: object, sql: object, params: object) -> object:
        return self._start(task, self._run_query(target, sql, params), "query")

    def _db_exec(self, task: Task, target: object, sql: object, params: object) -> object:
        return self._start(task, self._run_exec(target, sql, params), "exec")

    def _db_exec_many(self, task: Task, target: object, sql: object, sets: object) -> object:
        return self._start(task, self._run_exec_many(target, sql, sets), "exec_many")

    def _db_rows(self, task: Task, target: object, sql: object, params: object) -> object:
        return self._start(task, self._open_rows(task, target, sql, params), "rows")

    def _db_fetch(self, task: Task, rows: OpenRows, n: object, _c: object) -> object:
        if not rows.open:
            return self.lua.table_from([])
        size = int(n) if isinstance(n, int) and 0 < n <= MAX_BATCH else MAX_BATCH
        return self._start(task, self._fetch_batch(rows, size), "fetch")

    def _db_rows_close(self, rows: OpenRows, _b: object, _c: object) -> object:
        self._close_rows(rows)
        return True

    def _db_begin(self, task: Task, target: object, _b: object, _c: object) -> object:
        return self._start(task, self._run_begin(task, self._database(target)), "begin")

    def _db_end(self, task: Task, n: object, commit: object, _c: object) -> object:
        tx = self.kernel.handles.get(n)
        if not isinstance(tx, Transaction) or tx.task is not task:
            raise TypeError("db: not this task's transaction")
        return self._start(task, self._finish(tx, bool(commit)), "commit" if commit else "rollback")

    def _start(self, task: Task, work: Any, call: str) -> object:
        if self.closing:
            work.close()  # (a coroutine never awaited)
            return (None, b"closed")
        self.background.run(self._reply(task, work, call))
        return SUSPEND

    async def _reply(self, task: Task, work: Any, call: str) -> None:
        started = time.perf_counter()
        try:
            reply = await work
        except QueryTimeoutError:
            reply = (None, b"timeout")
        except (NotPlainError, ValueError) as e:
            reply = (None, str(e).encode())
        except DatabaseError as e:
            reply = (None, f"database error: {e}".encode())
        except Exception as e:  # a bug here must not leave the task suspended forever
            log.error("db: internal error: %r", e, exc_info=True)
            reply = (None, f"database error: internal error ({type(e).__name__}: {e})".encode())
        self.figures.db[call].observe(time.perf_counter() - started)
        self.kernel.resume(task, reply)

    # -- the work ----------------------------------------------------------------------------------
    async def _run_query(self, target: object, sql: object, params: object) -> object:
        db, session = self._where(target)
        rows = await db.query(session, self._sql(sql), _params(to_plain(params)))
        return await from_plain_in_slices(self.lua, rows)  # (200,000 rows: a slice per loop turn)

    async def _run_exec(self, target: object, sql: object, params: object) -> object:
        db, session = self._where(target)
        changes, last_id = await db.exec(session, self._sql(sql), _params(to_plain(params)))
        return from_plain(self.lua, {b"changes": changes, b"last_id": last_id})

    async def _run_exec_many(self, target: object, sql: object, sets: object) -> object:
        db, session = self._where(target)
        plain = to_plain(sets)
        if isinstance(plain, dict) and not plain:
            plain = []  # (an empty Lua table)
        if not isinstance(plain, list):
            raise ValueError("exec_many: parameter sets must be an array of tables")
        if not all(isinstance(one, list | dict) for one in plain):
            raise ValueError(
                "exec_many: each parameter set must be a table (an array for ?, names for :name)"
            )
        changes, last_id = await db.exec_many(session, self._sql(sql), [_params(one) for one in plain])
        return from_plain(self.lua, {b"changes": changes, b"last_id": last_id})

    async def _open_rows(self, task: Task, target: object, sql: object, params: object) -> object:
        db, session = self._where(target)
        cursor = await db.open_cursor(session, self._sql(sql), _params(to_plain(params)))
        rows = OpenRows(cursor)
        if task.co is None:  # (the task ended while the query was starting)
            await cursor.close()
            return (None, b"closed")
        if task.extra is None:
            task.extra = Extra()
        task.extra.on_end.append(lambda: self._close_rows(rows))
        return self.kernel.handles.hold(rows, host_done=True)

    async def _fetch_batch(self, rows: OpenRows, n: int) -> object:
        try:
            batch = await rows.cursor.fetch(n)
        except BaseException:
            self._close_rows(rows)
            raise
        if len(batch) < n:
            rows.open = False  # (the engine closed it at its end)
        return from_plain(self.lua, batch)

    def _close_rows(self, rows: OpenRows) -> None:
        if rows.open:
            rows.open = False
            self.background.run(rows.cursor.close())

    async def _run_begin(self, task: Task, db: Database) -> object:
        tx = Transaction(db, await db.begin(), task)
        self.transactions.add(tx)
        if task.extra is None:
            task.extra = Extra()
        task.extra.on_end.append(lambda: self._abandon(tx))
        return self.kernel.handles.hold(tx, host_done=True)

    async def _finish(self, tx: Transaction, commit: bool) -> object:
        if not tx.open:
            return (None, b"transaction already ended")
        tx.open = False
        self.transactions.discard(tx)
        await tx.db.finish(tx.session, commit)
        return True

    def _abandon(self, tx: Transaction) -> None:
        """The task ended inside its transaction: roll it back and let its connection go."""
        if tx.open:
            log.warning("rolling back a transaction left open by %s", tx.task.describe())
            self.background.run(self._finish_quietly(tx))

    async def _finish_quietly(self, tx: Transaction) -> None:
        try:
            await self._finish(tx, commit=False)
        except (DatabaseError, QueryTimeoutError) as e:
            log.warning("rolling back an abandoned transaction failed: %s", e)

    # -- helpers -----------------------------------------------------------------------------------
    def _database(self, target: object) -> Database:
        if target is None:
            return self.default
        db = self.kernel.handles.get(target)
        if isinstance(db, Database):
            return db
        raise TypeError("db: not a database")

    def _where(self, target: object) -> tuple[Database, object]:
        tx = self.kernel.handles.get(target)
        if isinstance(tx, Transaction):
            if not tx.open:
                raise ValueError("the transaction has ended")
            return tx.db, tx.session
        return self._database(target), None

    @staticmethod
    def _sql(sql: object) -> str:
        if not isinstance(sql, bytes):
            raise ValueError("SQL must be a string")
        return sql.decode("utf-8")

    def keeps_alive(self) -> bool:  # (the service's lifecycle: runtime/services/__init__.py)
        return False

    def in_flight(self) -> bool:
        return bool(self.background.jobs)

    def drain(self) -> None:
        pass  # (statements in flight finish; transactions end with their tasks)

    def console_rows(self, topic: str) -> list[str]:
        return []

    def statistics(self) -> dict[str, int | float]:
        return {"db_statements": len(self.background.jobs), "db_transactions": len(self.transactions)}

    async def close(self) -> None:
        """At shutdown: refuse new work, finish what is running, roll back the transactions still open (a
        drain that timed out ends their tasks mid-way), then close every connection."""
        self.closing = True
        if self.background.jobs:
            await asyncio.wait(list(self.background.jobs), timeout=self.limits.db_query_timeout)
        for tx in list(self.transactions):
            log.info("rolling back a transaction of %s: the server is stopping", tx.task.describe())
            await self._finish_quietly(tx)
        for db in [self.default, *self.opened.values()]:
            await db.close()
