-- Costs of the concurrency toolkit, measured inside one moonlet process; prints one "name value" per line.
--   moonlet run bench/lua/tasks.lua [--sleepers 100000] [--rounds 3]
local task = require "moonlet.task"
local sync = require "moonlet.sync"
local time = require "moonlet.time"
local opts = require("moonlet.args").parse(arg, { sleepers = 100000, rounds = 3, n = 20000 })
local now = time.monotonic

local function report(name, value) print(string.format("%s %.3f", name, value)) end

-- spawn + wait: a task that returns at once, waited for by its parent
local function noop(x) return x end
local t0 = now()
for i = 1, opts.n do spawn(noop, i):wait() end
report("spawn_wait_us", (now() - t0) / opts.n * 1e6)

-- queue round trip: ping-pong between two tasks through two queues
local ping, pong = sync.queue(1), sync.queue(1)
local echo = spawn(function()
  while true do
    local v = ping:get()
    if v == nil then return end
    pong:put(v)
  end
end)
t0 = now()
for i = 1, opts.n do
  ping:put(i)
  pong:get()
end
report("queue_roundtrip_us", (now() - t0) / opts.n * 1e6)
ping:close()
echo:wait()

-- wake-up lateness: many tasks sleeping 1 s in a loop
local late, n = {}, 0
local started = now()
local sleepers = {}
for i = 1, opts.sleepers do
  sleepers[i] = spawn(function()
    sleep((i % 1000) / 1000) -- spread the phases over a second
    for _ = 1, opts.rounds do
      local before = now()
      sleep(1)
      n = n + 1
      late[n] = now() - before - 1
    end
  end)
  if i % 1000 == 0 then task.yield() end -- (spawning 100,000 at once would trip the stall budget)
end
task.wait_all(sleepers)
table.sort(late)
report("sleepers", opts.sleepers)
report("wake_late_p50_ms", late[math.max(1, n // 2)] * 1e3)
report("wake_late_p99_ms", late[math.max(1, math.floor(n * 0.99))] * 1e3)
report("wake_late_max_ms", late[n] * 1e3)
report("sleepers_wall_s", now() - started)
