"""moonlet.redis (RESP over net.connect, in Lua) against redis-py's asyncio client with hiredis, both talking
to the same redis-server: why moonlet.redis is built on net.connect rather than on a Python driver.

    python bench/redis_client.py [--n 20000] [--batch 100]

Each client, on one connection, runs N sequential SET+GET pairs (a round trip each), then N commands in
pipelines of --batch. Reports calls per second; redis-server is started on a free loopback port.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import free_port, wait_port  # bench/harness.py
from run import PEERS  # bench/run.py's catalogue: its redis-server command

ROOT = Path(__file__).resolve().parent.parent

LUA = """
local redis, time = require "moonlet.redis", require "moonlet.time"
local port, n, batch = tonumber(arg[1]), tonumber(arg[2]), tonumber(arg[3])
local r = redis.new { port = port }
assert(r:call("PING"))
local t0 = time.monotonic()
for i = 1, n do
  assert(r:call("SET", "k" .. i % 100, i))
  assert(r:call("GET", "k" .. i % 100))
end
local seq = 2 * n / (time.monotonic() - t0)
local commands = {}
for i = 1, batch do commands[i] = { "INCR", "counter" } end
t0 = time.monotonic()
for _ = 1, n // batch do assert(r:pipeline(commands)) end
print(string.format("%.0f %.0f", seq, (n // batch) * batch / (time.monotonic() - t0)))
"""


async def redis_py(port: int, n: int, batch: int) -> tuple[float, float]:
    import redis.asyncio as aioredis

    r = aioredis.Redis(port=port, single_connection_client=True)
    await r.ping()
    t0 = time.monotonic()
    for i in range(1, n + 1):
        await r.set(f"k{i % 100}", i)
        await r.get(f"k{i % 100}")
    seq = 2 * n / (time.monotonic() - t0)
    t0 = time.monotonic()
    for _ in range(n // batch):
        pipe = r.pipeline(transaction=False)
        for _ in range(batch):
            pipe.incr("counter")
        await pipe.execute()
    piped = (n // batch) * batch / (time.monotonic() - t0)
    await r.aclose()
    return seq, piped


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=100)
    ns = parser.parse_args()
    port = free_port()
    server = subprocess.Popen(PEERS["redis-server"](port), stdout=subprocess.DEVNULL)
    try:
        wait_port(port, server)
        with tempfile.TemporaryDirectory() as tmp:
            script = Path(tmp) / "client.lua"
            script.write_text(LUA)
            out = subprocess.run(
                [sys.executable, "-m", "runtime", "run", "--workers", "1", "--no-console", str(script),
                 str(port), str(ns.n), str(ns.batch)],
                cwd=ROOT, capture_output=True, text=True, check=True,
            ).stdout.split()  # fmt: skip
        ours = float(out[0]), float(out[1])
        import hiredis  # noqa: F401  (redis-py uses it for parsing when it is installed)

        theirs = asyncio.run(redis_py(port, ns.n, ns.batch))
    finally:
        server.terminate()
        server.wait(10)
    print(f"{'client':32} {'sequential calls/s':>20} {'pipelined calls/s':>20}")
    print(f"{'moonlet.redis (net.connect)':32} {ours[0]:>20,.0f} {ours[1]:>20,.0f}")
    print(f"{'redis-py asyncio + hiredis':32} {theirs[0]:>20,.0f} {theirs[1]:>20,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
