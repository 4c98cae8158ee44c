--- Time: sleeping and clocks.
-- @module moonlet.time
local host = require "moonlet._host"
local request, call, OP = host.request, host.call, host.OP
local type, error = type, error

local M = {}

--- Suspend the calling coroutine for `seconds` (a number >= 0); other coroutines keep running.
--- `sleep(0)` lets every other ready coroutine run first.
---@async
---@param seconds number
---@return true
function M.sleep(seconds)
  if type(seconds) ~= "number" or seconds ~= seconds or seconds < 0 then
    error("bad argument #1 to 'sleep' (non-negative number expected, got " .. type(seconds) .. ")", 2)
  end
  return request(OP.SLEEP, seconds)
end

--- Wall-clock time in seconds since the epoch, with sub-second precision. Never yields.
---@return number
function M.now()
  return call(OP.NOW)
end

--- Seconds from an arbitrary fixed point; never goes backwards. Use it to measure durations. Never yields.
---@return number
function M.monotonic()
  return call(OP.MONOTONIC)
end

return M
