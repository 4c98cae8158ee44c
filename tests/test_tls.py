"""TLS listeners (net.listen{tls=}, http.serve{tls=}) against real clients: Python's ssl, curl and
openssl s_client, with certificates made by openssl for the test (a CA, server certificates for SNI, a
client certificate)."""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

HTTP_READY_TLS = re.compile(rb"listening on (\S+):(\d+) \(http\) \(tls\)")

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl missing")

APP = """
local net, http = require "moonlet.net", require "moonlet.http"
local dir = %(dir)r
local tls = { cert = dir .. "/server.pem", key = dir .. "/server.key", handshake_timeout = 0.5,
  sni = { ["other.test"] = { cert = dir .. "/other.pem", key = dir .. "/other.key" },
          ["*.wild.test"] = { cert = dir .. "/other.pem", key = dir .. "/other.key" } } }
assert(net.listen { port = 0, tls = tls, handler = function(conn)
  while true do
    local line = conn:readline()
    if not line then return end
    local n = tonumber(line:match("^big (%%d+)$"))
    if n then conn:write(("x"):rep(n), "\\n") else conn:write("echo ", line, "\\n") end
  end
end })
assert(http.serve { port = 0, tls = tls, handler = function(req)
  return 200, nil, "hello " .. req.path .. "\\n"
end })
local mtls = { cert = dir .. "/server.pem", key = dir .. "/server.key", client_ca = dir .. "/ca.pem",
  min_version = "1.3" }
local m = assert(net.listen { port = 0, tls = mtls, handler = function(conn) conn:write("hi mtls\\n") end })
require("moonlet.log").info("mtls on " .. m.port)
local log = require "moonlet.log"
local function try(...) return select(2, ...) end
log.info("missing: " .. try(net.listen { port = 0, tls = { cert = dir .. "/missing.pem" }, handler = print }))
log.info("unknown: " .. try(pcall(net.listen, { port = 0, tls = { cert = "x", verfiy = 1 }, handler = try })))
log.info("version: " .. try(pcall(http.serve, { port = 0, tls = { cert = "x", min_version = "1.1" },
  handler = print })))
"""


def client(certs: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certs / "ca.pem"))


def connect(ctx: ssl.SSLContext, port: int, name: str = "localhost") -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        return ctx.wrap_socket(raw, server_hostname=name)
    except BaseException:
        raw.close()
        raise


def test_tls_echo_sni_alpn_big_reads_and_curl(lua_host, certs: Path) -> None:  # type: ignore[no-untyped-def]
    server = lua_host(APP % {"dir": str(certs)})
    http_port = int(server.wait_log(HTTP_READY_TLS).group(2))
    ctx = client(certs)
    with connect(ctx, server.port) as s:
        s.sendall(b"hi\n")
        assert s.recv(100) == b"echo hi\n"
        s.sendall(b"big 3000000\n")  # (through backpressure: far more than the high-water mark)
        got = b""
        while not got.endswith(b"\n"):
            got += s.recv(1 << 20)
        assert got == b"x" * 3_000_000 + b"\n"
        assert s.getpeercert()["subject"] == ((("commonName", "localhost"),),)
    for name in ("other.test", "a.wild.test"):  # SNI picks the certificate, a wildcard one label deep
        with connect(ctx, server.port, name) as s:
            assert s.getpeercert()["subject"] == ((("commonName", "other.test"),),)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with connect(ctx, http_port) as s:
        assert s.selected_alpn_protocol() == "http/1.1"
    out = subprocess.run(
        ["curl", "-s", "--cacert", str(certs / "ca.pem"), f"https://localhost:{http_port}/x"],
        capture_output=True, timeout=10, check=False,
    )  # fmt: skip
    assert out.stdout == b"hello /x\n", out
    probe = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{http_port}", "-servername", "localhost", "-alpn",
         "http/1.1", "-CAfile", str(certs / "ca.pem")],
        input=b"", capture_output=True, timeout=10, check=False,
    )  # fmt: skip
    assert b"ALPN protocol: http/1.1" in probe.stdout and b"Verify return code: 0 (ok)" in probe.stdout
    log = server.log_text()
    assert "tls handshake failed" not in log, log
    assert f"missing: tls: cannot load {certs}/missing.pem: no such file or directory" in log
    assert "unknown: bad argument #1 to 'listen' (unknown option 'verfiy'" in log
    assert "version: bad argument #1 to 'serve' ('tls.min_version': '1.2' or '1.3' expected" in log


def test_failed_handshakes_are_one_line_each_and_others_are_served(lua_host, certs: Path) -> None:  # type: ignore[no-untyped-def]
    server = lua_host(APP % {"dir": str(certs)})
    http_port = int(server.wait_log(HTTP_READY_TLS).group(2))
    stalled = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    stalled.sendall(b"\x16\x03\x01")  # (the start of a record, never finished)
    with socket.create_connection(("127.0.0.1", http_port), timeout=5) as plain:  # HTTP to an HTTPS port
        plain.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert plain.recv(100) == b""
    bad_ca = ssl.create_default_context()  # (the system's CAs: ours is not among them)
    with pytest.raises(ssl.SSLCertVerificationError):
        connect(bad_ca, server.port)
    start = time.monotonic()
    with connect(client(certs), server.port) as s:
        s.sendall(b"probe\n")
        assert s.recv(100) == b"echo probe\n"  # served while the stalled one waits out its timeout
    assert time.monotonic() - start < 0.4
    server.wait_log(b"no handshake within 0.5s")
    stalled.close()
    deadline = time.monotonic() + 5
    while True:
        lines = [line for line in server.log_text().splitlines() if "tls handshake failed" in line]
        if len(lines) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert len(lines) == 3, lines
    assert any(line.endswith(": http request") for line in lines), lines
    assert any("no handshake within 0.5s" in line for line in lines), lines


def test_client_certificates_and_the_protocol_floor(lua_host, certs: Path) -> None:  # type: ignore[no-untyped-def]
    server = lua_host(APP % {"dir": str(certs)})
    port = int(server.wait_log(re.compile(rb"mtls on (\d+)")).group(1))
    with_cert = client(certs)
    with_cert.load_cert_chain(str(certs / "client.pem"), str(certs / "client.key"))
    with connect(with_cert, port) as s:
        assert s.recv(100) == b"hi mtls\n" and s.version() == "TLSv1.3"
    with connect(client(certs), port) as s:  # (TLS 1.3: the refusal comes after the client's handshake ended)
        try:
            got = s.recv(100)
        except (ssl.SSLError, ConnectionResetError):
            got = b""
        assert got == b""  # never served
    server.wait_log(b"peer did not return a certificate")
    old = client(certs)
    old.load_cert_chain(str(certs / "client.pem"), str(certs / "client.key"))
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        connect(old, port)
    server.wait_log(b"tls handshake failed")
