"""Property-based tests of the read calls and of the RESP parsing: random bytes, random split points,
byte-at-a-time delivery. The server must reconstruct every frame exactly or refuse it cleanly, never crash."""

from __future__ import annotations

import errno
import socket
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FRAMES = """
local net = require "moonlet.net"
-- frames: "<n>\\n" then n bytes, then a line, then bytes up to "--end--"; echoed back as one reply
net.listen { host = "127.0.0.1", port = 0, handler = function(conn)
  while true do
    local header, err = conn:readline()
    if not header then return end
    local n = math.tointeger(tonumber(header))
    if not n then conn:write("bad header\\n") return end
    local body = assert(conn:readn(n))
    local line = assert(conn:readline())
    local tail = assert(conn:readuntil("--end--"))
    conn:write(#body, ":", body, "|", line, "|", tail, "\\n")
  end
end }
"""

SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
no_newline = st.binary(max_size=200).map(lambda b: b.replace(b"\n", b"").replace(b"--end--", b""))


def send_in_pieces(sock: socket.socket, data: bytes, cuts: list[int]) -> None:
    points = sorted({c % (len(data) + 1) for c in cuts})
    last = 0
    for p in [*points, len(data)]:
        if p > last:
            sock.sendall(data[last:p])
            time.sleep(0.0005)
            last = p


@SETTINGS
@given(body=st.binary(max_size=500), line=no_newline, tail=no_newline, cuts=st.lists(st.integers(0, 2000)))
def test_frames_survive_any_split(
    lua_server_once, body: bytes, line: bytes, tail: bytes, cuts: list[int]
) -> None:  # type: ignore[no-untyped-def]
    server = lua_server_once(FRAMES)
    frame = b"%d\n%s%s\r\n%s--end--" % (len(body), body, line, tail)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        send_in_pieces(s, frame, cuts)
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    assert reply == b"%d:%s|%s|%s\n" % (len(body), body, line, tail)


@SETTINGS
@given(junk=st.binary(min_size=1, max_size=400), cuts=st.lists(st.integers(0, 500), max_size=20))
def test_random_bytes_to_the_resp_parser_never_crash_kv(run_app_once, junk: bytes, cuts: list[int]) -> None:  # type: ignore[no-untyped-def]
    server = run_app_once("apps/kv.lua", "--port", "0")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        try:
            send_in_pieces(s, junk, cuts)
            s.shutdown(socket.SHUT_WR)  # (kv answers what it can, then sees the end and closes)
            while s.recv(65536):
                pass
        except OSError as e:  # it refused the junk and closed, maybe before all of it was sent
            if e.errno not in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN):
                raise
    assert server.proc.poll() is None
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"*1\r\n$4\r\nPING\r\n")
        assert s.recv(100) == b"+PONG\r\n"
