"""The runtime's own metrics (runtime/services/metrics.py): ``--metrics`` serving every worker's, what each
service counts, the console's ``\\metrics``. (The app's own metrics through an HTTP route: test_http.py.)"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT

APP = """
local net, db, pool = require "moonlet.net", require "moonlet.db", require "moonlet.pool"
net.listen { port = 0, handler = function(conn)
  local line = conn:readline()
  if line == "db" then
    db.query("select 1")
  elseif line == "pool" then
    pool.run("string", "rep", "x", 3)
  elseif line == "stall" then
    local s = "x" -- (stopped by the stall budget; a loop LuaJIT runs interpreted, so there too)
    while true do s = s:gsub("x", function() return "x" end) end
  end
  conn:write("done\\n")
end }
"""


def scrape(port: int) -> dict[str, Any]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"text/plain; version=0.0.4" in head, head
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def total(families: dict[str, Any], name: str, sample: str | None = None, **labels: str) -> float:
    """The sum over workers of a metric's samples (named ``sample``, default the metric's own name); 0 for a
    metric not written yet."""
    names = (sample,) if sample else (name, name + "_total")  # (the parser drops a counter's _total)
    return sum(
        s.value
        for s in (families[name].samples if name in families else [])
        if s.name in names and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_the_metrics_port_serves_what_every_worker_counted(lua_server) -> None:  # type: ignore[no-untyped-def]
    options = ["--workers", "2", "--metrics", "127.0.0.1:0", "--stall-budget", "0.2"]
    server = lua_server(APP, options=options, ready=re.compile(rb"listening on (\S+):(\d+)\n"))  # (the app's)
    http = re.compile(rb"listening on 127\.0\.0\.1:(\d+) \(http\)")
    metrics_port = int(server.wait_log(http).group(1))
    deadline = time.monotonic() + 15
    while len(http.findall(server.log_text().encode())) < 2:  # (each worker's: port 0 is the same port)
        assert time.monotonic() < deadline, server.log_text()
        time.sleep(0.05)
    assert set(http.findall(server.log_text().encode())) == {str(metrics_port).encode()}
    assert metrics_port != server.port
    sent = {"db": 6, "pool": 5, "plain": 4, "stall": 1}
    for line, times in sent.items():
        for _ in range(times):
            c = server.connect()
            c.send(line.encode() + b"\n")
            if line != "stall":
                assert c.line() == b"done"
            c.close()
    server.wait_log(b"stalled")
    connections = sum(sent.values())
    # every worker writes what it counted once a second: within a few, a scrape sees all of it
    deadline, scrapes = time.monotonic() + 15, 0
    while True:
        families = scrape(metrics_port)
        scrapes += 1  # (each on a connection of its own: accepted, this one included)
        seen = (
            total(families, "moonlet_connections_accepted") - scrapes,
            total(families, "moonlet_db_seconds", "moonlet_db_seconds_count", call="query"),
            total(families, "moonlet_pool_wait_seconds", "moonlet_pool_wait_seconds_count", pool="cpu"),
            total(families, "moonlet_stalls"),
            # (the metrics listener answers scrapes with the HTTP server: they are HTTP requests like any)
            total(families, "moonlet_http_requests", status="200") >= 1,
        )
        if seen == (connections, sent["db"], sent["pool"], 1, True):
            break
        assert time.monotonic() < deadline, seen
        time.sleep(0.2)
    db_buckets = [s for s in families["moonlet_db_seconds"].samples if s.name.endswith("_bucket")]
    assert {s.labels["le"] for s in db_buckets} >= {"0.001", "1", "+Inf"}
    assert {s.labels["worker"] for s in families["moonlet_tasks"].samples} == {"1", "2"}
    assert {s.labels["worker"] for s in families["process_cpu_seconds"].samples} == {"1", "2"}
    assert total(families, "moonlet_listeners") == 4  # (the app's and the metrics', on each worker)


def test_the_console_shows_the_metrics(lua_server) -> None:  # type: ignore[no-untyped-def]
    server = lua_server(APP)
    c = server.connect()
    c.send(b"db\n")
    assert c.line() == b"done"
    shown = subprocess.run(
        [sys.executable, "-m", "runtime", "repl", "-e", "\\metrics", str(server.proc.pid)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    families = {f.name: f for f in text_string_to_metric_families(shown.stdout)}
    assert total(families, "moonlet_db_seconds", "moonlet_db_seconds_count", call="query") == 1, shown
    assert total(families, "moonlet_connections_accepted") == 1, shown


def test_a_bad_metrics_address_is_refused_and_a_taken_port_stops_the_server(tmp_path) -> None:  # type: ignore[no-untyped-def]
    app = tmp_path / "app.lua"
    app.write_text(APP)
    bad = subprocess.run(
        [sys.executable, "-m", "runtime", "run", "--metrics", "nope", str(app)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert bad.returncode == 2 and "--metrics: expected [HOST:]PORT, not 'nope'" in bad.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        stopped = subprocess.run(
            [sys.executable, "-m", "runtime", "run", "--workers", "1", "--metrics", str(port), str(app)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert stopped.returncode == 1, stopped.stderr
    assert re.search(
        rf"ERROR moonlet: --metrics: cannot listen on 127\.0\.0\.1:{port}: .*in use", stopped.stderr
    )


PASSING = """
local http, metrics = require "moonlet.http", require "moonlet.metrics"
local passing  -- a listener opened, asked once, closed
passing = assert(http.serve { port = 0, handler = function()
  passing:close()
  return 200, nil, "bye\\n"
end })
assert(http.serve { port = 0, handler = metrics.handler })
"""


def test_a_closed_listeners_requests_leave_the_metrics(lua_server) -> None:  # type: ignore[no-untyped-def]
    server = lua_server(PASSING, ready=re.compile(rb"listening on (\S+):(\d+) \(http\)"))
    ports = [int(p) for p in re.findall(rb"listening on 127\.0\.0\.1:(\d+)", server.log_text().encode())]
    deadline = time.monotonic() + 10
    while len(ports) < 2:
        assert time.monotonic() < deadline, server.log_text()
        time.sleep(0.05)
        ports = [int(p) for p in re.findall(rb"listening on 127\.0\.0\.1:(\d+)", server.log_text().encode())]
    passing, metrics_port = ports
    with socket.create_connection(("127.0.0.1", passing), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 200 ")
    for _ in range(2):  # (the second scrape sees the first one counted)
        families = scrape(metrics_port)
    with pytest.raises(OSError):  # (closed)
        socket.create_connection(("127.0.0.1", passing), timeout=5).close()
    listeners = {s.labels["listener"] for s in families["moonlet_http_requests"].samples}
    assert listeners == {f"127.0.0.1:{metrics_port}"}, listeners
