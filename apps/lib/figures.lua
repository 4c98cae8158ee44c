-- Per-row figures for apps/report.lua, computed in a pool thread (pool.run: a batch of rows a job).
local M = {}

-- A deliberately CPU-heavy score (a few thousand steps of arithmetic per row), the kind of work that must
-- not run on the event loop.
local function score(amount, steps)
  local h = amount
  for i = 1, steps do h = (h * 31 + i) % 1000003 end
  return h
end

--- The figures of each row of `rows` ({id =, amount =}), in order.
function M.batch(rows, steps)
  local out = {}
  for i = 1, #rows do
    local amount = rows[i].amount
    out[i] = { score = score(amount, steps), tax = amount * 0.2 }
  end
  return out
end

return M
