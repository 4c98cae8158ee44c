-- The cancel pattern under load: each round spawns three upstream calls, waits for them with a deadline and
-- cancels those still running (the aggregator the README teaches). Connections belong to the task that
-- opened them, so the cancelled calls' sockets close; count the process's descriptors after the rounds:
--   python bench/fds.py bench/lua/cancel_fanout.lua [ROUNDS]
local net, task = require "moonlet.net", require "moonlet.task"
local rounds = tonumber(arg[1]) or 300

local upstream = assert(net.listen { host = "127.0.0.1", port = 0, handler = function(conn)
  local line = conn:readline()
  if line == "slow" then conn:readline() return end -- never answers; ends when the caller closes
  conn:write("answer\n")
end })

local function call(kind)
  local c = assert(net.connect("127.0.0.1", upstream.port))
  c:write(kind, "\n")
  return c:readline()
end

for _ = 1, rounds do
  local calls = { task.spawn(call, "fast"), task.spawn(call, "slow"), task.spawn(call, "slow") }
  task.wait_all(calls, 0.01)
  for _, t in ipairs(calls) do t:cancel() end
end
sleep(0.2) -- (let the peers see their connections close)
print("done " .. rounds)
sleep(60)
