"""pool.spawn: a job in a pool thread and the task that started it, talking through a bounded channel."""

from __future__ import annotations

import time
from pathlib import Path

from conftest import run_script

STREAMER = """
local M = {}
function M.count(ch, n)
  for i = 1, n do
    if not ch:put(i) then return "closed at " .. i end
  end
  return "sent " .. n
end
function M.doubler(ch)
  local total = 0
  while true do
    local v = ch:get()
    if v == nil then break end
    total = total + v.x
    ch:put({ x = v.x, twice = v.x * 2 })
  end
  return total, "done"
end
function M.fail(ch)
  ch:put(1)
  error("broke mid-stream")
end
function M.forever(ch)
  local i = 0
  while true do i = i + 1 ch:put(i) end
end
function M.spin_forever() while true do pcall(function() while true do end end) end end
function M.quick() return "quick" end
return M
"""

GENERATOR = """
from runtime.hostfn import host_function

@host_function("rows", pool="io")
def rows(n):
    for i in range(n):
        yield {"id": i, "name": f"row {i}"}
    return "all", n
"""


def run(tmp_path: Path, source: str) -> list[str]:
    (tmp_path / "lib").mkdir(exist_ok=True)
    (tmp_path / "lib" / "streamer.lua").write_text(STREAMER)
    (tmp_path / "gen.py").write_text(GENERATOR)
    done = run_script(tmp_path, source, options=["--python", str(tmp_path / "gen.py")], timeout=60)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return done.stdout.decode().splitlines()


def test_a_job_streams_100000_values_through_a_bounded_channel_with_flat_memory(tmp_path: Path) -> None:
    out = run(
        tmp_path,
        """
        local pool = require "moonlet.pool"
        local job = assert(pool.spawn("streamer", "count", 100000))
        local n, sum, peak = 0, 0, 0
        while true do
          local v = job:get()
          if v == nil then break end
          n, sum = n + 1, sum + v
          if n % 1000 == 0 then peak = math.max(peak, collectgarbage("count")) end
        end
        print(n, sum, job:wait())
        print(peak < 4096)   -- KiB of Lua heap: the channel holds at most 64 values, whatever the stream
        """,
    )
    assert out == ["100000\t5000050000\tsent 100000", "true"]


def test_a_two_way_conversation_and_closing(tmp_path: Path) -> None:
    out = run(
        tmp_path,
        """
        local pool = require "moonlet.pool"
        local job = assert(pool.spawn("streamer", "doubler"))
        for i = 1, 3 do
          assert(job:put({ x = i }))
          local r = job:get()
          print(r.x, r.twice)
        end
        job:close()
        print(job:wait())
        print(job:get(), job:put({ x = 9 }))     -- after the end: nil; and the job's side is closed
        local c = assert(pool.spawn("streamer", "count", 1000000))  -- (more than its 256 KiB bound holds)
        print(c:get(), c:get())
        c:close()                                  -- the producer's next put answers closed
        print(c:wait())
        print(pcall(job.put, job, nil))
        """,
    )
    assert out[:3] == ["1\t2", "2\t4", "3\t6"]
    assert out[3] == "6\tdone"
    assert out[4] == "nil\tnil\tclosed"
    assert out[5] == "1\t2"
    assert out[6].startswith("closed at ")
    assert "bad argument #1 to 'put' (a value expected, got nil)" in out[7]


def test_a_job_that_dies_mid_stream_ends_the_channel_with_its_error(tmp_path: Path) -> None:
    out = run(
        tmp_path,
        """
        local pool = require "moonlet.pool"
        local job = assert(pool.spawn("streamer", "fail"))
        print(job:get())
        local v, err = job:get()
        print(v, err:match("broke mid%-stream") ~= nil, err:match("stack traceback") ~= nil)
        local ok, werr = job:wait()
        print(ok, werr:match("broke mid%-stream") ~= nil)
        local missing = assert(pool.spawn("streamer", "nope"))
        print(select(2, missing:get()))
        """,
    )
    assert out == ["1", "nil\ttrue\ttrue", "nil\ttrue", "module 'streamer' has no function 'nope'"]


def test_cancelling_the_starting_task_stops_its_jobs(tmp_path: Path) -> None:
    out = run(
        tmp_path,
        """
        local pool, task = require "moonlet.pool", require "moonlet.task"
        local cpu = pool.named("cpu")
        -- more stopped jobs than the pool has threads: if one kept its thread, the last run would wait
        for _ = 1, 6 do
          local t = task.spawn(function()
            local job = assert(cpu:spawn("streamer", "forever"))   -- blocked on a full channel
            local spin = assert(cpu:spawn("streamer", "spin_forever")) -- never at a channel operation
            job:get()
            sleep(60)
          end)
          sleep(0.05)
          t:cancel()
        end
        local r, err = pool.named("cpu", { timeout = 5 }):run("streamer", "quick")
        print(r, err)
        """,
    )
    assert out == ["quick\tnil"]


def test_a_generator_host_function_streams_its_values(tmp_path: Path) -> None:
    out = run(
        tmp_path,
        """
        local pool = require "moonlet.pool"
        local job = assert(pool.spawn_call("rows", 1000))
        local n, last = 0, nil
        while true do
          local row = job:get()
          if row == nil then break end
          n, last = n + 1, row
        end
        print(n, last.id, last.name, job:wait())
        """,
    )
    assert out == ["1000\t999\trow 999\tall\t1000"]


BIG = """
local M = {}
function M.flood(ch, mib)  -- big values as fast as the channel takes them
  local v = string.rep("x", mib * 1024 * 1024)
  while ch:put(v) do end
end
function M.array(n)
  local t = {} for i = 1, n do t[i] = i end
  return t
end
return M
"""

PROBED = """
local net, pool = require "moonlet.net", require "moonlet.pool"
net.listen { host = "127.0.0.1", port = 0, handler = function(conn)
  while true do
    local line = conn:readline()
    if not line then return end
    if line == "flood" then          -- three jobs sending 16 MiB values to a task that never reads
      for _ = 1, 3 do assert(pool.named("cpu", { timeout = math.huge }):spawn("big", "flood", 16)) end
      conn:write("flooding\\n")
    elseif line == "array" then      -- a 2,000,000-element result
      local t = assert(pool.run("big", "array", 2000000))
      conn:write("array ", #t, " ", t[2000000], "\\n")
    elseif line == "ping" then
      conn:write("pong\\n")
    end
  end
end }
"""


def held(server, worst: float) -> bool:  # type: ignore[no-untyped-def]
    """The loop was held: a probe waited half a second, and the server's lag monitor says its loop worked
    through a block that long (on a busy machine a probe also waits for a core: the monitor logs that as
    "late", not "blocked", and it is not the server's doing)."""
    return worst >= 0.5 and "event loop blocked" in server.log_text()


def worst_round_trip(server, seconds: float) -> float:  # type: ignore[no-untyped-def]
    probe = server.connect()
    worst, end = 0.0, time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.monotonic()
        probe.send(b"ping\n")
        assert probe.line() == b"pong"
        worst = max(worst, time.monotonic() - t0)
        time.sleep(0.01)
    return worst


def test_channels_hold_bytes_not_values_and_large_results_arrive_in_slices(
    tmp_path: Path,
    lua_server,  # type: ignore[no-untyped-def]
) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "big.lua").write_text(BIG)
    server = lua_server(PROBED, options=["--pool", "cpu=4"])
    client = server.connect(timeout=60)
    before = server.rss()
    client.send(b"flood\n")
    assert client.line() == b"flooding"
    worst = worst_round_trip(server, 3.0)
    grown = server.rss() - before
    # each channel holds one 16 MiB value queued (bigger than its 256 KiB, it passes alone), each job one
    # more it made, and the Lua heap of each job's thread the string it repeats: about 150 MiB; with 64
    # values a channel, it was 3 GiB
    assert grown < 400 * 1024 * 1024, grown
    assert not held(server, worst), worst
    client.send(b"array\n")
    worst = worst_round_trip(server, 2.0)
    assert client.line() == b"array 2000000 2000000"
    assert not held(server, worst), worst
