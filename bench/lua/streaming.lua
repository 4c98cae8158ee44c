-- Streaming figures: values a second through a pool.spawn channel, and rows a second from db.rows against
-- db.query, with the Lua heap's peak over idle, and the longest the loop went without serving a ticker task
-- while db.query's rows were converted.
--   moonlet run --workers 1 --db /tmp/streaming.db bench/lua/streaming.lua [VALUES] [ROWS]
local pool, db, time = require "moonlet.pool", require "moonlet.db", require "moonlet.time"
local values = tonumber(arg[1]) or 100000
local rows = tonumber(arg[2]) or 1000000
local SERIES = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) "
  .. "SELECT x, 'row ' || x AS name FROM c"

collectgarbage() collectgarbage()
local idle = collectgarbage("count")
local t0 = time.monotonic()
local job = assert(pool.spawn("heavy", "count", values))
local n = 0
while job:get() do n = n + 1 end
print(("channel: %d values, %.0f values/s"):format(n, n / (time.monotonic() - t0)))

local peak = 0
n, t0 = 0, time.monotonic()
for _ in db.rows(SERIES, rows) do
  n = n + 1
  if n % 10000 == 0 then peak = math.max(peak, collectgarbage("count")) end
end
print(("db.rows: %d rows, %.0f rows/s, Lua heap peak %.0f KiB over idle"):format(n, n / (time.monotonic() - t0),
  peak - idle))

local some = math.min(rows, 200000)
local worst, ticking = 0, true
local ticker = spawn(function()   -- another task: how long did it wait for its turn, at worst?
  local last = time.monotonic()
  while ticking do
    sleep(0.001)
    local now = time.monotonic()
    worst = math.max(worst, now - last)
    last = now
  end
end)
t0 = time.monotonic()
local all = assert(db.query(SERIES, some))
local took = time.monotonic() - t0
ticking = false
ticker:wait()
print(("db.query: %d rows, %.0f rows/s, Lua heap %.0f KiB over idle (all of them at once), another task "
  .. "waited %.1f ms at most"):format(#all, #all / took, collectgarbage("count") - idle, worst * 1000))
