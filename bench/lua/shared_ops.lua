-- moonlet.shared against a plain Lua table: microseconds per get, set and incr, in one process.
--   python -m runtime run --workers 1 bench/lua/shared_ops.lua [N]
local shared, time = require "moonlet.shared", require "moonlet.time"
local n = tonumber(arg[1]) or 20000
local d = shared.dict("bench")
local t = {}

local function per_op(f)
  local start = time.monotonic()
  for i = 1, n do f(i) end
  return (time.monotonic() - start) / n * 1e6
end

local rows = {
  { "set", per_op(function(i) d:set("k" .. i % 1000, i) end), per_op(function(i) t["k" .. i % 1000] = i end) },
  { "get", per_op(function(i) return d:get("k" .. i % 1000) end), per_op(function(i) return t["k" .. i % 1000] end) },
  { "incr", per_op(function() d:incr("hits", 1, 0) end), per_op(function() t.hits = (t.hits or 0) + 1 end) },
}
for _, r in ipairs(rows) do
  print(("%-5s shared %8.2f us   lua table %6.3f us"):format(r[1], r[2], r[3]))
end
