-- CPU per moonlet.metrics update: `moonlet run --workers 1 --stall-budget 0 bench/lua/metrics_ops.lua`
-- (an update is a table operation in this worker; the host adds them into the shared store once a second).
local metrics = require "moonlet.metrics"
local c = metrics.counter("bench_total", "x", { "route", "status" })
local h = metrics.histogram("bench_seconds", "x", { "route" })
local clock = os.clock
local N = 100000
local t0 = clock()
for _ = 1, N do c:inc(1, "/users", 200) end
local t1 = clock()
for _ = 1, N do h:observe(0.02, "/users") end
local t2 = clock()
print(string.format("counter inc: %.2f us, histogram observe: %.2f us (CPU, %d each)", (t1 - t0) / N * 1e6,
  (t2 - t1) / N * 1e6, N))
