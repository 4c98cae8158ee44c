-- Per-row figures for apps/report.lua, computed in a pool thread (a spawned job: see moonlet.pool): it takes
-- rows from its channel, answers each with its figures, and returns how many it did once the channel closes.
local M = {}

-- A deliberately CPU-heavy score (a few thousand steps of arithmetic per row), the kind of work that must
-- not run on the event loop.
local function score(amount, steps)
  local h = amount
  for i = 1, steps do h = (h * 31 + i) % 1000003 end
  return h
end

function M.compute(ch, steps)
  local done = 0
  while true do
    local row = ch:get()
    if row == nil then return done end
    done = done + 1
    ch:put({ id = row.id, score = score(row.amount, steps), tax = row.amount * 0.2 })
  end
end

return M
