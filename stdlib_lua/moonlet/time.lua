--- Time: sleeping, clocks and timers.
-- @module moonlet.time
local host = require "moonlet._host"
local request, call, OP, where, check_seconds = host.request, host.call, host.OP, host.where, host.check_seconds
local type, setmetatable, pack = type, setmetatable, table.pack

local M = {}

--- Suspend the calling coroutine for `seconds` (a number >= 0); other coroutines keep running.
--- `sleep(0)` lets every other ready coroutine run first.
--- Example: `sleep(0.5)`
---@async
---@param seconds number
---@return true
function M.sleep(seconds)
  return request(OP.SLEEP, check_seconds(seconds, 1, "sleep"))
end

--- Wall-clock time in seconds since the epoch, with sub-second precision. Never yields.
--- Example: `local stamp = os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(time.now()))`
---@return number
function M.now()
  return call(OP.NOW)
end

--- Seconds from an arbitrary fixed point; never goes backwards. Use it to measure durations. Never yields.
---@return number
function M.monotonic()
  return call(OP.MONOTONIC)
end

---@class moonlet.Timer
local Timer = {}
Timer.__index = Timer

local function check_delay(s, what)
  if type(s) ~= "number" or s ~= s or s < 0 or s == math.huge then
    host.argerror(1, what, "finite number of seconds >= 0", s, nil, 1)
  end
end

local function timer(what, delay, interval, fn, ...)
  if type(fn) ~= "function" then host.argerror(2, what, "function", fn, nil, 1) end
  local id = host.job(pack(fn, ...))
  local ok, err = call(OP.TIMER, delay, interval, id, where(3)) -- (the host knows the timer by its job id)
  if ok == nil then
    host.drop_job(id)
    return nil, err
  end
  return setmetatable({ _job = id }, Timer)
end

--- Run `fn(...)` once, `seconds` from now, as a task of its own (so it may wait). Returns a timer, or
--- nil, "too many timers ..." past the limit on pending timers (100,000). Pending timers keep the app running.
---@param seconds number
---@param fn async fun(...)
---@return moonlet.Timer? timer
---@return string? err
function M.after(seconds, fn, ...)
  check_delay(seconds, "after")
  local t, err = timer("after", seconds, 0, fn, ...) -- (not a tail call: `where` counts this frame)
  return t, err
end

--- Run `fn(...)` every `seconds` (first after `seconds`), each time as a task of its own. A beat missed
--- because the server was busy is skipped, not run late twice. Returns a timer, or nil, err.
--- Example: `local timer = time.every(10, flush_stats)`
---@param seconds number
---@param fn async fun(...)
---@return moonlet.Timer? timer
---@return string? err
function M.every(seconds, fn, ...)
  check_delay(seconds, "every")
  if seconds == 0 then host.argerror(1, "every", "seconds > 0", seconds) end
  local t, err = timer("every", seconds, seconds, fn, ...)
  return t, err
end

--- Stop the timer. Returns true if it was pending (a callback already running goes on).
--- Example: `local timer = time.every(1, flush) ... timer:cancel()`
---@return boolean
function Timer:cancel()
  local pending = call(OP.TIMER_CANCEL, self._job)
  if pending then host.drop_job(self._job) end
  return pending
end

return M
