"""The load of `python bench/run.py ws`: CONNS WebSocket clients (the `websockets` library), each sending a
16-byte text message and waiting for its echo, for SECONDS; prints the messages echoed.

    python bench/ws_client.py PORT [CONNS] [SECONDS]
"""

from __future__ import annotations

import asyncio
import sys
import time

import uvloop
import websockets


async def main(port: int, conns: int, seconds: float) -> int:
    done = 0
    deadline = time.monotonic() + seconds

    async def one() -> None:
        nonlocal done
        async with websockets.connect(f"ws://127.0.0.1:{port}/", compression=None) as ws:
            while time.monotonic() < deadline:
                await ws.send("0123456789abcdef")
                await ws.recv()
                done += 1

    await asyncio.gather(*(one() for _ in range(conns)))
    return done


if __name__ == "__main__":
    args = sys.argv[1:]
    print(
        uvloop.run(
            main(int(args[0]), int(args[1]) if len(args) > 1 else 50, float(args[2]) if len(args) > 2 else 5)
        )
    )
