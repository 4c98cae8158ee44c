#!/usr/bin/env python3
"""Coverage-guided fuzzing of the HTTP server's protocol code: the Lua parser (stdlib_lua/moonlet/_httpd.lua),
the limits, pipelining, chunked bodies, request workers and responses, with a real Lua app behind it.

The whole host runs in this process (uvloop, the kernel, Lua); each input is fed to a fresh connection of
the app's HTTP listener over an in-memory transport, in two pieces split where the input's first byte says,
and the loop runs until the server is quiet. Invariants: no exception escapes into the event loop, whatever
was written is a sequence of HTTP/1.1 responses, the connection is forgotten once closed, and the server
stays alive.

Run it for an hour (atheris is not a test dependency):
    .venv/bin/pip install atheris
    .venv/bin/python tests/fuzz/http_target.py -max_total_time=3600 -timeout=10 tests/fuzz/corpus/http
New inputs that raise coverage are added to the corpus directory; a crash is written to crash-<sha1>.
To fold a run's corpus back into the checked-in one (libFuzzer re-runs this file, hence the venv on PATH):
    PATH=.venv/bin:$PATH tests/fuzz/http_target.py -merge=1 tests/fuzz/corpus/http RUN_CORPUS_DIR
The test suite replays the checked-in corpus through the same target (tests/faults/test_fuzz_corpus.py).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

import uvloop

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from runtime.config import Limits  # noqa: E402
from runtime.host import Host  # noqa: E402
from runtime.services.stream import Connection, Listener  # noqa: E402


class MemoryTransport(asyncio.Transport):
    """What a Connection needs of a transport, writing into memory."""

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: Connection) -> None:
        super().__init__()
        self.loop = loop
        self.protocol = protocol
        self.out = bytearray()
        self.closed = False

    def write(self, data: Any) -> None:
        assert not self.closed, "write after close"
        self.out += data

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.call_soon(self.protocol.connection_lost, None)

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def abort(self) -> None:
        self.close()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass  # (everything written is taken at once)

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Target:
    """The host serving tests/fuzz/http_app.lua, brought up once."""

    def __init__(self) -> None:
        logging.getLogger("moonlet").setLevel(logging.CRITICAL)  # handler errors are expected, and loud
        self.loop = uvloop.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.failures: list[str] = []
        self.loop.set_exception_handler(
            lambda _loop, ctx: self.failures.append(str(ctx.get("exception") or ctx))
        )
        self.host = Host(str(HERE / "http_app.lua"), [], Limits(), console=False)
        self.serving = self.loop.create_task(self.host._serve())
        for _ in range(500):
            self.loop.run_until_complete(asyncio.sleep(0.01))
            if self.host.stream is not None and self.host.stream.listeners:
                break
        assert self.host.stream is not None and self.host.stream.listeners, "the fuzz app did not listen"
        self.listener: Listener = next(iter(self.host.stream.listeners))
        assert self.listener.workers is not None, "not an HTTP listener"

    def settle(self, rounds: int = 40) -> None:
        for _ in range(rounds):
            self.loop.run_until_complete(asyncio.sleep(0))

    def feed(self, data: bytes) -> bytes:
        stream = self.host.stream
        assert stream is not None
        conn = Connection(stream, self.listener)
        transport = MemoryTransport(self.loop, conn)
        conn.connection_made(transport)
        cut = data[0] % (len(data) + 1) if data else 0
        for piece in (data[1:cut], data[cut:]) if data else ():
            if piece and not transport.closed:
                conn.data_received(piece)
                self.settle(10)
        self.settle()
        if not transport.closed:
            transport.close()  # the client goes away
        self.settle()
        assert not self.failures, self.failures
        assert conn not in stream.connections, "a closed connection is still held"
        assert not self.serving.done(), "the server stopped"
        out = bytes(transport.out)
        assert not out or out.startswith(b"HTTP/1.1 "), out[:200]
        return out


def main() -> None:
    import atheris  # (only the fuzzer needs it)

    target = Target()
    atheris.instrument_all()

    def one(data: bytes) -> None:
        target.feed(data)

    atheris.Setup(sys.argv, one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
