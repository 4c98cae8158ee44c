"""moonlet.db on a real PostgreSQL server (the tests start it on loopback), and the chat app across nodes."""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from test_pool_db import billing_session, login

from conftest import run_script
from runtime.databases.placeholders import bind


def test_placeholders_are_rewritten_only_in_sql_text() -> None:
    sql = "SELECT '?', \"a?\", x::int, $$:no$$, ? -- ?\n/* :no */ FROM t WHERE a = ? AND b = E'\\'?'"
    text, args = bind(sql, (1, 2))
    assert (
        text == "SELECT '?', \"a?\", x::int, $$:no$$, $1 -- ?\n/* :no */ FROM t WHERE a = $2 AND b = E'\\'?'"
    )
    assert args == [1, 2]
    text, args = bind("SELECT :a, :b, :a, '12:30'", {"b": 2, "a": 1})
    assert (text, args) == ("SELECT $1, $2, $1, '12:30'", [1, 2])
    assert bind("SELECT $1, $2", ("x", "y")) == ("SELECT $1, $2", ["x", "y"])
    for bad, params in [
        ("SELECT ?, :a", ()),
        ("SELECT ?", (1, 2)),
        ("SELECT :a", {"b": 1}),
        ("SELECT :a", (1,)),
    ]:
        with pytest.raises(ValueError):
            bind(bad, params)


def test_db_open_postgresql_values_params_and_transactions(tmp_path: Path, pg_url: str) -> None:
    result = run_script(
        tmp_path,
        """
        local db = require "moonlet.db"
        local pg = assert(db.open(arg[1]))
        print(pg.dialect, db.dialect())
        assert(pg:exec([[CREATE TABLE n (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, body TEXT,
          v NUMERIC, f DOUBLE PRECISION, ok BOOLEAN, b BYTEA, d DATE, tags TEXT[])]]))
        local r = assert(pg:exec([[INSERT INTO n (body, v, f, ok, b, d, tags)
          VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id]],
          "it's ?", 12, 2.5, true, db.blob("\\0\\1\\2"), "2026-11-26", nil))
        print("insert", r.changes, r.last_id)
        r = assert(pg:exec("INSERT INTO n (body, v) VALUES (:body, :v), (:body, :v)",
          { body = "two", v = 1.25 }))
        print("changes", r.changes, r.last_id)
        local rows = assert(pg:query("SELECT * FROM n WHERE id = $1", 1))
        local row = rows[1]
        print(row.body, row.v, math.type(row.v), row.f, row.ok, #row.b, row.d, row.tags)
        print(pg:query("SELECT count(*) AS c FROM n WHERE body = ?", "two")[1].c)
        print(pg:query("SELECT * FROM missing_table"))
        print(pg:query("SELECT ?::int", "not a number"))
        print(pg:transaction(function(tx)
          assert(tx:exec("INSERT INTO n (body) VALUES ('rolled back')"))
          error("on purpose", 0)
        end))
        print(pg:transaction(function(tx)
          assert(tx:exec("INSERT INTO n (body) VALUES ('kept')"))
          return #tx:query("SELECT id FROM n")
        end))
        print(#pg:query("SELECT id FROM n WHERE body = 'rolled back'"))
        local slow = assert(db.open(arg[1], { timeout = 0.3 }))
        local t0 = require("moonlet.time").monotonic()
        print(slow:query("SELECT pg_sleep(5)"))
        print(require("moonlet.time").monotonic() - t0 < 2, #pg:query("SELECT 1 AS one"))
        print(db.open("mysql://x"))
        local lite = assert(db.open("sqlite:" .. arg[2]))
        print(lite.dialect, lite:exec("CREATE TABLE t (x)").changes,
          lite:exec("INSERT INTO t VALUES (?) RETURNING x", 7).last_id)
        """,
        pg_url,
        str(tmp_path / "other.db"),
        options=["--db", str(tmp_path / "default.db")],
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().splitlines() == [
        "postgresql\tsqlite",
        "insert\t1\t1",
        "changes\t2\tnil",
        "it's ?\t12\tinteger\t2.5\ttrue\t3\t2026-11-26\tnil",
        "2",
        'nil\tdatabase error: relation "missing_table" does not exist',
        "nil\tdatabase error: invalid input for query argument $1: 'not a number' "
        "('str' object cannot be interpreted as an integer)",
        "nil\ton purpose",
        "4",
        "0",
        "nil\ttimeout",
        "true\t1",
        "nil\tunsupported database URL scheme 'mysql' (use sqlite:PATH or postgresql://...)",
        "sqlite\t-1\t1",
    ]


def test_exec_many_on_postgresql_is_one_atomic_batch(tmp_path: Path, pg_url: str) -> None:
    result = run_script(
        tmp_path,
        """
        local db = require "moonlet.db"
        local pg = assert(db.open(arg[1]))
        assert(pg:exec("CREATE TABLE batch (id SERIAL PRIMARY KEY, body TEXT UNIQUE, n INT)"))
        local sets = {}
        for i = 1, 1000 do sets[i] = { "a" .. i, i } end
        local r = assert(pg:exec_many("INSERT INTO batch (body, n) VALUES (?, ?)", sets))
        print(r.changes, r.last_id, pg:query("SELECT sum(n) AS s FROM batch")[1].s)
        local named = { { b = "x", n = 1 }, { b = "a5", n = 2 } }
        print(pg:exec_many("INSERT INTO batch (body, n) VALUES (:b, :n)", named))
        print(#pg:query("SELECT id FROM batch WHERE body = 'x'"))
        print(pg:transaction(function(tx)
          assert(tx:exec_many("UPDATE batch SET n = 0 WHERE body = ?", { { "a1" }, { "a2" } }))
          return tx:query("SELECT count(*) AS c FROM batch WHERE n = 0")[1].c
        end))
        print(pg:exec_many("SELECT 1", {}).changes)
        """,
        pg_url,
    )
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    assert lines[0] == "1000\tnil\t500500"
    assert lines[1].startswith("nil\tdatabase error: duplicate key value violates unique constraint"), lines
    assert lines[-3:] == ["0", "2", "0"]  # (the error above may have a DETAIL line)


@pytest.mark.lua54(
    "a loop left by break releases its cursor through the for's closing value; LuaJIT has none"
)
def test_db_rows_streams_from_a_server_side_cursor(tmp_path: Path, pg_url: str) -> None:
    from test_pool_db import ROWS

    result = run_script(tmp_path, ROWS, pg_url, timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    out = result.stdout.decode().splitlines()
    assert out[0] == "streamed\t1000000\t500000500000\ttrue"
    assert out[1] == "broke\t10\t1"  # pool_size 1: the next query waits for nothing
    assert out[2] == "cancelled\t1"
    assert out[3].startswith("false\tdb.rows: database error: syntax error")
    assert out[4] == "5050"


def test_billing_runs_unchanged_on_postgresql(run_app, pg_url: str, _pg_shared) -> None:  # type: ignore[no-untyped-def]
    billing_session(run_app("apps/billing.lua", "--port", "0", "--heavy", "2000", options=["--db", pg_url]))
    database = pg_url.rsplit("/", 1)[1]
    assert [tuple(r) for r in _pg_shared.sql("SELECT name, balance FROM accounts", database=database)] == [
        ("acct-1", 35)
    ]


def test_postgresql_restart_during_traffic_fails_cleanly_and_recovers(run_app, pg_server) -> None:  # type: ignore[no-untyped-def]
    url = pg_server.new_database("billing")
    server = run_app("apps/billing.lua", "--port", "0", "--heavy", "10", options=["--db", url])
    acknowledged: list[int] = []
    failed = 0
    lock = threading.Lock()
    stop = threading.Event()

    def client(n: int) -> None:
        nonlocal failed
        c = login(server, f"user{n}")
        while not stop.is_set():
            c.send(f"CHARGE acct-{n} 1\n".encode())
            reply = c.line()
            with lock:
                if reply.startswith(b"RECEIPT"):
                    acknowledged.append(int(reply.split()[1]))
                else:
                    assert reply == b"ERR charge failed, nothing was charged", reply
                    failed += 1
            time.sleep(0.005)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    before_stop = len(acknowledged)
    pg_server.stop()  # fast shutdown: open sessions are ended
    server.wait_log(b"is unreachable", timeout=10)
    time.sleep(0.5)
    during = failed
    pg_server.start()
    server.wait_log(b"is reachable again", timeout=15)
    after_restart = len(acknowledged)
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(10)
        assert not t.is_alive()
    assert before_stop > 10 and during > 0  # served, then refused cleanly while the server was away
    assert len(acknowledged) > after_restart  # and served again once it came back
    stored = {r[0] for r in pg_server.sql("SELECT id FROM receipts", database="billing")}
    assert set(acknowledged) <= stored  # no acknowledged charge was lost
    total = pg_server.sql("SELECT sum(balance) AS s FROM accounts", database="billing")[0][0]
    assert total == len(stored)  # each receipt with its balance: the transactions held
    assert server.proc.poll() is None


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_chat_across_two_nodes_history_in_the_database(
    run_app, redis_server: int, store: str, tmp_path: Path, request
) -> None:  # type: ignore[no-untyped-def]
    db = str(tmp_path / "chat.db") if store == "sqlite" else request.getfixturevalue("pg_url")
    room = ["--redis-port", str(redis_server), "--room", "test-room"]
    node_a = run_app("apps/chat.lua", "--port", "0", *room, options=["--db", db])
    node_b = run_app("apps/chat.lua", "--port", "0", *room, options=["--db", db])
    ann = node_a.connect()
    assert ann.line() == b"WELCOME, your name?"
    ann.send(b"ann\n")
    assert ann.line() == b"* ann joined (0 here before you)"
    ann.send(b"hello from a\n")
    assert ann.line() == b"<ann> hello from a"
    bob = node_b.connect()
    assert bob.line() == b"WELCOME, your name?"
    bob.send(b"bob\n")
    assert bob.line() == b"* ann joined (0 here before you)"  # the history, from the shared database
    assert bob.line() == b"<ann> hello from a"
    assert bob.line() == b"* bob joined (0 here before you)"  # live, through Redis pub/sub
    assert ann.line() == b"* bob joined (0 here before you)"  # across nodes
    bob.send(b"hi from b\n")
    assert ann.line() == b"<bob> hi from b"
    assert bob.line() == b"<bob> hi from b"
    bob.send(b"/quit\n")
    assert ann.line() == b"* bob left"


def test_a_chat_member_that_never_reads_is_dropped_and_the_room_goes_on(
    run_app, redis_server: int, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    room = ["--redis-port", str(redis_server), "--room", "slow-room", "--history", "0"]
    node = run_app("apps/chat.lua", "--port", "0", *room, options=["--db", str(tmp_path / "chat.db")])
    ann = node.connect()
    assert ann.line() == b"WELCOME, your name?"
    ann.send(b"ann\n")
    assert ann.line().startswith(b"* ann joined")
    sid = socket.socket()  # joins, then never reads again; a small receive buffer fills at once
    sid.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sid.connect(("127.0.0.1", node.port))
    sid.sendall(b"sid\n")
    assert ann.line().startswith(b"* sid joined")
    bob = node.connect()
    assert bob.line() == b"WELCOME, your name?"
    bob.send(b"bob\n")
    assert bob.line().startswith(b"* bob joined")
    assert ann.line().startswith(b"* bob joined")
    line = b"x" * 2000
    sender = threading.Thread(  # 8 MB: past the kernel's socket buffers and then the 256 KiB outbox
        target=lambda: [ann.send(b"%d " % i + line + b"\n") for i in range(4000)], daemon=True
    )
    sender.start()
    left = 0

    def next_message(client) -> bytes:  # type: ignore[no-untyped-def]
        nonlocal left
        got = client.line()
        while got == b"* sid left":  # (the slow member's handler saw its connection closed)
            left += 1
            got = client.line()
        return got  # type: ignore[no-any-return]

    for i in range(4000):  # everyone else keeps receiving, in order, without a stall
        assert next_message(bob) == b"<ann> %d " % i + line
        assert next_message(ann) == b"<ann> %d " % i + line
    sender.join(30)
    node.wait_log(b"group: closing a slow member")
    bob.send(b"still here\n")
    assert ann.line() == b"<bob> still here"
    sid.settimeout(10)
    got = b""
    while chunk := sid.recv(65536):  # what it had been sent, then the end: it was disconnected
        got += chunk
    assert len(got) < 8_000_000
    sid.close()


def test_cancelled_task_gives_back_its_transaction_and_connection(tmp_path: Path, pg_url: str) -> None:
    result = run_script(
        tmp_path,
        """
        local db = require "moonlet.db"
        local task, time = require "moonlet.task", require "moonlet.time"
        -- one connection: a leaked one would hang the next query
        local pg = assert(db.open(arg[1], { pool_size = 1, timeout = 3 }))
        assert(pg:exec("CREATE TABLE t (x INTEGER)"))
        local t = task.spawn(function()
          pg:transaction(function(tx)
            assert(tx:exec("INSERT INTO t VALUES (1)"))
            time.sleep(60)
          end)
        end)
        time.sleep(0.2)
        t:cancel()
        print(#assert(pg:query("SELECT x FROM t")))
        print(pg:exec("INSERT INTO t VALUES (2)").changes)
        """,
        pg_url,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().splitlines() == ["0", "1"]
    assert b"rolling back a transaction left open by" in result.stderr


def test_a_chat_node_with_no_client_stops_at_once_on_sigterm(
    run_app, redis_server: int, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    room = ["--redis-port", str(redis_server), "--room", "quiet-room"]
    node = run_app("apps/chat.lua", "--port", "0", *room, options=["--db", str(tmp_path / "chat.db")])
    start = time.monotonic()
    assert node.stop(signal.SIGTERM, timeout=40) == 0
    took = time.monotonic() - start
    log = b"".join(node.log_lines).decode()  # (all of it: stop() read the rest)
    assert took < 5, (took, log)  # (30 s before: its subscription kept the drain waiting)
    assert "lost the Redis subscription" not in log and "drain timeout" not in log, log
