"""The closed vocabulary of requests Lua sends to the host.

Lua reaches the host through exactly one door, ``stdlib_lua/moonlet/_host.lua``, in two ways:

* a *yielding* request: the coroutine yields ``(op, a, b, c)`` and sleeps; the kernel hands it to the
  service that owns ``op`` and resumes the coroutine with the reply, now or later;
* a *call*: ``host.call(op, a, b, c)`` runs synchronously and never suspends, so it also works where Lua
  cannot yield (a ``table.sort`` comparator, a metamethod called from C).

Both share this one enum. The Lua side receives the numbers at bootstrap in a table that raises on an unknown
name, and ``tests/test_ops.py`` checks that every ``OP.NAME`` used in the Lua stdlib exists here and that
every member has exactly one handler.
"""

from __future__ import annotations

import enum


class Op(enum.IntEnum):
    # -- yielding requests (the coroutine sleeps until the reply) --
    EXIT = 0  # (ok, results_or_traceback, error): the task's body has returned (failed: the traceback and
    # the value it raised); never resumed again
    RECV = 1  # (conn, out): send `out`, then reply with bytes that arrived, or nil, err
    SEND = 2  # (conn, out): send `out`; wait while more than the high-water mark is unsent
    SENDALL = 3  # (conn, out): send `out`; wait until the kernel has taken every byte
    SLEEP = 4  # (seconds): reply true after that long
    LISTEN = 5  # (host_or_path, port, entry): reply a listener handle and its port, or nil, err
    PARK = 6  # (timeout): sleep until UNPARK (reply its value) or the timeout (nil, "timeout")
    JOIN = 7  # (task, timeout): wait until the task ends; reply as RESULT does, or nil, "timeout"
    POOL_RUN = 8  # ({pool=, timeout=}, {module=, fn=}, packed args): run a Lua function in a pool
    POOL_CALL = 9  # ({pool=, timeout=}, host function name, packed args): run a Python host function
    DB_QUERY = 10  # (target, sql, params): rows; target: a transaction, a database, or nil (the default)
    DB_EXEC = 11  # (target, sql, params): {changes=, last_id=}
    DB_BEGIN = 12  # (database or nil): a transaction handle once a connection (SQLite: the writer) is ours
    DB_END = 13  # (tx, commit): commit or roll back, and let the writer go
    CONNECT = 14  # (host_or_path, port, opts): an outgoing connection, or nil, err
    STARTTLS = 15  # (conn, opts): upgrade the connection to TLS
    RESOLVE = 16  # (name, timeout): the addresses of a host name
    UDP_OPEN = 17  # (host, port, entry): a UDP socket (serving datagrams with entry if given) and its port
    UDP_RECV = 18  # (sock, timeout): data, host, port of the next datagram
    HTTP_LISTEN = (
        19  # (host, port, {entry, options...}): an HTTP listener (served by request workers), its port
    )
    IDLE = (
        20  # (conn, out, served): a request worker sends `out` and gives conn back; reply (conn, data, last):
    )
    # a connection to serve next (its bytes; last: its next answer is its last), or nil: the worker ends
    DB_EXEC_MANY = 21  # (target, sql, sets): the statement once per parameter set, all or none: as DB_EXEC
    CHAN_GET = 22  # (channel, timeout): a value the spawned job sent: true, value; nil at its end (, err)
    CHAN_PUT = 23  # (channel, value): queue a value for the job (waits while full): true, or nil, "closed"
    CHAN_WAIT = 24  # (channel, timeout): the spawned job's results: true, results...; or nil, err
    DB_ROWS = 25  # (target, sql, params): start a query read in batches: its handle, or nil, err
    DB_FETCH = 26  # (rows, n): up to n more rows (fewer at the end, then the query is closed), or nil, err
    # -- calls (synchronous, never suspend) --
    WRITE = 32  # (conn, out): hand `out` to the transport now
    CLOSE = 33  # (conn, out, abort): send `out` and close; abort: close now, dropping what is unsent
    PEER = 34  # (conn): host, port of the peer (or the socket path)
    SETTIMEOUTS = 35  # (conn, send, read): seconds; math.huge or false means never
    BUFFERED = 36  # (conn): bytes received but not handed to Lua, bytes not yet sent
    UNLISTEN = 37  # (listener): stop accepting on it
    LOG = 38  # (level, message)
    PRINT = 39  # (text, target): write to standard output, or to a console session (target)
    NOW = 40  # (): wall-clock seconds as a float
    MONOTONIC = 41  # (): monotonic seconds as a float
    SPAWN = 42  # (job, where): start job (see _host.lua) as a task on the next loop turn; reply its handle
    CURRENT = 43  # (held): the running task's handle (held: for a table that gives it back, see RELEASE)
    UNPARK = 44  # (task, value): wake a parked task with value; false if it was not parked
    CANCEL = 45  # (task): end a task now; it is never resumed again
    DETACH = 46  # (task): the task outlives the connection that started it
    RESULT = 47  # (task): 0 while running; 1, packed results; 2, error
    WATCH = 48  # (task): unpark the running task when `task` ends
    UNWATCH = 49  # (task): undo WATCH
    TIMER = 50  # (delay, interval, job, where): run job as a task later (and every interval); reply job
    TIMER_CANCEL = 51  # (job): true if the timer of that job was pending
    STALL_CHECK = 52  # (): from the count hook: a message if this run has used up its CPU budget
    STALLED = 53  # (traceback): the running task is being stopped for stalling; remember where
    UDP_SEND = 54  # (sock, data, host, port): send one datagram
    UDP_CLOSE = 55  # (sock)
    REUSABLE = 56  # (conn): true if an idle connection may be reused (open, nothing unread from the peer)
    SHUTDOWN = 57  # (conn, out): send `out`, then end the sending direction (half-close)
    REPORT = 58  # (kind, plain data): one machine-readable line on standard output (moonlet bench)
    NEXT = 59  # (conn, served): a request worker goes on with conn's next buffered request; reply `last`
    HTTP_ERROR = 60  # (traceback): a request handler failed (logged in one line; its task goes on)
    SHARED_GET = 61  # (dict, key): the value, or nil
    SHARED_SET = 62  # (dict, key, value, {ttl=, mode=}): true, or false, "exists" / "not found"
    SHARED_INCR = 63  # (dict, key, by, init): the new value, or nil, err
    SHARED_DELETE = 64  # (dict, key)
    SHARED_KEYS = 65  # (dict, limit): the live keys
    DB_OPEN = 66  # (url or nil, opts): a database handle and its dialect, or nil, err; connects on first use
    HTTP_REJECT = 67  # (conn, status, why, answering): log a refused request, answer its status, close
    KEEP = 68  # (conn, idle_timeout): into a keep-alive pool: no task owns it; closed when the peer closes
    # it or after idle_timeout
    OWN = 69  # (conn, task or nil): that task (nil: the running one) owns conn: it closes when the task ends
    OPEN = 70  # (conn): true until the connection is closed (by either side, or with the task that owned it)
    TASK_FAILURES = 71  # (): spawned tasks that failed with nobody waiting for them: how many, the last error
    VIRTUAL_TIME = 72  # (on, real_limit, task): moonlet test's jumping clock on (for task, ended after
    # real_limit seconds of real time) or off (then: whether that limit ended it)
    SINGLE_PROCESS = 73  # (reason, where): the app keeps state in this process's memory: one worker, ever
    POOL_SPAWN = 74  # ({pool=, timeout=}, {module=, fn=} or {host=}, packed args): a job beside the task
    CHAN_CLOSE = 75  # (channel): close it from the task's side
    DB_ROWS_CLOSE = 76  # (rows): release a db.rows query before its end
    RELEASE = 77  # (number): a Lua table holding that host handle was collected (kernel/handles.py)
    OFFER = 78  # (conns, out, limit): `out` to each connection whose unsent output stays within limit;
    # reply the positions found closed, and the slow ones with their unsent bytes (nil, nil: all took it)

    @property
    def yields(self) -> bool:
        return self < Op.WRITE


YIELDING = frozenset(op for op in Op if op.yields)
CALLS = frozenset(op for op in Op if not op.yields)
