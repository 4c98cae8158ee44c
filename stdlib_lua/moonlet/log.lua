--- Logging into the server's log, one line per call.
-- @module moonlet.log
local host = require "moonlet._host"
local call, OP = host.call, host.OP
local select, tostring, concat = select, tostring, table.concat

local M = {}

local function emit(level, ...)
  local n = select("#", ...)
  local parts = {}
  for i = 1, n do parts[i] = tostring((select(i, ...))) end
  call(OP.LOG, level, concat(parts, " "))
end

--- Log the arguments (joined by spaces, each through tostring) at level debug. Never yields.
---@param ... any
function M.debug(...) emit("debug", ...) end
--- Same, at level info.
---@param ... any
function M.info(...) emit("info", ...) end
--- Same, at level warn.
---@param ... any
function M.warn(...) emit("warn", ...) end
--- Same, at level error.
---@param ... any
function M.error(...) emit("error", ...) end

return M
