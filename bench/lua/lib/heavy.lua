-- CPU work for pool jobs in the benchmarks and tests: a fixed amount, not a clock (os.clock counts every
-- thread of the process).
local M = {}

function M.spin(n)
  local x = 0
  for i = 1, n do x = (x + i * i) % 1000003 end
  return x
end

-- A spawned job (pool.spawn) that streams 1..n through its channel.
function M.count(ch, n)
  for i = 1, n do
    if not ch:put(i) then return i end
  end
  return n
end

return M
