"""The HTTP baseline: a minimal hand-written uvloop Protocol server parsing with httptools, answering hello.

Run: python bench/raw_http.py PORT
"""

from __future__ import annotations

import asyncio
import sys
from email.utils import formatdate

import httptools  # type: ignore[import-untyped]
import uvloop


class Hello(asyncio.Protocol):
    __slots__ = ("parser", "transport")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_complete(self) -> None:
        body = b"hello world\n"
        head = b"HTTP/1.1 200 OK\r\nDate: %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % (
            formatdate(usegmt=True).encode(),
            len(body),
        )
        self.transport.write(head + body)
        if not self.parser.should_keep_alive():
            self.transport.close()


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Hello, "127.0.0.1", port, reuse_address=True, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
