"""The client side against real peers (redis-server, HTTP, UDP, TLS); the forwarder; moonlet bench."""

from __future__ import annotations

import contextlib
import http.server
import json
import re
import shutil
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from conftest import ROOT, run_in_process, run_script


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def lines(tmp_path: Path, source: str, *args: str) -> list[str]:
    """What the script printed, run in this process (the in-process harness, on the real clock: its peers
    are servers in other processes)."""
    code, out = run_in_process(tmp_path, source, *args, virtual_time=False, name="script.lua")
    assert code == 0, out
    return out


def test_resp_over_net_connect_against_redis_server(tmp_path: Path, redis_server: int) -> None:
    out = lines(
        tmp_path,
        """
        local net = require "moonlet.net"
        local function command(conn, ...)
          local parts = { "*" .. select("#", ...) .. "\\r\\n" }
          for i = 1, select("#", ...) do
            local a = tostring((select(i, ...)))
            parts[#parts + 1] = "$" .. #a .. "\\r\\n" .. a .. "\\r\\n"
          end
          conn:write(parts)
          local head = assert(conn:readline())
          if head:sub(1, 1) == "$" then
            local n = tonumber(head:sub(2))
            if n < 0 then return nil end
            local body = conn:readn(n + 2)
            return body:sub(1, n)
          end
          return head
        end
        local conn = assert(net.connect("127.0.0.1", tonumber(arg[1])))
        print(command(conn, "SET", "greeting", "hello\\0world"))
        print(#command(conn, "GET", "greeting"))
        print(command(conn, "INCRBY", "n", 41), command(conn, "INCR", "n"))
        print(conn:setkeepalive())
        local again = assert(net.connect("127.0.0.1", tonumber(arg[1])))
        print(again == conn, command(again, "PING"))
        """,
        str(redis_server),
    )
    assert out == ["+OK", "11", ":41\t:42", "true", "true\t+PONG"]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    connections: ClassVar[set[int]] = set()

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        _Handler.connections.add(id(self.connection))
        if self.path == "/hello":
            self._send(200, b"hello\n")
        elif self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (b"one ", b"two ", b"three"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/hello")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/big":
            self._send(200, b"x" * 1_000_000)
        elif self.path == "/cut":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"only part")
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
        elif self.path == "/slow":
            time.sleep(1)
            self._send(200, b"late")
        else:
            self._send(404, b"no")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self._send(201, b"got " + body)

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def http_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Handler.connections.clear()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_http_client_keepalive_chunked_redirects_streaming_and_errors(
    tmp_path: Path, http_server: int
) -> None:
    out = lines(
        tmp_path,
        """
        local http = require "moonlet.http"
        local base = "http://127.0.0.1:" .. arg[1]
        local r = assert(http.get(base .. "/hello"))
        print("get", r.status, r.body == "hello\\n", r.headers["content-length"])
        print("again", http.get(base .. "/hello").status)
        print("chunked", http.get(base .. "/chunked").body)
        print("no follow", http.get(base .. "/redirect").status)
        local f = assert(http.get(base .. "/redirect", { redirects = 2 }))
        print("follow", f.status, f.body == "hello\\n")
        local p = assert(http.request { method = "POST", url = base .. "/post", body = "data" })
        print("post", p.status, p.body)
        local s = assert(http.request { url = base .. "/big", stream = true })
        local n, pieces = 0, 0
        while true do
          local piece = s:read()
          if not piece then break end
          n, pieces = n + #piece, pieces + 1
        end
        print("stream", n, pieces > 1)
        print("too big", http.get(base .. "/big", { max_body = 1000 }))
        print("cut", http.get(base .. "/cut"))
        print("slow", http.get(base .. "/slow", { timeout = 0.2 }))
        print("refused", http.get("http://127.0.0.1:1/"))
        print("dns", http.get("http://no-such-host.invalid/"))
        """,
        str(http_server),
    )
    assert out == [
        "get\t200\ttrue\t6",
        "again\t200",
        "chunked\tone two three",
        "no follow\t302",
        "follow\t200\ttrue",
        "post\t201\tgot data",
        "stream\t1000000\ttrue",
        "too big\tnil\thttp: body too large",
        "cut\tnil\tclosed",
        "slow\tnil\ttimeout",
        "refused\tnil\tconnection refused",
        "dns\tnil\tresolve: Name or service not known",
    ]
    assert len(_Handler.connections) <= 4  # keep-alive: the GETs shared connections


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, Path, int]]:
    """Echo servers with a self-signed certificate for 'localhost': one speaking TLS at once, one upgrading
    after a STARTTLS line; yields their ports and the certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl missing")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except OSError:
                continue
            threading.Thread(target=handle, args=(raw,), daemon=True).start()

    def echo(conn: ssl.SSLSocket) -> None:
        with conn, conn.makefile("rwb") as f:
            for line in f:
                f.write(b"secure " + line)
                f.flush()

    def handle(raw: socket.socket) -> None:
        try:
            with raw.makefile("rwb") as f:
                if f.readline() != b"STARTTLS\n":  # a protocol that starts in the clear, then upgrades
                    return
                f.write(b"GO\n")
                f.flush()
            echo(ctx.wrap_socket(raw, server_side=True))
        except (OSError, ssl.SSLError):
            pass
        finally:
            raw.close()

    def handle_direct(raw: socket.socket) -> None:
        try:
            echo(ctx.wrap_socket(raw, server_side=True))
        except (OSError, ssl.SSLError):
            pass
        finally:
            raw.close()

    direct = socket.create_server(("127.0.0.1", 0))

    def serve_direct() -> None:
        direct.settimeout(0.2)
        while not stop.is_set():
            try:
                raw, _ = direct.accept()
            except OSError:
                continue
            threading.Thread(target=handle_direct, args=(raw,), daemon=True).start()

    threads = [
        threading.Thread(target=serve, daemon=True),
        threading.Thread(target=serve_direct, daemon=True),
    ]
    for t in threads:
        t.start()
    yield direct.getsockname()[1], cert, listener.getsockname()[1]
    stop.set()
    for t in threads:
        t.join(2)
    listener.close()
    direct.close()


def test_tls_verified_by_default_starttls_and_a_failed_verification(tmp_path: Path, tls_server) -> None:  # type: ignore[no-untyped-def]
    port, cert, starttls_port = tls_server
    out = lines(
        tmp_path,
        """
        local net = require "moonlet.net"
        local port, cert, starttls_port = tonumber(arg[1]), arg[2], tonumber(arg[3])
        print("untrusted", net.connect("127.0.0.1", port, { tls = true }))
        local trusted = { cafile = cert, server_name = "localhost" }
        local c = assert(net.connect("127.0.0.1", port, { tls = trusted }))
        c:write("hi\\n")
        print("verified", c:readline())
        local u = assert(net.connect("127.0.0.1", starttls_port))
        u:write("STARTTLS\\n")
        print("plain", u:readline())
        print("upgrade", u:starttls { cafile = cert, server_name = "localhost" })
        u:write("after\\n")
        print("upgraded", u:readline())
        local w = assert(net.connect("127.0.0.1", starttls_port))
        w:write("STARTTLS\\n")
        w:readline()
        print("wrong name", w:starttls { cafile = cert, server_name = "example.com" })
        """,
        str(port),
        str(cert),
        str(starttls_port),
    )
    assert out[0].startswith("untrusted\tnil\ttls: certificate verify failed: self")
    assert out[1:5] == ["verified\tsecure hi", "plain\tGO", "upgrade\ttrue", "upgraded\tsecure after"]
    assert out[5].startswith("wrong name\tnil\ttls: certificate verify failed: Hostname mismatch")


def test_the_connect_timeout_of_settimeouts_bounds_a_later_tls_handshake(tmp_path: Path) -> None:
    done = run_script(
        tmp_path,
        """
        local net, time = require "moonlet.net", require "moonlet.time"
        -- a peer that never answers the handshake
        local silent = assert(net.listen { port = 0, handler = function(c) c:readn(100000) end })
        local c = assert(net.connect("127.0.0.1", silent.port))
        c:settimeouts(0.2, nil, nil)
        local t0 = time.monotonic()
        local ok, err = c:starttls { verify = false }
        print(ok, err, time.monotonic() - t0 < 5)   -- (the default handshake timeout is 10 s)
        silent:close()
        """,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().split() == ["nil", "timeout", "true"]


def test_udp_round_trips_through_the_echo_app(run_app) -> None:  # type: ignore[no-untyped-def]
    server = run_app("apps/udp_echo.lua", "--port", "0", ready=re.compile(rb"serving udp on (\S+):(\d+)"))
    port = server.port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        for i in range(20):
            payload = b"datagram %d \x00\xff" % i
            s.sendto(payload, ("127.0.0.1", port))
            data, _ = s.recvfrom(2048)
            assert data == payload


def test_a_udp_handler_that_fails_on_every_datagram_is_logged_once_a_second(lua_host) -> None:  # type: ignore[no-untyped-def]
    server = lua_host(
        """
        local net = require "moonlet.net"
        net.udp { host = "127.0.0.1", port = 0, handler = function(data, peer, s)
          if data == "ping" then s:sendto("pong", peer.host, peer.port) return end
          error("cannot parse " .. data)
        end }
        """,
        ready=re.compile(rb"serving udp on (\S+):(\d+)"),
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        for i in range(200):
            s.sendto(b"bad %d" % i, ("127.0.0.1", server.port))
        s.sendto(b"ping", ("127.0.0.1", server.port))
        assert s.recvfrom(100)[0] == b"pong"  # served all along
    summary = server.wait_log(re.compile(rb"handler error on udp handler on \S+ \((\d+) in the last 1 s"))
    lines = re.findall(r"handler error", server.log_text())
    assert len(lines) == 2, server.log_text()[-3000:]  # the first at once, then how many more, a second later
    assert int(summary.group(1)) == 199
    assert "cannot parse bad 199" in server.log_text()


def test_connects_that_time_out_leave_no_connection_records(lua_server) -> None:  # type: ignore[no-untyped-def]
    full = socket.socket()  # a listener whose accept queue is full: new connects get no answer at all
    full.bind(("127.0.0.1", 0))
    full.listen(1)
    silent = socket.socket()  # one that accepts and never answers (a TLS handshake that never ends)
    silent.bind(("127.0.0.1", 0))
    silent.listen(1024)
    held = [socket.create_connection(full.getsockname(), timeout=5) for _ in range(2)]  # (the queue: 2)
    try:
        server = lua_server(
            """
            local http, task, net = require "moonlet.http", require "moonlet.task", require "moonlet.net"
            local log = require "moonlet.log"
            local full, silent = tonumber(arg[1]), tonumber(arg[2])
            net.listen { host = "127.0.0.1", port = 0, handler = function() end }
            local timeouts = 0
            local function note(e) if e == "timeout" then timeouts = timeouts + 1 end end
            for _ = 1, 5 do
              local ts = {}
              for i = 1, 60 do
                ts[i] = spawn(function()
                  note(select(2, http.request { url = "http://127.0.0.1:" .. full .. "/",
                    timeout = 0.01 + (i % 5) * 0.005 }))
                  note(select(2, http.request { url = "https://127.0.0.1:" .. silent .. "/",
                    timeout = 0.001 + (i % 5) * 0.002 }))
                  local c = net.connect("127.0.0.1", silent)
                  if c then note(select(2, c:starttls { timeout = 0.01, verify = false })) end
                end)
              end
              task.wait_all(ts)
            end
            log.info("timeouts: " .. timeouts)
            """,
            str(full.getsockname()[1]),
            str(silent.getsockname()[1]),
        )
        server.wait_log(re.compile(rb"timeouts: 900"), timeout=30)
        deadline = time.monotonic() + 5
        while True:
            stats = subprocess.run(
                [sys.executable, "-m", "runtime", "repl", "-e", "\\stats", str(server.proc.pid)],
                cwd=ROOT, capture_output=True, text=True, timeout=30, check=True,
            ).stdout  # fmt: skip
            if "\nconnections: 0\n" in stats or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert "\nconnections: 0\n" in stats, stats
    finally:
        for s in (*held, full, silent):
            s.close()


def test_forwarder_carries_redis_benchmark_to_redis_server(run_app, redis_server: int) -> None:  # type: ignore[no-untyped-def]
    if shutil.which("redis-benchmark") is None:
        pytest.skip("redis-benchmark missing")
    server = run_app("apps/forward.lua", "--port", "0", "--to", f"127.0.0.1:{redis_server}")
    server.wait_log(b"forwarding")
    proc = subprocess.run(
        [
            "redis-benchmark",
            "-p",
            str(server.port),
            "-t",
            "set,get",
            "-n",
            "20000",
            "-c",
            "20",
            "-P",
            "4",
            "-q",
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
    text = proc.stdout.decode() + proc.stderr.decode()
    assert proc.returncode == 0, text
    assert "SET:" in text and "GET:" in text and "error" not in text.lower()
    # half-close: the client ends its side, and still reads redis' answer
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"PING\r\n")
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(100):
            data += chunk
    assert data == b"+PONG\r\n"


def test_forwarder_to_a_refused_port_closes_the_client_and_logs(run_app) -> None:  # type: ignore[no-untyped-def]
    server = run_app("apps/forward.lua", "--port", "0", "--to", "127.0.0.1:1")
    server.wait_log(b"forwarding")
    c = server.connect()
    assert c.read_all() == b""
    server.wait_log(b"forward to 127.0.0.1:1 failed: connection refused")


def test_webcall_answers_with_part_of_an_http_result(run_app, http_server: int) -> None:  # type: ignore[no-untyped-def]
    server = run_app("apps/webcall.lua", "--port", "0", "--url", f"http://127.0.0.1:{http_server}")
    c = server.connect()
    c.send(b"GET /hello\n")
    assert c.line() == b"200 6 hello"
    c.send(b"GET /missing\n")
    assert c.line() == b"404 2 no"
    c.send(b"nonsense\n")
    assert c.line() == b"ERR usage: GET /path"


def test_pool_size_makes_connects_wait_then_busy(tmp_path: Path, redis_server: int) -> None:
    out = lines(
        tmp_path,
        """
        local net = require "moonlet.net"
        local port = tonumber(arg[1])
        local a = assert(net.connect("127.0.0.1", port, { pool_size = 1 }))
        print("second", net.connect("127.0.0.1", port, { pool_size = 1, pool_timeout = 0.05 }))
        local waiter = spawn(function() return net.connect("127.0.0.1", port, { pool_size = 1 }) end)
        sleep(0.02)
        a:setkeepalive()
        local ok, b = waiter:wait()
        print("handed over", ok, b == a)
        b:close()
        """,
        str(redis_server),
    )
    assert out == ["second\tnil\tbusy", "handed over\ttrue\ttrue"]


def bench(*args: str, timeout: float = 120) -> dict:  # type: ignore[type-arg]
    proc = subprocess.run(
        [sys.executable, "-m", "runtime", "bench", "--json", *args],
        cwd=ROOT,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_moonlet_bench_against_kv_counts_latencies_and_errors(run_app) -> None:  # type: ignore[no-untyped-def]
    server = run_app("apps/kv.lua", "--port", "0")
    port = str(server.port)
    exact = bench("-c", "8", "-n", "2000", "bench/load/pong.lua", "--port", port)
    assert exact["transactions"] == 2000 and exact["errors"] == 0
    lat = exact["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]
    two = bench("-c", "8", "-w", "2", "-d", "1", "bench/load/pong.lua", "--port", port, "--pipeline", "4")
    assert two["transactions"] > 100 and two["errors"] == 0 and 0.9 < two["seconds"] < 3
    paced = bench("-c", "4", "-r", "200", "-d", "1", "bench/load/pong.lua", "--port", port)
    assert 150 <= paced["transactions"] <= 210  # open loop: the rate is held, not exceeded
    refused = bench("-c", "2", "-d", "0.5", "bench/load/pong.lua", "--port", "1")
    assert refused["transactions"] == 0 and refused["errors_by_kind"] == {
        "connection refused": refused["errors"]
    }


class Upstream(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class OneAnswerThenClose(socketserver.StreamRequestHandler):
    """Answers one request with keep-alive headers, then closes: every pooled connection goes stale."""

    def handle(self) -> None:
        line = self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b""):
            pass
        method = line.split()[0].decode() if line else "?"
        body = f"{method} ok".encode()
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


class Dripping(socketserver.StreamRequestHandler):
    """A head at once, then a body of 100 bytes, one every 50 ms: each read is quick, the whole is not."""

    def handle(self) -> None:
        while self.rfile.readline() not in (b"\r\n", b""):
            pass
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        for _ in range(100):
            try:
                self.wfile.write(b"x")
                self.wfile.flush()
            except OSError:
                return
            time.sleep(0.05)


@contextlib.contextmanager
def upstream(handler: type[socketserver.BaseRequestHandler]) -> Iterator[int]:
    server = Upstream(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_a_stale_pooled_connection_is_retried_once_for_idempotent_requests(lua_run) -> None:  # type: ignore[no-untyped-def]
    with upstream(OneAnswerThenClose) as port:
        code, out = lua_run(
            f"""
            local http, time = require "moonlet.http", require "moonlet.time"
            local ok, failed = 0, {{}}
            for i = 1, 20 do
              local res, err = http.get("http://127.0.0.1:{port}/" .. i)
              if res and res.body == "GET ok" then ok = ok + 1 else failed[#failed + 1] = tostring(err) end
              time.sleep(0.01)  -- (the upstream's close reaches the pooled connection)
            end
            print(ok, table.concat(failed, ","))
            local res, err = http.request {{ url = "http://127.0.0.1:{port}/", method = "POST", body = "x" }}
            print(res and res.body, err)
            """,
            virtual_time=False,
        )
    assert code == 0, out
    assert out[0] == "20\t"  # every GET succeeds (10 of 20 failed with "closed" before)
    assert out[1] in ("POST ok\tnil", "nil\tclosed"), out  # (never sent twice: a POST is not idempotent)


def test_deadline_bounds_the_whole_request_timeout_each_read(lua_run) -> None:  # type: ignore[no-untyped-def]
    with upstream(Dripping) as port:
        code, out = lua_run(
            f"""
            local http = require "moonlet.http"
            local clock = require("moonlet.time").monotonic
            local t0 = clock()
            local res, err = http.get("http://127.0.0.1:{port}/", {{ timeout = 0.2, deadline = 0.4 }})
            print(res, err, string.format("%.2f", clock() - t0))
            print(pcall(http.get, "http://x/", {{ deadline = -1 }}))
            """,
            virtual_time=False,
        )
    assert code == 0, out
    res, err, took = out[0].split("\t")
    assert (res, err) == ("nil", "timeout") and 0.35 <= float(took) < 1.0, out  # (each read alone: 5 s)
    assert "bad argument #1 to 'request' ('deadline': number > 0 expected, got -1)" in out[1]
