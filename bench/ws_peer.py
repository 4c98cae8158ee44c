"""The WebSocket baseline of `python bench/run.py ws`: an echo server written with the `websockets` library
on uvloop, the way a Python service would be.

    python bench/ws_peer.py PORT
"""

from __future__ import annotations

import asyncio
import sys

import uvloop
import websockets


async def echo(ws: websockets.ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


async def main(port: int) -> None:
    async with websockets.serve(echo, "127.0.0.1", port, compression=None):
        await asyncio.Future()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
