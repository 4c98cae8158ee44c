"""The reliability gates: each fault is contained, well-behaved clients keep being served, and the server's
numbers come back to their baseline once the fault has passed.

One server (FAULTS below: a line service and an HTTP service) runs the whole module. For every fault:
a probe client starts sending ECHO lines and timing the answers; a snapshot of the pristine counts; the
fault once as a warm-up (caches and interned strings now exist) and a snapshot once it has passed; the
fault again, and a snapshot once it has passed. The snapshot is the console's \\gc (a full collection of the
Lua and Python heaps) then \\stats (tasks, connections, timers, the Lua, Python and C heaps, the resident
size) and the process's open descriptors.
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import Server
from runtime.console.client import Session, find_socket

STALL_BUDGET = 0.3
FAULTS = r"""
local net, http, time, task, pool = require "moonlet.net", require "moonlet.http", require "moonlet.time",
  require "moonlet.task", require "moonlet.pool"
local log = require "moonlet.log"

local fail = {
  string = function() error("a string error") end,
  table = function() error({ code = 42 }) end,
  none = function() error() end,
  runtime = function() local t = nil; return t.field end,
  task = function() task.spawn(function() error("in a spawned task") end) end,
  call = function() return ("x"):rep(-1, {}) end,
}

net.listen { host = "127.0.0.1", port = 0, handler = function(conn)
  conn:settimeouts(1, 1, 1)               -- slow readers and writers are dropped after 1 s
  while true do
    local line, err = conn:readline()
    if not line then
      if err ~= "closed" then log.info("line service: " .. err) end   -- what the runtime told the app
      return
    end
    local cmd, rest = line:match("^(%S+)%s*(.*)$")
    if cmd == "ECHO" then conn:write(rest, "\n")
    elseif cmd == "FRAME" then                -- a length, then that many bytes
      local data, ferr = conn:readn(tonumber(rest))
      conn:write(data and ("GOT " .. #data) or ("ERR " .. ferr), "\n")
    elseif cmd == "BIG" then
      conn:write(("x"):rep(8 * 1024 * 1024), "\n")
      local ok, werr = conn:flush()
      if not ok then log.info("line service: " .. werr) return end
    elseif cmd == "FAIL" then fail[rest]()
    elseif cmd == "ALLOC" then                 -- (it waits now and then: memory runs out, not time)
      local t = {} for i = 1, 1e9 do t[i] = ("y"):rep(1000) .. i; if i % 1000 == 0 then sleep(0) end end
    elseif cmd == "SPIN" then -- (a loop LuaJIT runs interpreted: one it compiled ends the worker instead)
      local s = "x" while true do s = s:gsub("x", function() return "x" end) end
    elseif cmd == "TIMERS" then
      for i = 1, tonumber(rest) do           -- (a thousand a turn: 30,000 in one run overrun the budget)
        time.after(0.3, function() end)
        if i % 1000 == 0 then sleep(0) end
      end
      conn:write("OK\n")
    elseif cmd == "POOL" then                 -- more jobs than the pool and its queue take
      local jobs, busy = {}, 0
      for i = 1, 12 do
        jobs[i] = task.spawn(function() return pool.run("lib", "nap", 0.2) end)
      end
      for i = 1, 12 do
        local _, done, perr = jobs[i]:wait()         -- true, then pool.run's own results
        if not done and perr == "busy" then busy = busy + 1 end
      end
      conn:write("BUSY ", busy, "\n")
    else conn:write("ERR unknown\n") end
  end
end }

http.serve { host = "127.0.0.1", port = 0, header_timeout = 1, body_timeout = 1,
  handler = function() return 200, nil, "ok" end }
"""
LIB = """
local M = {}
function M.nap(s) local t = os.clock() while os.clock() - t < s do end return true end
return M
"""


Target = tuple[Server, int, int, Session, dict[str, int]]  # the last: the counts with nothing connected


class Probe:
    """A well-behaved client: one ECHO every few milliseconds on its own connection, each answer timed."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            t0 = time.perf_counter()
            try:
                self.sock.sendall(b"ECHO %d\n" % n)
                got = b""
                while not got.endswith(b"\n"):
                    chunk = self.sock.recv(100)
                    if not chunk:
                        raise ConnectionError("closed")
                    got += chunk
            except OSError as e:
                self.errors.append(repr(e))
                return
            if got != b"%d\n" % n:
                self.errors.append(f"wrong answer {got!r}")
                return
            self.latencies.append(time.perf_counter() - t0)
            time.sleep(0.003)

    def stop(self) -> tuple[float, float]:
        """(p99, worst) in seconds, after checking every answer came right (and that there were enough)."""
        deadline = time.monotonic() + 5
        while len(self.latencies) < 50 and not self.errors and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stop.set()
        self._thread.join(10)
        assert not self.errors, self.errors
        assert len(self.latencies) >= 50, len(self.latencies)
        ordered = sorted(self.latencies)
        return ordered[int(len(ordered) * 0.99)], ordered[-1]


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    where = tmp_path_factory.mktemp("gates")
    (where / "lib.lua").write_text(LIB)
    (where / "faults.lua").write_text(FAULTS)
    server = Server(
        where / "faults.lua",
        [],
        options=[
            "--workers", "1", "--stall-budget", str(STALL_BUDGET), "--max-memory", str(128 << 20),
            "--pool", "cpu=2:2", "--max-connections", "200",
        ],
    )  # fmt: skip
    http_port = int(server.wait_log(re.compile(rb"listening on (\S+):(\d+) \(http\)")).group(2))
    session = Session(find_socket(str(server.proc.pid)))
    yield server, server.port, http_port, session, snapshot(server, session)
    session.close()
    server.stop()


def snapshot(server: Server, session: Session) -> dict[str, int]:
    server.log_text()  # (drain the log pipe, so the server never blocks writing to it)
    assert "lua_memory_bytes" in session.ask({"op": "command", "line": "gc"})["text"]
    text = session.ask({"op": "command", "line": "stats"})["text"]
    numbers = {k: int(v) for k, v in re.findall(r"^(\w+): (\d+)$", text, re.M)}
    numbers["descriptors"] = len(list(Path(f"/proc/{server.proc.pid}/fd").iterdir()))
    return numbers


COUNTS = ("tasks", "connections", "timers", "descriptors", "handles")


def settle(
    server: Server,
    session: Session,
    counts: dict[str, int],
    ceilings: dict[str, float] | None = None,
    timeout: float = 8,
) -> dict[str, int]:
    """Wait (a while) until the counts are back, and each figure in ``ceilings`` under its ceiling: closing
    connections, ending tasks and dropping what their callbacks hold take a moment after the fault. The
    last snapshot."""
    deadline = time.monotonic() + timeout
    while True:
        now = snapshot(server, session)
        back = all(now[k] == counts[k] for k in COUNTS)
        under = all(now[k] <= ceiling for k, ceiling in (ceilings or {}).items() if k in now)
        if (back and under) or time.monotonic() > deadline:
            return now
        time.sleep(0.1)


def lines_conn(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def read_to_end(s: socket.socket) -> bytes:
    data = b""
    with contextlib.suppress(OSError):
        while chunk := s.recv(65536):
            data += chunk
    s.close()
    return data


# -- the faults: each takes (line port, http port) and returns once the fault has done its worst ----------
def line_slowloris(port: int, _http: int) -> None:
    socks = [lines_conn(port) for _ in range(20)]
    for _ in range(15):  # a byte every 0.1 s, never a newline: the 1 s read timeout ends them
        for s in socks:
            with contextlib.suppress(OSError):
                s.send(b"E")
        time.sleep(0.1)
    for s in socks:
        read_to_end(s)


def endless_line(port: int, _http: int) -> None:
    for _ in range(3):
        s = lines_conn(port)
        with contextlib.suppress(OSError):
            for _ in range(64):  # 4 MiB without a newline: "line too long" at 64 KiB ends the handler
                s.sendall(b"z" * 65536)
        read_to_end(s)


def huge_frame(port: int, _http: int) -> None:
    s = lines_conn(port)
    s.sendall(b"FRAME 5000000000\n")
    assert s.recv(100) == b"ERR too large\n"
    s.close()


def reset_peers(port: int, _http: int) -> None:
    for _ in range(50):
        s = lines_conn(port)
        s.sendall(b"ECHO bye\nBIG\n")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()  # RST, with the server in the middle of writing
    time.sleep(0.5)


def vanished_peers(port: int, _http: int) -> None:
    socks = [lines_conn(port) for _ in range(30)]
    for s in socks:
        s.sendall(b"ECHO half")  # then silence: no newline, no close
    time.sleep(1.5)  # the read timeout ends them
    for s in socks:
        read_to_end(s)


def never_reads(port: int, _http: int) -> None:
    socks = [lines_conn(port) for _ in range(5)]
    for s in socks:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"BIG\n")  # 8 MiB answers nobody reads: the send timeout (1 s) ends them
    time.sleep(2)
    for s in socks:
        s.close()


def handler_errors(port: int, _http: int) -> None:
    for kind in ("string", "table", "none", "runtime", "task", "call"):
        s = lines_conn(port)
        s.sendall(f"FAIL {kind}\n".encode())
        read_to_end(s)


def runaway_allocation(port: int, _http: int) -> None:
    s = lines_conn(port)
    s.sendall(b"ALLOC\n")
    assert read_to_end(s) == b""


def busy_loop(port: int, _http: int) -> None:
    s = lines_conn(port)
    s.sendall(b"SPIN\n")
    assert read_to_end(s) == b""


def header_slowloris(_port: int, http: int) -> None:
    socks = [lines_conn(http) for _ in range(20)]
    for s in socks:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
    for _ in range(15):
        for s in socks:
            with contextlib.suppress(OSError):
                s.send(b"X-Slow: 1\r\n")
        time.sleep(0.1)
    for s in socks:
        assert read_to_end(s).startswith(b"HTTP/1.1 408")


def many_timers(port: int, _http: int) -> None:
    s = lines_conn(port)
    s.sendall(b"TIMERS 30000\n")
    assert s.recv(10) == b"OK\n"
    s.close()
    time.sleep(0.8)


def pool_exhaustion(port: int, _http: int) -> None:
    s = lines_conn(port)
    s.sendall(b"POOL\n")
    s.settimeout(20)
    answer = s.recv(100)
    assert answer.startswith(b"BUSY ") and int(answer.split()[1]) > 0, answer  # refused at once, not queued
    s.close()


def connection_flood(port: int, _http: int) -> None:
    socks = []
    for _ in range(300):  # past --max-connections 200: the rest are accepted and closed at once
        with contextlib.suppress(OSError):
            socks.append(lines_conn(port))
    refused = 0
    for s in socks[200:]:
        s.settimeout(5)
        with contextlib.suppress(OSError):
            refused += s.recv(10) == b""
    for s in socks:
        s.close()
    assert refused >= 90, refused


FAULT_CASES: list[tuple[Callable[[int, int], None], bytes | None, float]] = [
    # (the fault, a log line it must cause, the worst latency the probe may see)
    (line_slowloris, b"line service: timeout", 0.25),
    (endless_line, b"line service: line too long", 0.25),
    (huge_frame, None, 0.25),
    (reset_peers, None, 0.25),
    (vanished_peers, b"line service: timeout", 0.25),
    (never_reads, b"the peer took no data", 0.25),
    (handler_errors, b"in a spawned task", 0.25),
    # it allocates 128 MiB on the loop thread, and the collector then frees it there: ~0.5 s here, 0.86 s
    # with the other core busy
    (runaway_allocation, b"not enough memory", 1.2),
    (busy_loop, b"stall", STALL_BUDGET + 0.5),  # Lua runs on the loop: the budget is the bound
    (header_slowloris, b"408", 0.25),
    (many_timers, None, 0.5),
    (pool_exhaustion, None, 0.25),
    (connection_flood, None, 0.25),  # (its log line comes once per 10 s: the warm-up had it)
]


# A burst of 300 connections accepted and closed leaves Python's free lists and the connection dict at their
# peak for a while: after the same burst twice, the heap was 537 blocks under to 57 over the warmed-up
# figure (6 runs, 2026-12-06), and a warmed-up figure taken low by chance failed the +64 bound 2 times in 9
# suite runs. A leak of host objects shows in `handles` (a count above, which must come back exactly).
PYTHON_SLACK = {connection_flood: 256}


@pytest.mark.parametrize(
    ("fault", "logged", "worst"),
    FAULT_CASES,
    ids=[f.__name__ for f, _, _ in FAULT_CASES],
)
def test_fault_is_contained_and_the_baseline_returns(
    target: Target,
    fault: Callable[[int, int], None],
    logged: bytes | None,
    worst: float,
) -> None:
    server, port, http_port, session, idle = target
    probe = Probe(port)
    try:
        # the counts every fault must come back to: the idle server's, plus the probe's task and socket
        pristine = {**idle, "tasks": idle["tasks"] + 1, "connections": idle["connections"] + 1}
        pristine["handles"] += 1  # (the probe's connection)
        pristine["descriptors"] += 1
        assert settle(server, session, pristine)["connections"] == pristine["connections"]
        fault(port, http_port)  # warm-up: every code path and cache the fault touches now exists
        warmed = settle(server, session, pristine)
        seen = len(server.log_lines)
        fault(port, http_port)
        # memory against the warmed-up server, once the fault has passed: the three heaps come back (Lua's
        # within 5%; Python's within 64 blocks, where keeping one object for each connection or timer of a
        # fault would pass it; the C heap within 5% plus the capacity a dict or array that grew to the
        # fault's peak keeps, which varies with timing)
        ceilings = {
            "lua_memory_bytes": warmed["lua_memory_bytes"] * 1.05 + 64 * 1024,
            "python_heap_blocks": warmed["python_heap_blocks"] + PYTHON_SLACK.get(fault, 64),
            "c_heap_bytes": warmed.get("c_heap_bytes", 0) * 1.05 + (2 << 20),  # (glibc's figure)
        }
        after = settle(server, session, pristine, ceilings)
    finally:
        try:
            p99, slowest = probe.stop()
        finally:
            probe.sock.close()
    if logged is not None:  # the fault was seen and said in the log (again, after the warm-up)
        assert any(logged in line for line in server.log_lines[seen:]), server.log_text()[-3000:]
    for count in COUNTS:
        assert warmed[count] == pristine[count] == after[count], (count, pristine, warmed, after)
    for figure, ceiling in ceilings.items():
        assert after.get(figure, 0) <= ceiling, (figure, warmed, after)
    # the resident size only roughly: after the 128 MiB allocation the allocators keep freed pages and touch
    # others, so it wanders by a few percent with no heap growing
    assert after["process_memory_bytes"] <= warmed["process_memory_bytes"] * 1.25, (warmed, after)
    assert slowest < worst or p99 < worst / 2, (p99, slowest)  # the well-behaved client kept being served
    assert server.proc.poll() is None
