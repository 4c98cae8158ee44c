"""Fairness: a client that keeps the server's input full cannot starve the other connections."""

from __future__ import annotations

import socket
import threading
import time

from conftest import APPS

BURST = b"PING\r\n" * (256 * 1024 // 6)  # 256 KiB of pipelined requests per send


def test_a_pipelining_client_does_not_starve_a_probe(run_app) -> None:
    server = run_app(APPS / "kv.lua", "--port", "0", options=["--log-level", "info"])
    stop = threading.Event()
    answered = [0]

    pipeliner = socket.create_connection(("127.0.0.1", server.port))
    pipeliner.settimeout(10)

    def send_bursts() -> None:
        deadline = time.monotonic() + 2.5
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                pipeliner.sendall(BURST)
            except OSError:  # (shut down at the end of the test)
                return

    def drain_replies() -> None:
        while not stop.is_set():
            try:
                data = pipeliner.recv(1 << 20)
            except OSError:
                return
            if not data:
                return
            answered[0] += data.count(b"\n")

    threads = [threading.Thread(target=send_bursts), threading.Thread(target=drain_replies)]
    for t in threads:
        t.start()
    probe = socket.create_connection(("127.0.0.1", server.port))
    probe.settimeout(10)
    try:
        time.sleep(0.3)  # the pipeliner is well under way
        round_trips = []
        for _ in range(40):
            started = time.monotonic()
            probe.sendall(b"PING\r\n")
            assert probe.recv(64) == b"+PONG\r\n"
            round_trips.append(time.monotonic() - started)
            time.sleep(0.02)
    finally:
        stop.set()
        pipeliner.shutdown(socket.SHUT_RDWR)
        for t in threads:
            t.join(10)
        pipeliner.close()
        probe.close()
    assert answered[0] > 100_000, "the pipelining client was not kept busy"
    # the bound is set per bytes of input (32 KiB a turn: a few ms of Lua here); 0.25 s leaves room for a
    # loaded CI machine, against the 1-3 s a probe waited when the share was counted in crossings
    assert max(round_trips) < 0.25, f"worst probe round trip {max(round_trips):.3f}s"


def test_input_handed_over_in_shares_keeps_its_order_and_its_frames(lua_host) -> None:
    server = lua_host(
        """
        local net = require "moonlet.net"
        net.listen { host = "127.0.0.1", port = 0, handler = function(conn)
          local frame = assert(conn:readn(300000))   -- ten shares' worth, sent at once
          local sum = 0
          for i = 1, #frame, 997 do sum = sum + frame:byte(i) end
          conn:write(#frame, " ", sum, "\\n")
          while true do
            local line = conn:readline()
            if not line then return end
            conn:write(line, "\\n")
          end
        end }
        """
    )
    frame = bytes(i * 7 % 251 for i in range(300_000))
    lines = b"".join(b"%d\n" % i for i in range(50_000))
    client = socket.create_connection(("127.0.0.1", server.port))
    client.settimeout(10)
    client.sendall(frame + lines)
    client.shutdown(socket.SHUT_WR)
    received = b""
    while chunk := client.recv(1 << 16):
        received += chunk
    client.close()
    head, _, echoed = received.partition(b"\n")
    assert head == b"300000 %d" % sum(frame[i] for i in range(0, len(frame), 997))
    assert echoed == lines  # every line, in order, across the shares
