-- The one door between Lua and the host. Private: only stdlib modules may require it.
--
-- Every request that suspends a coroutine goes through `request` here, and every synchronous call through
-- `call`. The op numbers come from runtime/kernel/ops.py at bootstrap, in a table that raises on an unknown
-- name. A request always yields exactly four values (op, a, b, c); the kernel resumes the coroutine with the
-- reply: a value, or `nil, err`.
--
-- Output written to connections is buffered in Lua and must reach the host before the coroutine sleeps, or a
-- client would wait for bytes its handler wrote long ago. Objects with buffered output register here with
-- `mark_dirty`; `request` hands their output over (`obj:_sync()`) before it yields. A connection that is
-- about to yield RECV carries its own output in the request instead, so the common echo cycle crosses into
-- Python once.

local privileged = ...
local call, OP, raw_yield, traceback = privileged.call, privileged.OP, privileged.yield, privileged.traceback
local next, tostring, xpcall = next, tostring, xpcall

local M = { call = call, OP = OP, limits = privileged.limits }

-- Objects whose output has not been handed to the host: almost always one connection, kept in `first`
-- so that marking and unmarking it costs no table operation; any others go in `more`.
local first = nil
local more = {}
local nmore = 0

function M.mark_dirty(obj)
  if first == nil then
    first = obj
  elseif first ~= obj and not more[obj] then
    more[obj] = true
    nmore = nmore + 1
  end
end

function M.unmark(obj)
  if first == obj then
    first = nil
  elseif more[obj] then
    more[obj] = nil
    nmore = nmore - 1
  end
end

local function sync_all()
  local obj = first
  first = nil
  if obj ~= nil then obj:_sync() end
  while nmore > 0 do
    obj = next(more)
    more[obj] = nil
    nmore = nmore - 1
    obj:_sync()
  end
end
M.sync_all = sync_all

--- Suspend the running coroutine until the host replies to request `op`.
function M.request(op, a, b, c)
  if first ~= nil or nmore > 0 then sync_all() end
  return raw_yield(op, a, b, c)
end

local function on_error(err)
  return traceback(tostring(err), 2)
end

--- The body of every task: run fn(...) and report how it ended with an EXIT request.
function M.body(fn, ...)
  local ok, err = xpcall(fn, on_error, ...)
  if first ~= nil or nmore > 0 then sync_all() end
  if ok then return OP.EXIT, true, nil, nil end
  return OP.EXIT, false, err, nil
end

return M
