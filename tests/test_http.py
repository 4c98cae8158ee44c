"""The HTTP server with real clients (curl, http.client, wrk), a conformance list, and fuzzing."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import run_script
from runtime.services.stream import Listener

HTTP_READY = re.compile(rb"listening on (\S+):(\d+) \(http\)")

APP = """
local http = require "moonlet.http"
local json = require "moonlet.json"
local r = http.router()
r:get("/hello", function(req) return 200, { ["content-type"] = "text/plain" }, "hello world\\n" end)
r:get("/users/:id", function(req)
  return 200, nil, "user " .. req.params.id .. " q=" .. (req.query.q or "")
end)
r:get("/headers", function(req) return 200, nil, req.headers["X-Test"] or "none" end)
r:get("/host", function(req) return 200, nil, "host=" .. tostring(req.headers.host) .. "\\n" end)
r:post("/host", function(req)
  assert(req:body())
  return 200, nil, "host=" .. tostring(req.headers.host) .. "\\n"
end)
r:post("/echo", function(req)
  local body, err = req:body()
  if not body then return 400, nil, err end
  return 200, nil, "got " .. #body .. ": " .. body:sub(1, 20)
end)
r:get("/stream", function(req, res)
  res:header("content-type", "text/plain")
  for i = 1, 3 do res:write("part " .. i .. "\\n") sleep(0.001) end
  res:finish()
end)
r:get("/boom", function() error("handler exploded") end)
r:get("/slow", function() sleep(0.2) return 200, nil, "slow" end)
r:get("/json", function()
  return 200, { ["content-type"] = "application/json" }, json.encode({ ok = true })
end)
assert(http.serve { host = "127.0.0.1", port = 0, handler = r, header_timeout = 0.5,
  body_timeout = 0.5, max_body = 1000, max_request_line = 200, max_header_bytes = 2000, max_headers = 20 })
"""


@pytest.fixture
def server(lua_host):  # type: ignore[no-untyped-def]
    return lua_host(APP, ready=HTTP_READY)


def raw(port: int, data: bytes, wait: float = 5) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes (or ``wait`` passes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except TimeoutError:
            pass
    return out


def test_curl_gets_hello_with_correct_headers(server) -> None:  # type: ignore[no-untyped-def]
    if shutil.which("curl") is None:
        pytest.skip("curl missing")
    out = subprocess.run(
        ["curl", "-si", f"http://127.0.0.1:{server.port}/hello"], capture_output=True, check=True, timeout=10
    ).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"content-length: 12" in head.lower() and b"date: " in head.lower()
    assert body == b"hello world\n"


def test_keepalive_head_router_query_headers_and_errors(server) -> None:  # type: ignore[no-untyped-def]
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    for _ in range(3):  # one connection, several requests
        conn.request("GET", "/hello")
        res = conn.getresponse()
        assert res.status == 200 and res.read() == b"hello world\n"
    conn.request("HEAD", "/hello")
    res = conn.getresponse()
    assert res.status == 200 and res.getheader("content-length") == "12" and res.read() == b""
    conn.request("GET", "/users/42?q=a%20b")
    assert conn.getresponse().read() == b"user 42 q=a b"
    conn.request("GET", "/headers", headers={"x-test": "Yes"})
    assert conn.getresponse().read() == b"Yes"
    conn.request("GET", "/nowhere")
    res = conn.getresponse()
    assert res.status == 404 and res.read() == b"404 Not Found\n"
    conn.request("DELETE", "/hello")
    res = conn.getresponse()
    assert res.status == 405
    res.read()
    conn.request("GET", "/boom")
    res = conn.getresponse()
    assert res.status == 500 and res.getheader("connection") == "close"
    res.read()
    server.wait_log(b"http handler error: ")
    assert "handler exploded" in server.log_text()
    conn.close()


def test_pipelined_requests_are_answered_in_order(server) -> None:  # type: ignore[no-untyped-def]
    reqs = b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /users/1 HTTP/1.1\r\nHost: x\r\n\r\n"
    reqs += b"GET /users/2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    out = raw(server.port, reqs)
    bodies = re.findall(rb"\r\n\r\n(slow|user \d q=)", out)
    assert bodies == [b"slow", b"user 1 q=", b"user 2 q="]


def test_a_trailer_never_reaches_the_headers_of_its_request(server) -> None:  # type: ignore[no-untyped-def]
    # (request smuggling: a chunked request's trailer fields used to be merged into its headers when it was
    # pipelined behind another request, whose answer it waited for)
    reqs = b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
    reqs += b"POST /host HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    reqs += b"5\r\nhello\r\n0\r\nHost: evil\r\n\r\n"
    reqs += b"GET /host HTTP/1.1\r\nHost: y\r\nConnection: close\r\n\r\n"
    out = raw(server.port, reqs)
    assert re.findall(rb"\r\n\r\n(slow|host=[^\n]*)", out) == [b"slow", b"host=x", b"host=y"]


def test_request_targets_and_header_values_as_rfc_9112_reads_them(server) -> None:  # type: ignore[no-untyped-def]
    def body(request: bytes) -> bytes:
        return raw(server.port, request).partition(b"\r\n\r\n")[2]

    # absolute-form: the scheme and authority are not part of the path
    assert body(
        b"GET http://example.com/users/7?q=1 HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n"
    ) == (b"user 7 q=1")
    # absolute-form: its authority is the host the handler sees, whatever Host says (RFC 9112 3.2.2)
    assert body(b"GET http://a.example:81/host HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n") == (
        b"host=a.example:81\n"
    )
    # a Host of an IPv6 literal, or of pct-encoded and sub-delim bytes, is a valid one
    assert body(b"GET /host HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\n\r\n") == (
        b"host=[::1]:8080\n"
    )
    # a fragment never reaches the path or the query
    assert body(b"GET /users/8?q=2#frag HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n") == b"user 8 q=2"
    # optional whitespace around a field value is not part of it
    assert body(b"GET /headers HTTP/1.1\r\nHost: x\r\nX-Test: \t v \t \r\nConnection: close\r\n\r\n") == b"v"
    # HTTP/1.0 with a transfer coding: answered, then closed whatever Connection says (RFC 9112 6.1)
    started = time.monotonic()
    out = raw(
        server.port,
        b"POST /echo HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n",
    )
    assert out.endswith(b"got 5: hello") and b"connection: close" in out.lower()
    assert time.monotonic() - started < 2  # closed by the server, not by raw()'s wait
    # OPTIONS * is a valid request (the router has no route for it)
    assert raw(server.port, b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").startswith(
        b"HTTP/1.1 40"
    )


def test_what_rfc_9112_allows_is_served(server) -> None:  # type: ignore[no-untyped-def]
    def answer(request: bytes) -> bytes:
        return raw(server.port, request).partition(b"\r\n\r\n")[2]

    # chunk extensions, with whitespace, are accepted and ignored
    assert answer(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"5 ; a ; b=c\r\nhello\r\n0;last\r\n\r\n"
    ) == (b"got 5: hello")
    # a Content-Length list of one value repeated is that value (RFC 9110 8.6)
    assert answer(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\nConnection: close\r\n\r\nhello"
    ) == (b"got 5: hello")
    # upgrades are not handled: the request is served as it is, body included
    assert answer(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade, close\r\n"
        b"Content-Length: 5\r\n\r\nhello"
    ) == (b"got 5: hello")
    # an empty line before the request line is skipped; bare LF line ends are read (RFC 9112 2.2)
    assert answer(b"\r\nGET /users/3 HTTP/1.1\nHost: x\nConnection: close\n\n") == b"user 3 q="


def test_the_last_response_of_a_keepalive_connection_says_it_closes(lua_host) -> None:  # type: ignore[no-untyped-def]
    server = lua_host(
        """
        local http = require "moonlet.http"
        assert(http.serve { host = "127.0.0.1", port = 0, max_requests = 3,
          handler = function() return 200, nil, "hello world\\n" end })
        """,
        ready=HTTP_READY,
    )
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        said = []
        for _ in range(3):  # max_requests = 3
            conn.request("GET", "/hello")
            response = conn.getresponse()
            assert response.read() == b"hello world\n"
            said.append(response.getheader("connection"))
        assert said[-1] == "close" and said[:-1] == [None, None]
        conn.request("GET", "/hello")  # http.client opens a new connection: it was told the old one closes
        assert conn.getresponse().status == 200
    finally:
        conn.close()


def test_a_peer_has_one_shape_for_requests_connections_and_datagrams(lua_host) -> None:  # type: ignore[no-untyped-def]
    server = lua_host(
        """
        local http, net = require "moonlet.http", require "moonlet.net"
        assert(http.serve { host = "127.0.0.1", port = 0, handler = function(req)
          local h, p = req:peer()
          local joined = "from " .. req.peer  -- (the 0.1 string form: still works, one warning)
          return 200, nil, table.concat({ h, tostring(p), req.peer.host, tostring(req.peer.port),
            tostring(req.peer), joined, tostring(h == req.peer.host and p == req.peer.port) }, "|")
        end })
        local udp = assert(net.udp { host = "127.0.0.1", port = 0, handler = function(data, peer, sock)
          local h, p = peer()
          local same = h == peer.host and p == peer.port
          sock:sendto(data .. "|" .. tostring(peer) .. "|" .. tostring(same), h, p)
        end })
        require("moonlet.log").info("datagrams to port " .. udp.port)
        """,
        ready=HTTP_READY,
    )
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            here = "{}:{}".format(*s.getsockname())
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
            body = reply.split(b"\r\n\r\n", 1)[1].decode()
        host, port = here.split(":")
        assert body == f"{host}|{port}|{host}|{port}|{here}|from {here}|true"
    assert server.log_text().count("a peer joined with .. as if it were a string is deprecated") == 1
    udp_port = int(server.wait_log(re.compile(rb"datagrams to port (\d+)")).group(1))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.settimeout(5)
        u.bind(("127.0.0.1", 0))
        u.sendto(b"ping", ("127.0.0.1", udp_port))
        assert u.recv(100) == "ping|{}:{}|true".format(*u.getsockname()).encode()


CONVENIENCES = r"""
local http, json = require "moonlet.http", require "moonlet.json"
assert(http.serve { host = "127.0.0.1", port = 0, handler = function(req, res)
  if req.path == "/cookies" then
    res:header("set-cookie", { http.setcookie("a", "1"),
      http.setcookie("sid", "x.y-z", { path = "/", max_age = 60, http_only = true, secure = true,
        same_site = "lax", expires = 0 }) })
    res:header("x-n", 7)
    res:header("x-nan", 0 / 0)
    return 200, nil, json.encode { cookies = req.cookies, tags = req:queryall("tag"), tag = req.query.tag,
      none = req:queryall("none") }
  elseif req.path == "/misuse" then
    local out = {}
    for _, f in ipairs {
      function() res:header("x", "a\r\nInjected: 1") end,
      function() res:header("bad name", "v") end,
      function() res:header("x", true) end,
      function() res:header("x", { "ok", {} }) end,
      function() http.setcookie("a", "has space") end,
      function() http.setcookie("a", "b", { same_site = "None" }) end,
      function() http.setcookie("a", "b", { pth = "/" }) end,
    } do
      local _, err = pcall(f)
      out[#out + 1] = err
    end
    return 200, nil, table.concat(out, "\n")
  end
  return 200, { ["x-bad"] = "a\nb" }, "never sent"
end })
"""


def test_several_values_cookies_repeated_query_keys_and_refused_headers(lua_host) -> None:  # type: ignore[no-untyped-def]
    server = lua_host(CONVENIENCES, ready=HTTP_READY)

    def get(target: str, *headers: str) -> tuple[list[str], bytes]:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            lines = "".join(h + "\r\n" for h in headers)
            s.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n{lines}Connection: close\r\n\r\n".encode())
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        return head.decode().split("\r\n"), body

    head, body = get("/cookies?tag=a&x=1&tag=b%20c&tag", 'Cookie: a=1; b="q"', "Cookie: a=2;c= 3 ")
    assert head[0] == "HTTP/1.1 200 OK"
    cookies = [line for line in head if line.startswith("set-cookie: ")]
    assert cookies == [
        "set-cookie: a=1",
        "set-cookie: sid=x.y-z; Path=/; Max-Age=60; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Secure; HttpOnly; "
        "SameSite=Lax",
    ]
    assert "x-n: 7" in head and any(line in ("x-nan: nan", "x-nan: -nan") for line in head)
    got = json.loads(body)
    assert got == {"cookies": {"a": "1", "b": "q", "c": "3"}, "tags": ["a", "b c", ""], "tag": "", "none": []}
    _, body = get("/misuse")
    assert [line.split(": ", 1)[1] for line in body.decode().splitlines()] == [
        "bad argument #2 to 'header' (header value without CR, LF or NUL expected, got string)",
        "bad argument #1 to 'header' (header name expected, got string)",
        "bad argument #2 to 'header' (string, number or list of them expected, got boolean)",
        "bad argument #2 to 'header' (string, number or list of them expected, got table)",
        "bad argument #2 to 'setcookie' (cookie value (no space, quote, comma, ; or \\) expected, got "
        "string)",
        "bad argument #3 to 'setcookie' ('same_site': secure = true with it (browsers refuse SameSite=None "
        "without) expected, got string)",
        "bad argument #3 to 'setcookie' (unknown option 'pth'; the options are domain, expires, http_only, "
        "max_age, path, same_site, secure)",
    ]
    head, body = get("/returned")
    assert head[0] == "HTTP/1.1 500 Internal Server Error" and body == b"500 Internal Server Error\n"
    assert not any(line.startswith("x-bad") for line in head)
    server.wait_log(
        b'the handler returned a bad header ("x-bad": header value without CR, LF or NUL expected)'
    )


def test_chunked_request_and_response_and_100_continue(server) -> None:  # type: ignore[no-untyped-def]
    chunked = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    chunked += b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    assert raw(server.port, chunked).endswith(b"got 11: hello world")
    out = raw(server.port, b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert b"transfer-encoding: chunked" in out.lower()
    assert out.endswith(b"7\r\npart 1\n\r\n7\r\npart 2\n\r\n7\r\npart 3\n\r\n0\r\n\r\n")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"data")
        assert s.recv(1000).endswith(b"got 4: data")


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"NONSENSE\r\n\r\n", 400),
        (b"GET /" + b"a" * 300 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET /hello HTTP/1.1\r\n" + b"X-Big: " + b"b" * 3000 + b"\r\n\r\n", 431),
        (b"GET /hello HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(30)) + b"\r\n", 431),
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n", 413),
        (
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"800\r\n"
            + b"z" * 2048,
            413,
        ),
        (b"GET /hello HTTP/1.1\r\nHost: x\r\n", 408),  # slowloris: the headers never end
        (b"GET /hello HTTP/1.1\r\nConnection: close\r\n\r\n", 400),  # HTTP/1.1 without Host (RFC 9112 3.2)
        (b"GET /hello HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),  # two Host lines
        (b"GET /hello HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET /hello HTTP/1.1\r\nHost: a b\r\n\r\n", 400),  # not uri-host [":" port] (RFC 9112 3.2)
        (b"GET /hello HTTP/1.1\r\nHost: a/b?c\r\n\r\n", 400),
        (b"GET /hello HTTP/1.1\r\nHost: x:80x\r\n\r\n", 400),
        (b"GET http://u@x/hello HTTP/1.1\r\nHost: x\r\n\r\n", 400),  # userinfo in the target
        (b"GET hello HTTP/1.1\r\nHost: x\r\n\r\n", 400),  # not a request target
        (b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400),  # asterisk-form is for OPTIONS only
        (b"GET ftp://x/hello HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n", 501),  # a method nobody here implements
        (b"CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n", 501),  # no tunnels
        (b"GET /hello HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"GET /hel\x7flo HTTP/1.1\r\nHost: x\r\n\r\n", 400),  # a target of visible ASCII only
        (b"GET /hello HTTP/1.1\r\nHost: x\r\nX-A : b\r\n\r\n", 400),  # whitespace before the colon
        (b"GET /hello HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c\r\n\r\n", 400),  # obs-fold
        (b"GET /hello HTTP/1.1\r\nHost: x\r\nX-A: b\x01c\r\n\r\n", 400),  # a control byte in a value
        (b"GET /hello HTTP/1.1\r\nHost: x\r\nX-A: b\rc\r\n\r\n", 400),  # a bare CR
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 4\r\n\r\nabc", 400),
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -3\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    ],
)
def test_each_violation_gets_its_status_and_a_log_line(server, request_bytes: bytes, status: int) -> None:  # type: ignore[no-untyped-def]
    out = raw(server.port, request_bytes)
    assert out.startswith(b"HTTP/1.1 %d " % status), out[:80]
    server.wait_log(b"http %d on " % status)
    assert raw(server.port, b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").endswith(
        b"hello world\n"
    )


def test_a_body_arriving_too_slowly_times_out(server) -> None:  # type: ignore[no-untyped-def]
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        out = s.recv(1000)
    assert out.startswith(b"HTTP/1.1 400") and out.endswith(b"timeout")


def test_every_split_of_a_valid_request_is_understood(server) -> None:  # type: ignore[no-untyped-def]
    request = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
    for cut in range(1, len(request)):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.sendall(request[:cut])
            time.sleep(0.001)
            s.sendall(request[cut:])
            out = b""
            while chunk := s.recv(4096):
                out += chunk
        assert out.endswith(b"got 5: hello"), (cut, out)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.binary(min_size=1, max_size=300))
def test_random_bytes_never_crash_the_server(server, junk: bytes) -> None:  # type: ignore[no-untyped-def]
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(junk + b"\r\n\r\n")
        s.shutdown(socket.SHUT_WR)  # (it answers what it can and closes: no waiting out a timeout)
        with contextlib.suppress(ConnectionResetError):
            while s.recv(65536):
                pass
    assert server.running()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert s.recv(1000).endswith(b"hello world\n")


def test_wrk_sees_only_successful_responses(server) -> None:  # type: ignore[no-untyped-def]
    if shutil.which("wrk") is None:
        pytest.skip("wrk missing (tests/run.sh installs it)")
    out = subprocess.run(
        ["wrk", "-t1", "-c10", "-d1s", f"http://127.0.0.1:{server.port}/hello"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    assert "Non-2xx" not in out
    assert "Socket errors" not in out  # (every 1,000th response says Connection: close before the close)
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    assert requests > 100


def test_json_api_crud(run_app, tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = run_app(
        "apps/json_api.lua", "--port", "0", options=["--db", str(tmp_path / "notes.db")], ready=HTTP_READY
    )
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)

    def call(method: str, path: str, body: object = None) -> tuple[int, object]:
        conn.request(method, path, body=None if body is None else json.dumps(body))
        res = conn.getresponse()
        data = res.read()
        return res.status, json.loads(data) if data else None

    assert call("POST", "/notes", {"title": "milk"}) == (201, {"id": 1, "title": "milk", "done": False})
    assert call("PUT", "/notes/1", {"done": True}) == (200, {"id": 1, "title": "milk", "done": True})
    assert call("GET", "/notes") == (200, [{"id": 1, "title": "milk", "done": True}])
    assert call("POST", "/notes", {"title": ""})[0] == 422
    conn.request("POST", "/notes", body="not json")
    res = conn.getresponse()
    assert res.status == 400 and b"json:" in res.read()
    assert call("DELETE", "/notes/1") == (204, None)
    assert call("GET", "/notes/1")[0] == 404
    conn.close()


def test_a_script_that_closes_its_http_server_ends(tmp_path) -> None:  # type: ignore[no-untyped-def]
    done = run_script(
        tmp_path,
        """
        local http = require "moonlet.http"
        local server = assert(http.serve { port = 0, handler = function() return 200, nil, "hi" end })
        for _ = 1, 3 do
          local res = assert(http.get("http://127.0.0.1:" .. server.port .. "/"))
          print(res.status, res.body)
        end
        server:close()  -- nothing is left to serve: the script ends
        """,
        timeout=20,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert done.stdout.decode().splitlines() == ["200\thi"] * 3
    assert b"stopped listening on" in done.stderr


def test_tasks_started_by_a_request_end_with_it_unless_detached(lua_host) -> None:  # type: ignore[no-untyped-def]
    server = lua_host(
        """
        local http, log, task = require "moonlet.http", require "moonlet.log", require "moonlet.task"
        assert(http.serve { host = "127.0.0.1", port = 0, handler = function(req)
          local scoped = task.spawn(function() sleep(0.3) log.info("scoped outlived " .. req.path) end)
          local detached = task.spawn(function() sleep(0.3) log.info("detached done for " .. req.path) end)
          detached:detach()
          return 200, nil, scoped:status()
        end })
        """,
        ready=HTTP_READY,
    )
    out = raw(
        server.port,
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert out.count(b"HTTP/1.1 200") == 2
    server.wait_log(b"detached done for /b", timeout=5)
    server.wait_log(b"detached done for /a", timeout=5)
    assert b"outlived" not in b"".join(server.log_lines)


def test_res_write_waits_for_a_peer_that_does_not_read(lua_host) -> None:  # type: ignore[no-untyped-def]
    server = lua_host(
        """
        local http, log = require "moonlet.http", require "moonlet.log"
        local piece = ("x"):rep(64 * 1024)
        assert(http.serve { host = "127.0.0.1", port = 0, send_timeout = 0.5, handler = function(req, res)
          local sent = 0
          for _ = 1, 3000 do  -- 196 MB offered to a client that reads nothing
            local ok, err = res:write(piece)
            if not ok then log.info("write stopped after " .. sent .. " bytes: " .. err) return end
            sent = sent + #piece
          end
          log.info("all written")
        end })
        """,
        ready=HTTP_READY,
    )
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        match = server.wait_log(re.compile(rb"write stopped after (\d+) bytes: timeout"), timeout=10)
    assert int(match.group(1)) < 16 << 20  # the kernel's socket buffers and the high-water mark, not 196 MB
    server.wait_log(b"the peer took no data for 0.5s")
    assert b"all written" not in b"".join(server.log_lines)


ACCESS_APP = r"""
local http = require "moonlet.http"
local log = { path = %(path)r, format = %(format)r }
assert(http.serve { port = 0, access_log = log, handler = function(req, res)
  if req.path == "/stream" then
    res:write("abc") res:write("de") return
  elseif req.path == "/boom" then
    error("boom")
  end
  return 201, nil, "hello\n"
end })
"""


DATE = r"\[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\]"


def _get(port: int, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(raw)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def test_the_access_log_says_each_request_and_reopens_on_sigusr1(run_app, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "access.log"
    app = tmp_path / "app.lua"
    app.write_text(ACCESS_APP % {"path": str(path), "format": "combined"})
    server = run_app(app, ready=HTTP_READY)
    _get(server.port, b'GET /a?x=1 HTTP/1.1\r\nHost: x\r\nUser-Agent: t "q"\r\nReferer: http://r/\r\n'
         b"Connection: close\r\n\r\n")  # fmt: skip
    _get(server.port, b"GET /stream HTTP/1.0\r\n\r\n")
    _get(server.port, b"GET /boom HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    pipelined = b"".join(b"GET /p%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in (1, 2))
    _get(server.port, pipelined + b"GET /p3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    _get(server.port, b"GET /p4 HTTP/1.1\r\nHost: x\r\n\r\nNOT HTTP\r\n\r\n")  # (answered, then refused)
    deadline = time.monotonic() + 5
    while len(path.read_text().splitlines()) < 7 and time.monotonic() < deadline:
        time.sleep(0.02)
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines[3:], 1):  # (one line each, the peer in front of each)
        assert re.fullmatch(rf'127\.0\.0\.1 - - {DATE} "GET /p{i} HTTP/1\.1" 201 6 "-" "-"', line), lines
    date = DATE
    ua = r'"t \\x22q\\x22"'  # (quotes in a header escaped as nginx does)
    assert re.fullmatch(rf'127\.0\.0\.1 - - {date} "GET /a\?x=1 HTTP/1\.1" 201 6 "http://r/" {ua}', lines[0])
    assert re.fullmatch(rf'127\.0\.0\.1 - - {date} "GET /stream HTTP/1\.0" 200 5 "-" "-"', lines[1]), lines
    assert re.fullmatch(rf'127\.0\.0\.1 - - {date} "GET /boom HTTP/1\.1" 500 26 "-" "-"', lines[2]), lines
    path.rename(tmp_path / "access.log.1")  # logrotate moves it, then signals the supervisor
    os.kill(server.proc.pid, signal.SIGUSR1)
    time.sleep(0.3)
    _get(server.port, b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    deadline = time.monotonic() + 5
    while not (path.exists() and path.read_text()) and time.monotonic() < deadline:  # (a moment later)
        time.sleep(0.02)
    assert '"GET /after HTTP/1.1" 201 6' in path.read_text()
    assert len((tmp_path / "access.log.1").read_text().splitlines()) == 7


def test_the_json_access_log_has_every_field(lua_host, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "access.json"
    server = lua_host(ACCESS_APP % {"path": str(path), "format": "json"}, ready=HTTP_READY)
    _get(server.port, b"POST /a HTTP/1.1\r\nHost: x\r\nX-Request-Id: abc-1\r\nContent-Length: 0\r\n"
         b"Connection: close\r\n\r\n")  # fmt: skip
    _get(server.port, b"GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    deadline = time.monotonic() + 5
    while (not path.exists() or len(path.read_text().splitlines()) < 2) and time.monotonic() < deadline:
        time.sleep(0.02)
    first, second = (json.loads(line) for line in path.read_text().splitlines())
    fields = ("peer", "method", "target", "protocol", "status", "bytes", "request_id")
    assert {k: first[k] for k in fields} == {
        "peer": "127.0.0.1", "method": "POST", "target": "/a", "protocol": "HTTP/1.1", "status": 201,
        "bytes": 6, "request_id": "abc-1",
    }  # fmt: skip
    assert 0 <= first["duration_ms"] < 1000 and re.fullmatch(
        r"\d\d/\w{3}/\d{4}:[\d:]{8} \+0000", first["time"]
    )
    assert re.fullmatch(r"\d+-\d+", second["request_id"]) and "user_agent" not in second  # (none sent)


METRICS_APP = """
local http, metrics = require "moonlet.http", require "moonlet.metrics"
local workers = require "moonlet.workers"
local requests = metrics.counter("app_requests_total", "Requests served", { "path" })
local latency = metrics.histogram("app_seconds", "Time to answer", { "path" }, { 0.001, 1 })
local by_worker = metrics.gauge("app_worker_up", "1 for each worker serving")
by_worker:set(1)
local api = http.router()
api:get("/metrics", metrics.handler)
api:get("/hello", function()
  requests:inc(1, "/hello")
  latency:observe(0.5, "/hello")
  return 200, nil, "hello from " .. workers.id() .. "\\n"
end)
assert(http.serve { port = 0, handler = api })
"""


def test_metrics_from_two_workers_parse_as_prometheus_and_add_up(lua_server) -> None:  # type: ignore[no-untyped-def]
    from prometheus_client.parser import text_string_to_metric_families

    server = lua_server(METRICS_APP, options=["--workers", "2"], ready=HTTP_READY)
    deadline = time.monotonic() + 20
    served_by: set[bytes] = set()
    sent = 0
    while len(served_by) < 2 or sent < 60:  # (until both workers have answered some: the kernel spreads them)
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := s.recv(4096):
                reply += chunk
        served_by.add(reply.rsplit(b"hello from ", 1)[1].strip())
        sent += 1
        assert time.monotonic() < deadline, served_by
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:  # one refused: a bad request
        s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400 ")

    def scrape() -> tuple[bytes, dict[str, Any]]:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), (reply, server.log_text()[-3000:])
        return head, {f.name: f for f in text_string_to_metric_families(body.decode())}

    # Each worker writes what it counted once a second (and the one that answers, at once): a scrape sees
    # every request within a second or so (the scrapes before it are requests too)
    scrapes = 0
    while True:
        head, families = scrape()
        scrapes += 1
        counted = (
            {s.labels["path"]: s.value for s in families["app_requests"].samples}
            if "app_requests" in families
            else {}
        )  # (the parser drops _total)
        answered = families["moonlet_http_requests"].samples if "moonlet_http_requests" in families else []
        if counted == {"/hello": sent} and sum(s.value for s in answered) == sent + scrapes - 1:
            break
        assert time.monotonic() < deadline + 10, (counted, answered, sent, scrapes)
        time.sleep(0.2)
    assert b"content-type: text/plain; version=0.0.4" in head
    hist = {(s.name, s.labels.get("le")): s.value for s in families["app_seconds"].samples}
    assert hist[("app_seconds_bucket", "0.001")] == 0 and hist[("app_seconds_bucket", "1")] == sent
    assert hist[("app_seconds_bucket", "+Inf")] == sent == hist[("app_seconds_count", None)]
    assert hist[("app_seconds_sum", None)] == 0.5 * sent
    up = {s.labels["worker"] for s in families["app_worker_up"].samples}
    assert up == {"1", "2"} and served_by == {b"1", b"2"}
    # the runtime's own, per worker: requests answered by listener and status, the one refused, the gauges
    # \stats shows, the process' figures
    assert {(s.labels["worker"], s.labels["status"]) for s in answered} == {("1", "200"), ("2", "200")}
    assert {s.labels["listener"] for s in answered} == {f"127.0.0.1:{server.port}"}
    refused = families["moonlet_http_refused"].samples
    assert [(s.labels["status"], s.value) for s in refused] == [("400", 1)]
    for name in ("moonlet_lua_memory_bytes", "moonlet_connections", "process_resident_memory_bytes"):
        assert {s.labels["worker"] for s in families[name].samples} == {"1", "2"}, name
    assert families["moonlet_loop_lag_seconds"].type == "histogram"
    accepted = sum(s.value for s in families["moonlet_connections_accepted"].samples)
    assert accepted >= sent + scrapes  # (each request and scrape on a connection of its own, the 400's too)


def test_a_connection_a_new_worker_answered_at_once_is_forgotten_once_gone(lua_host) -> None:  # type: ignore[no-untyped-def]
    server = lua_host(APP, ready=HTTP_READY)
    handles = server.host.kernel.handles
    deadline = time.monotonic() + 5  # ("listening on" is logged just before the listener gets its number)
    while not any(isinstance(handles.get(n), Listener) for n in range(1, 10)):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    baseline = len(handles)
    # the first connection: no worker waits yet, and a new one answers it and gives it back before it is
    # even started (its task was then recorded as the connection's: kept for good); the second: a waiting
    # worker takes it
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.sendall(b"GET /host HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(1000).startswith(b"HTTP/1.1 200 ")
            assert len(handles) == baseline + 1  # (the connection, while it is open)
        deadline = time.monotonic() + 5
        while len(handles) > baseline:  # its number retired once it is lost: nothing kept per connection
            assert time.monotonic() < deadline, len(handles)
            time.sleep(0.01)


def test_request_workers_left_waiting_are_capped_and_end_after_their_wait(lua_host) -> None:  # type: ignore[no-untyped-def]
    from runtime.services.httpserver import IDLE_WORKER_TTL, MAX_IDLE_WORKERS

    server = lua_host(
        """
        local http = require "moonlet.http"
        assert(http.serve { host = "127.0.0.1", port = 0, handler = function(req)
          if req.path == "/slow" then sleep(0.3) end
          return 200, nil, "ok"
        end })
        """,
        ready=HTTP_READY,
    )
    assert server.host.services is not None
    workers = next(iter(server.host.services.stream.listeners)).workers
    socks = [
        socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(MAX_IDLE_WORKERS + 16)
    ]

    def ask(s: socket.socket, path: str) -> None:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        answer = b""
        while not answer.endswith(b"\r\n\r\nok"):
            chunk = s.recv(4096)
            assert chunk, answer
            answer += chunk

    for s in socks:  # (all at once: each slow request has a worker of its own)
        s.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    for s in socks:
        assert s.recv(4096).endswith(b"\r\n\r\nok")
    assert len(workers.idle) == MAX_IDLE_WORKERS  # (the others ended as they went idle)
    for s in socks[:8]:  # answered at once by a waiting worker, which then waits again
        ask(s, "/fast")
    assert len(workers.idle) == MAX_IDLE_WORKERS
    deadline = time.monotonic() + IDLE_WORKER_TTL + 8
    while workers.idle:  # a worker that waited IDLE_WORKER_TTL for a connection ends
        assert time.monotonic() < deadline, len(workers.idle)
        time.sleep(0.1)
    ask(socks[-1], "/fast")  # (and a new one serves the next request)
    for s in socks:
        s.close()
