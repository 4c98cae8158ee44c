--- Worker processes, from the app's side. `moonlet run` gives a server one worker process per core (see the
--- README, "Every core"); they share the listening ports, `moonlet.shared`, the database, and nothing else.
--- An app that keeps state in a worker's memory (a store in a Lua table, counters, a room of connections)
--- must say so, at its top, before it listens:
--
--     local workers = require "moonlet.workers"
--     workers.single("the store is a Lua table in this process")
--
--- `moonlet run` then runs it as one process and says so in its start-up log (with `--workers N` too: the
--- other workers are stopped at once). Without it, every worker would keep a store of its own, and a client
--- would see whichever one its connection landed on.
-- @module moonlet.workers
local host = require "moonlet._host"
local call, OP, where = host.call, host.OP, host.where
local getenv = os.getenv
local type, error, tostring, tonumber = type, error, tostring, tonumber

local M = {}

--- Declare that this app keeps state in its process's memory, so it must run as one process. Call it
--- before the app listens (an error otherwise: workers may already have started).
---@param reason string what lives in memory (said in the start-up log)
function M.single(reason)
  if type(reason) ~= "string" or reason == "" then
    host.argerror(1, "single", "a non-empty string saying what state is in memory", reason)
  end
  local ok, err = call(OP.SINGLE_PROCESS, reason, where(2))
  if not ok then error("workers.single: " .. tostring(err), 2) end
end

--- Whether this worker is draining: it got SIGTERM (or Ctrl-C), or it is the old worker of a reload
--- (SIGHUP), so it takes no new connections and ends once its tasks have. A background loop checks it
--- between two items (OpenResty: `ngx.worker.exiting()`).
--- Example: `while not workers.draining() do run(q:get(1)) end`
---@return boolean
function M.draining()
  return call(OP.DRAINING)
end

--- Run `fn` in its own task when this worker begins to drain (at once if it has): the place to close a
--- queue its runners wait on, end a subscription, or stop a loop, so that the drain ends as soon as the
--- work in hand is done instead of at the drain timeout.
--- Example: `workers.ondrain(function() jobs:close() end)`
---@param fn function
function M.ondrain(fn)
  if type(fn) ~= "function" then host.argerror(1, "ondrain", "function", fn) end
  call(OP.ON_DRAIN, host.job(table.pack(fn)), where(2))
end

--- This process's worker number: 1 to N under `moonlet run`'s supervisor, 1 when it runs alone.
--- Example: `log.info("worker " .. workers.id() .. " ready")`
---@return integer
function M.id()
  return tonumber(getenv("MOONLET_WORKER") or "1") or 1
end

return M
