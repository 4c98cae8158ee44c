"""The baseline: a minimal hand-written uvloop Protocol server that answers inline PING with +PONG.

It batches the replies of one read into one write, which is what a careful raw-Python server does.
Run: python bench/raw_pong.py PORT
"""

from __future__ import annotations

import asyncio
import sys

import uvloop


class Pong(asyncio.Protocol):
    __slots__ = ("buf", "transport")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        count = buf.count(b"\n")
        if count:
            self.buf = buf[buf.rfind(b"\n") + 1 :]
            self.transport.write(b"+PONG\r\n" * count)
        else:
            self.buf = buf


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Pong, "127.0.0.1", port, reuse_address=True, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
