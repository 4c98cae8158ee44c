-- CPU work for pool jobs in the benchmarks and tests: a fixed amount, not a clock (os.clock counts every
-- thread of the process).
local M = {}

function M.spin(n)
  local x = 0
  for i = 1, n do x = (x + i * i) % 1000003 end
  return x
end

return M
