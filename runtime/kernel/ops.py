"""The closed vocabulary of requests Lua sends to the host.

Lua reaches the host through exactly one door, ``stdlib_lua/moonlet/_host.lua``, in two ways:

* a *yielding* request: the coroutine yields ``(op, a, b, c)`` and sleeps; the kernel hands it to the
  service that owns ``op`` and resumes the coroutine with the reply, now or later;
* a *call*: ``host.call(op, a, b, c)`` runs synchronously and never suspends, so it also works where Lua
  cannot yield (a ``table.sort`` comparator, a metamethod called from C).

Both share this one enum, each member declared once with its number, its kind and its signature. The Lua
side receives the numbers at bootstrap in a table that raises on an unknown name, and ``tests/test_ops.py``
checks that every ``OP.NAME`` used in the Lua stdlib exists here, that every member has exactly one
handler, which takes the arguments its signature names, and that no Lua call site passes more.
"""

from __future__ import annotations

import enum

YIELDS, CALL = True, False


class Op(enum.IntEnum):
    """Each request: its number, whether it yields, and its signature (what it takes, then what it
    answers), declared once here: the kernel registers handlers by it (``Kernel.wire``), the tests check
    Lua's call sites and each handler's parameters against it."""

    def __new__(cls, number: int, yields: bool, signature: str) -> Op:
        op = int.__new__(cls, number)
        op._value_ = number
        op.yields = yields
        op.signature = signature
        return op

    yields: bool  # a yielding request (the coroutine sleeps until the reply), else a call
    signature: str  # "(args): reply"

    EXIT = (
        0,
        YIELDS,
        "(ok, results_or_traceback, error): the task's body has returned (failed: the traceback and the "
        "value it raised); never resumed again",
    )
    RECV = 1, YIELDS, "(conn, out): send `out`, then reply with bytes that arrived, or nil, err"
    SEND = 2, YIELDS, "(conn, out): send `out`; wait while more than the high-water mark is unsent"
    SENDALL = 3, YIELDS, "(conn, out): send `out`; wait until the kernel has taken every byte"
    SLEEP = 4, YIELDS, "(seconds): reply true after that long"
    LISTEN = (
        5,
        YIELDS,
        "(host_or_path, port, {entry, tls=}): reply a listener handle and its port, or nil, err",
    )
    PARK = 6, YIELDS, '(timeout): sleep until UNPARK (reply its value) or the timeout (nil, "timeout")'
    JOIN = 7, YIELDS, '(task, timeout): wait until the task ends; reply as RESULT does, or nil, "timeout"'
    POOL_RUN = 8, YIELDS, "({pool=, timeout=}, {module=, fn=}, packed args): run a Lua function in a pool"
    POOL_CALL = 9, YIELDS, "({pool=, timeout=}, host function name, packed args): run a Python host function"
    DB_QUERY = (
        10,
        YIELDS,
        "(target, sql, params): rows; target: a transaction, a database, or nil (the default)",
    )
    DB_EXEC = 11, YIELDS, "(target, sql, params): {changes=, last_id=}"
    DB_BEGIN = (
        12,
        YIELDS,
        "(database or nil): a transaction handle once a connection (SQLite: the writer) is ours",
    )
    DB_END = 13, YIELDS, "(tx, commit): commit or roll back, and let the writer go"
    CONNECT = 14, YIELDS, "(host_or_path, port, opts): an outgoing connection, or nil, err"
    STARTTLS = 15, YIELDS, "(conn, opts): upgrade the connection to TLS"
    RESOLVE = 16, YIELDS, "(name, timeout): the addresses of a host name"
    UDP_OPEN = (
        17,
        YIELDS,
        "(host, port, entry): a UDP socket (serving datagrams with entry if given) and its port",
    )
    UDP_RECV = 18, YIELDS, "(sock, timeout): data, host, port of the next datagram"
    HTTP_LISTEN = (
        19,
        YIELDS,
        "(host, port, {entry, tls=, options...}): an HTTP listener (served by request workers), its port",
    )
    IDLE = (
        20,
        YIELDS,
        "(conn, out, served): a request worker sends `out` and gives conn back (served: 1 if it answered a "
        "request, or the access log's lines of those it answered); reply (conn, data, last): a connection "
        "to serve next (its bytes; last: its next answer is its last), or nil: the worker ends",
    )
    DB_EXEC_MANY = (
        21,
        YIELDS,
        "(target, sql, sets): the statement once per parameter set, all or none: as DB_EXEC",
    )
    CHAN_GET = (
        22,
        YIELDS,
        "(channel, timeout): a value the spawned job sent: true, value; nil at its end (, err)",
    )
    CHAN_PUT = (
        23,
        YIELDS,
        '(channel, value): queue a value for the job (waits while full): true, or nil, "closed"',
    )
    CHAN_WAIT = 24, YIELDS, "(channel, timeout): the spawned job's results: true, results...; or nil, err"
    DB_ROWS = 25, YIELDS, "(target, sql, params): start a query read in batches: its handle, or nil, err"
    DB_FETCH = (
        26,
        YIELDS,
        "(rows, n): up to n more rows (fewer at the end, then the query is closed), or nil, err",
    )
    WRITE = 32, CALL, "(conn, out): hand `out` to the transport now"
    CLOSE = 33, CALL, "(conn, out, abort): send `out` and close; abort: close now, dropping what is unsent"
    PEER = 34, CALL, "(conn): host, port of the peer (or the socket path)"
    SETTIMEOUTS = 35, CALL, "(conn, send, read): seconds; math.huge or false means never"
    BUFFERED = 36, CALL, "(conn): bytes received but not handed to Lua, bytes not yet sent"
    UNLISTEN = 37, CALL, "(listener): stop accepting on it"
    LOG = 38, CALL, "(level, message)"
    PRINT = 39, CALL, "(text, target): write to standard output, or to a console session (target)"
    NOW = 40, CALL, "(): wall-clock seconds as a float"
    MONOTONIC = 41, CALL, "(): monotonic seconds as a float"
    SPAWN = (
        42,
        CALL,
        "(job, where): start job (see _host.lua) as a task on the next loop turn; reply its handle",
    )
    CURRENT = (
        43,
        CALL,
        "(held): the running task's handle (held: for a table that gives it back, see RELEASE)",
    )
    UNPARK = 44, CALL, "(task, value): wake a parked task with value; false if it was not parked"
    CANCEL = 45, CALL, "(task): end a task now; it is never resumed again"
    DETACH = 46, CALL, "(task): the task outlives the connection that started it"
    RESULT = 47, CALL, "(task): 0 while running; 1, packed results; 2, error"
    WATCH = 48, CALL, "(task): unpark the running task when `task` ends"
    UNWATCH = 49, CALL, "(task): undo WATCH"
    TIMER = 50, CALL, "(delay, interval, job, where): run job as a task later (and every interval); reply job"
    TIMER_CANCEL = 51, CALL, "(job): true if the timer of that job was pending"
    STALL_CHECK = 52, CALL, "(): from the count hook: a message if this run has used up its CPU budget"
    STALLED = 53, CALL, "(traceback): the running task is being stopped for stalling; remember where"
    UDP_SEND = 54, CALL, "(sock, data, host, port): send one datagram"
    UDP_CLOSE = 55, CALL, "(sock)"
    REUSABLE = (
        56,
        CALL,
        "(conn): true if an idle connection may be reused (open, nothing unread from the peer)",
    )
    SHUTDOWN = 57, CALL, "(conn, out): send `out`, then end the sending direction (half-close)"
    REPORT = 58, CALL, "(kind, plain data): one machine-readable line on standard output (moonlet bench)"
    NEXT = (
        59,
        CALL,
        "(conn, served): a request worker goes on with conn's next buffered request; reply `last`",
    )
    HTTP_ERROR = 60, CALL, "(traceback): a request handler failed (logged in one line; its task goes on)"
    SHARED_GET = 61, CALL, "(dict, key): the value, or nil"
    SHARED_SET = 62, CALL, '(dict, key, value, {ttl=, mode=}): true, or false, "exists" / "not found"'
    SHARED_INCR = 63, CALL, "(dict, key, by, init): the new value, or nil, err"
    SHARED_DELETE = 64, CALL, "(dict, key)"
    SHARED_KEYS = 65, CALL, "(dict, limit): the live keys"
    DB_OPEN = (
        66,
        CALL,
        "(url or nil, opts): a database handle and its dialect, or nil, err; connects on first use",
    )
    HTTP_REJECT = 67, CALL, "(conn, status, why, answering): log a refused request, answer its status, close"
    KEEP = (
        68,
        CALL,
        "(conn, idle_timeout): into a keep-alive pool: no task owns it; closed when the peer closes it or "
        "after idle_timeout",
    )
    OWN = (
        69,
        CALL,
        "(conn, task or nil): that task (nil: the running one) owns conn: it closes when the task ends",
    )
    OPEN = (
        70,
        CALL,
        "(conn): true until the connection is closed (by either side, or with the task that owned it)",
    )
    TASK_FAILURES = (
        71,
        CALL,
        "(): spawned tasks that failed with nobody waiting for them: how many, the last error",
    )
    VIRTUAL_TIME = (
        72,
        CALL,
        "(on, real_limit, task): moonlet test's jumping clock on (for task, ended after real_limit "
        "seconds of real time) or off (then: whether that limit ended it)",
    )
    SINGLE_PROCESS = (
        73,
        CALL,
        "(reason, where): the app keeps state in this process's memory: one worker, ever",
    )
    POOL_SPAWN = (
        74,
        CALL,
        "({pool=, timeout=}, {module=, fn=} or {host=}, packed args): a job beside the task",
    )
    CHAN_CLOSE = 75, CALL, "(channel): close it from the task's side"
    DB_ROWS_CLOSE = 76, CALL, "(rows): release a db.rows query before its end"
    RELEASE = 77, CALL, "(number): a Lua table holding that host handle was collected (kernel/handles.py)"
    OFFER = (
        78,
        CALL,
        "(conns, out, limit): `out` to each connection whose unsent output stays within limit; reply the "
        "positions found closed, and the slow ones with their unsent bytes (nil, nil: all took it)",
    )
    ENCODE = 79, CALL, "(codec, data): data in that codec's text (base64, base64url, hex, uri)"
    DECODE = 80, CALL, '(codec, text): the bytes; or nil, "invalid <codec>"'
    DIGEST = (
        81,
        CALL,
        "(algorithm, data, key): the raw digest of data (sha1, sha256, sha512); HMAC with a key",
    )
    RANDOM = 82, CALL, "(n): n bytes from the system's cryptographic random source"
    SECRET_EQUAL = 83, CALL, "(a, b): whether a == b, in a time that does not tell where they differ"
    MASK = 84, CALL, "(data, key): data XOR the 4-byte key repeated (WebSocket masking, RFC 6455 5.3)"
    ON_DRAIN = 85, CALL, "(job, where): run job as a task when the server begins to drain (now, if it has)"
    DRAINING = 86, CALL, "(): whether the server is draining (SIGTERM, or a reload's old worker)"
    HTTP_ACCESS = (
        87,
        CALL,
        "(conn, log, lines): lines of the access log of that number, but for the peer's address that begins "
        "each (the host adds it: the line of a JSON log begins after its opening brace); mostly they travel "
        "with IDLE instead",
    )
    METRICS = (
        88,
        CALL,
        "(): moonlet.metrics' updates ({series = number} to add, to set: emptied) and this worker's runtime "
        "figures into the metrics store now, and every second from the first call on; reply the two tables",
    )


YIELDING = frozenset(op for op in Op if op.yields)
CALLS = frozenset(op for op in Op if not op.yields)
_BY_NUMBER = {int(op): op for op in Op}


def op_of(number: int) -> Op:
    """The op with that number (KeyError for none)."""
    return _BY_NUMBER[number]
