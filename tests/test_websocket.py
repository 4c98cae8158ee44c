"""WebSockets (RFC 6455): moonlet's server against the `websockets` library as an independent client, its
client against a `websockets` server, and each protocol error sent as raw bytes with the close code the
RFC asks for."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator

import pytest
import websockets
import websockets.sync.server

from conftest import InProcess

HTTP_READY = re.compile(rb"listening on (\S+):(\d+) \(http\)")

ECHO = """
local http = require "moonlet.http"
assert(http.serve { port = 0, handler = function(req)
  local ws, why, status = req:websocket { protocols = { "chat", "v2" }, max_message = 100000 }
  if not ws then return status, nil, why .. "\\n" end
  while true do
    local data, kind, code = ws:receive()
    if not data then
      require("moonlet.log").info("receive ended: " .. tostring(kind) .. " " .. tostring(code))
      return
    end
    if kind == "text" then ws:send("text " .. data)
    elseif kind == "binary" then ws:send(data, "binary")
    elseif kind == "close" then
      require("moonlet.log").info("peer closed " .. code .. " " .. data)
      return
    elseif kind == "ping" then ws:send("saw a ping " .. data) end
    if data == "bye" then ws:close(4000, "done") return end
  end
end })
"""


def test_the_websockets_library_talks_to_the_server(lua_host) -> None:  # type: ignore[no-untyped-def]
    server = lua_host(ECHO, ready=HTTP_READY)
    url = f"ws://127.0.0.1:{server.port}/echo"

    async def talk() -> list[object]:
        got: list[object] = []
        async with websockets.connect(url, subprotocols=["v2", "chat"], max_size=None) as ws:
            got.append(ws.subprotocol)  # (the server's preference wins)
            await ws.send("héllo")
            got.append(await ws.recv())
            await ws.send(bytes(range(256)) * 300)  # 76,800 bytes: a 64-bit length, masked by the client
            got.append(await ws.recv() == bytes(range(256)) * 300)
            await ws.send(["frag", "ment", "ed ✓"])  # one text message in three frames
            got.append(await ws.recv())
            pong = await ws.ping(b"p1")
            await asyncio.wait_for(pong, 5)
            got.append(await ws.recv())
            await ws.send("bye")
            got.append(await ws.recv())
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            got.append((ws.close_code, ws.close_reason))
        async with websockets.connect(url) as ws:
            await ws.close(3001, "leaving")
        return got

    assert asyncio.run(talk()) == [
        "chat", "text héllo", True, "text fragmented ✓", "saw a ping p1", "text bye", (4000, "done"),
    ]  # fmt: skip
    server.wait_log(b"peer closed 3001 leaving")
    answer = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    answer.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")  # not an upgrade
    assert answer.recv(200).startswith(b"HTTP/1.1 426 Upgrade Required\r\n")
    answer.close()


KEY = base64.b64encode(os.urandom(16))


def handshake(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + KEY + b"\r\n\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    accept = base64.b64encode(hashlib.sha1(KEY + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    assert head.startswith(b"HTTP/1.1 101 ") and b"Sec-WebSocket-Accept: " + accept + b"\r\n" in head, head
    return s


def raw_frame(opcode: int, payload: bytes, fin: bool = True, mask: bool = True, rsv: int = 0) -> bytes:
    first = (0x80 if fin else 0) | rsv | opcode
    n = len(payload)
    length = (
        bytes([n])
        if n < 126
        else bytes([126]) + struct.pack(">H", n)
        if n < 65536
        else bytes([127]) + struct.pack(">Q", n)
    )
    if not mask:
        return bytes([first]) + length + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes([first, length[0] | 0x80]) + length[1:] + key + masked


def close_code(s: socket.socket) -> int:
    """The code of the close frame the server sends, reading past any other frames."""
    data = b""
    while True:
        chunk = s.recv(65536)
        assert chunk, f"closed without a close frame: {data!r}"
        data += chunk
        while len(data) >= 2:
            n = data[1] & 0x7F
            if len(data) < 2 + n:
                break
            if data[0] & 0x0F == 8:
                return int(struct.unpack(">H", data[2:4])[0])
            data = data[2 + n :]


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([raw_frame(1, b"unmasked", mask=False)], 1002),
        ([raw_frame(1, b"x", rsv=0x40)], 1002),  # a reserved bit (no extension agreed)
        ([raw_frame(3, b"x")], 1002),  # an unknown opcode
        ([raw_frame(1, b"\xff\xfe")], 1007),  # text that is not UTF-8
        ([raw_frame(1, b"a", fin=False), raw_frame(0, b"\xed\xa0\x80")], 1007),  # a surrogate, fragmented
        # fail fast: the first fragment is already not text, and the message never ends (it would wait)
        ([raw_frame(1, b"ok \xff", fin=False)], 1007),
        (
            [raw_frame(1, b"\xe2\x9c", fin=False), raw_frame(0, b"A", fin=False)],
            1007,
        ),  # a character cut short
        ([raw_frame(2, b"x" * 100001)], 1009),  # over max_message
        ([raw_frame(2, b"x" * 60000, fin=False), raw_frame(0, b"x" * 50000)], 1009),  # ... in fragments
        ([raw_frame(9, b"x" * 126)], 1002),  # a control frame over 125 bytes
        ([raw_frame(9, b"x", fin=False)], 1002),  # a fragmented control frame
        ([raw_frame(0, b"x")], 1002),  # a continuation of nothing
        ([raw_frame(1, b"a", fin=False), raw_frame(1, b"b")], 1002),  # a new message inside one
        ([raw_frame(8, struct.pack(">H", 1005))], 1002),  # a close code a peer may not send
        ([raw_frame(8, b"x")], 1002),  # a close payload of one byte
        ([raw_frame(8, struct.pack(">H", 1000) + b"\xff")], 1007),  # a close reason that is not UTF-8
    ],
)
def test_each_protocol_error_gets_its_close_code(lua_host, frames: list[bytes], code: int) -> None:  # type: ignore[no-untyped-def]
    server = lua_host(ECHO, ready=HTTP_READY)
    with handshake(server.port) as s:
        s.sendall(raw_frame(9, b"ok?") + b"".join(frames))  # (a ping first: it is answered, then the error)
        assert close_code(s) == code
    server.wait_log(b"receive ended: ")


def test_a_control_frame_between_fragments_and_a_clean_close(lua_host) -> None:  # type: ignore[no-untyped-def]
    server = lua_host(ECHO, ready=HTTP_READY)
    with handshake(server.port) as s:  # (a character split over two fragments is fine: ✓ is e2 9c 93)
        s.sendall(raw_frame(1, b"ab\xe2\x9c", fin=False) + raw_frame(9, b"!") + raw_frame(0, b"\x93cd"))
        s.sendall(raw_frame(8, struct.pack(">H", 1000) + b"fine"))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    # the pong, the ping's message, the echo of the reassembled "ab✓cd", then the close echoed (1000)
    assert data == (
        bytes([0x8A, 1]) + b"!" + bytes([0x81, 12]) + b"saw a ping !"
        + bytes([0x81, 12]) + b"text ab\xe2\x9c\x93cd" + bytes([0x88, 2]) + struct.pack(">H", 1000)
    )  # fmt: skip
    server.wait_log(b"peer closed 1000 fine")


@pytest.fixture
def ws_server() -> Iterator[int]:
    """A `websockets` echo server (its sync API, in a thread): "upper" messages come back upper-cased."""

    def handler(conn: websockets.sync.server.ServerConnection) -> None:
        for message in conn:
            if isinstance(message, str):
                conn.send(message.upper())
            else:
                conn.send(message[::-1])

    with websockets.sync.server.serve(handler, "127.0.0.1", 0, subprotocols=["chat"]) as srv:
        thread = threading.Thread(target=srv.serve_forever, daemon=True)
        thread.start()
        yield srv.socket.getsockname()[1]
        srv.shutdown()


def test_the_client_talks_to_the_websockets_library(lua_run: InProcess, ws_server: int) -> None:
    code, out = lua_run(
        f"""
        local http = require "moonlet.http"
        local ws = assert(http.websocket("ws://127.0.0.1:{ws_server}/", {{ protocols = {{ "chat" }} }}))
        print(ws.protocol)
        ws:send("héllo") print(ws:receive())
        ws:send(("x"):rep(70000) .. "y", "binary")
        local data, kind = ws:receive() print(#data, data:sub(1, 2), kind)
        ws:ping("p") print(ws:receive())
        print(ws:close(1000, "bye"))
        print(ws:send("late"))
        print(http.websocket("ftp://x/"))
        print(http.websocket("ws://127.0.0.1:1/"))
        """,
        virtual_time=False,
    )
    assert code == 0, out
    assert out == [
        "chat",
        "HÉLLO\ttext",
        "70001\tyx\tbinary",
        "p\tpong",
        "true",
        "nil\tclosed",
        "nil\twebsocket: bad url 'ftp://x/' (ws:// or wss://)",
        "nil\tconnection refused",
    ]


def test_a_receive_timeout_leaves_the_socket_open_and_wss_works(lua_host, certs) -> None:  # type: ignore[no-untyped-def]
    server = lua_host(
        f"""
        local http = require "moonlet.http"
        assert(http.serve {{ port = 0, tls = {{ cert = "{certs}/server.pem", key = "{certs}/server.key" }},
          handler = function(req)
            local ws = assert(req:websocket {{ timeout = 0.2 }})
            local data, err = ws:receive()
            ws:send(tostring(data) .. " " .. tostring(err))  -- nil timeout: the socket goes on
            data, err = ws:receive()
            ws:send("then " .. tostring(data))
            ws:close()
          end }})
        """,
        ready=re.compile(rb"listening on (\S+):(\d+) \(http\) \(tls\)"),
    )

    async def talk() -> list[str]:
        ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        async with websockets.connect(f"wss://localhost:{server.port}/", ssl=ctx) as ws:
            first = await ws.recv()
            await ws.send("later")
            return [str(first), str(await ws.recv())]

    assert asyncio.run(talk()) == ["nil timeout", "then later"]


PINGING = """
local http, log = require "moonlet.http", require "moonlet.log"
assert(http.serve { port = 0, handler = function(req)
  local ok, err = pcall(req.websocket, req, { ping_interval = -1 })
  log.info("bad interval: " .. tostring(err))
  local ws = assert(req:websocket { ping_interval = 0.2 })
  while true do
    local data, kind, code = ws:receive()
    if not data then log.info("ended: " .. tostring(kind) .. " " .. tostring(code)) return end
    if kind == "text" then ws:send("echo " .. data) end
  end
end })
"""


def test_ping_interval_keeps_a_live_peer_and_ends_a_silent_one(lua_host) -> None:  # type: ignore[no-untyped-def]
    server = lua_host(PINGING, ready=HTTP_READY)

    async def live() -> str:  # (the websockets library answers pings by itself)
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/") as ws:
            await asyncio.sleep(1.0)  # five intervals with nothing to say
            await ws.send("still here")
            return str(await ws.recv())

    assert asyncio.run(live()) == "echo still here"
    start = time.monotonic()
    with handshake(server.port) as s:  # a peer that never answers
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    took = time.monotonic() - start
    assert data[:2] == bytes([0x89, 0]) and data[2:4] == bytes([0x88, 21]), data  # a ping, then the close
    assert struct.unpack(">H", data[4:6])[0] == 1001 and data[6:] == b"no answer to a ping"
    assert 0.35 < took < 2, took
    server.wait_log(b"ended: no answer to a ping 1001")
    assert "bad interval: " in server.log_text() and "('ping_interval': number > 0 expected, got -1)" in (
        server.log_text()
    )
