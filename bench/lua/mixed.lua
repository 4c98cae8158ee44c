-- One process serving cheap and expensive requests side by side (bench/run.py blocking, and a test):
--   ping  -> ping                 (the echo whose latency must not suffer)
--   slow  -> a SQLite query (~0.3 s here with the default --slow), in the database's reader threads
--   cpu   -> a CPU-heavy Lua job in the "cpu" pool
--   block -> a 10 ms blocking Python call in the "io" pool   (needs --python bench/hostfns.py)
--   sleep -> a 10 ms non-blocking sleep, for comparison
--   rows  -> 200,000 rows streamed with db.rows (batches from the database's thread)
--   chan  -> 50,000 values streamed from a pool job through its channel (pool.spawn)
local net = require "moonlet.net"
local db = require "moonlet.db"
local pool = require "moonlet.pool"
local log = require "moonlet.log"
local opts = require("moonlet.args").parse(arg,
  { port = 7003, host = "127.0.0.1", spin = 3000000, slow = 1000000 })

local SLOW = [[WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < :n)
              SELECT count(*) AS n FROM c]]

local SERIES = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < :n) SELECT x FROM c"

local function answer(conn, ...)
  if ... == nil then return conn:write("ERR ", tostring(select(2, ...)), "\n") end
  conn:write(tostring((...)), "\n")
end

local server = assert(net.listen { host = opts.host, port = opts.port, handler = function(conn)
  while true do
    local line = conn:readline()
    if not line then return end
    if line == "slow" then
      local rows, err = db.query(SLOW, { n = opts.slow })
      answer(conn, rows and rows[1].n, err)
    elseif line == "cpu" then answer(conn, pool.run("heavy", "spin", opts.spin))
    elseif line == "block" then answer(conn, pool.call("nap", 0.01))
    elseif line == "sleep" then answer(conn, sleep(0.01))
    elseif line == "rows" then
      local n = 0
      for _ in db.rows(SERIES, { n = 200000 }) do n = n + 1 end
      answer(conn, n)
    elseif line == "chan" then
      local job, err = pool.spawn("heavy", "count", 50000)
      local n = 0
      while job and job:get() do n = n + 1 end
      answer(conn, job and n, err)
    else conn:write(line, "\n") end
  end
end })
log.info("mixed ready on " .. server.host .. ":" .. server.port)
