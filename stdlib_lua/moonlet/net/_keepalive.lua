--- The keep-alive pools of the client side, behind `moonlet.net` (net.connect, conn:setkeepalive): per
--- destination key, the idle connections kept for reuse, and with `pool_size` the count of open ones and
--- the tasks waiting for room. Private to moonlet.net.
-- @module moonlet.net._keepalive
local host = require "moonlet._host"
local connection = require "moonlet._conn"
local call, OP = host.call, host.OP
local pairs = pairs

local PY <const>, CLOSED <const> = connection.slots.PY, connection.slots.CLOSED

local M = {}

local DEFAULT_IDLE_TIMEOUT, DEFAULT_IDLE_SIZE = 60, 30

local idle = {}      -- key -> stack of {conn =, expires =}
local open = {}      -- key -> open connections (idle or in use), when bounded by pool_size
local waiting = {}   -- key -> tasks waiting for a connection
local handoff = {}   -- key -> sync.queue passing a connection (or `true`: room to open one) to a waiter
local members = {}   -- key -> {conn = true}: the open connections counted in open[key]

-- A bounded pool loses one open connection: give its room to a waiter, or free it.
local function release_slot(key)
  if (waiting[key] or 0) > 0 then
    handoff[key]:put(true)
  else
    open[key] = open[key] - 1
  end
end
M.release_slot = release_slot

-- (conn:close of a counted connection gives its room back)
connection.release = function(key, conn)
  local set = members[key]
  if set then set[conn] = nil end
  release_slot(key)
end

-- Give back the room of counted connections the host has closed behind Lua's back (their owning task ended
-- or was cancelled, so no Lua code closed them).
local function prune(key)
  local set = members[key]
  if not set then return end
  for conn in pairs(set) do
    if not call(OP.OPEN, conn[PY]) then
      set[conn] = nil
      conn[CLOSED], conn._counted = true, false
      release_slot(key)
    end
  end
end

--- An idle pooled connection to `key` that is still usable, or nil (expired or broken ones are closed).
function M.take_idle(key)
  local stack = idle[key]
  local now = call(OP.MONOTONIC)
  while stack and #stack > 0 do
    local entry = stack[#stack]
    stack[#stack] = nil
    local conn = entry.conn
    if entry.expires > now and call(OP.REUSABLE, conn[PY]) then
      conn._idle = false
      call(OP.OWN, conn[PY]) -- it closes with the task that took it
      return conn
    end
    conn:close()
  end
  return nil
end

--- Room for one more open connection to `key` (at most `size`): true, a connection handed over by
--- setkeepalive while waiting, or nil once `wait` seconds passed.
---@async
function M.reserve(key, size, wait)
  if (open[key] or 0) >= size then prune(key) end
  if (open[key] or 0) < size then
    open[key] = (open[key] or 0) + 1
    return true
  end
  local q = handoff[key] -- full: wait for a connection to come back, or for room
  if q == nil then
    q = require("moonlet.sync").queue()
    handoff[key] = q
  end
  waiting[key] = (waiting[key] or 0) + 1
  local got = q:get(wait)
  waiting[key] = waiting[key] - 1
  if got == nil then got = q:get(0) end -- (handed over just as we timed out)
  if got ~= nil and got ~= true then call(OP.OWN, got[PY]) end
  return got
end

--- Count a new connection to `key` in its bounded pool.
function M.count(key, conn)
  local set = members[key]
  if set == nil then
    set = {}
    members[key] = set
  end
  set[conn] = true
end

--- Keep `conn` (checked reusable, its output sent) for its destination: handed to a waiting task, or idle for
--- at most `idle_timeout` seconds among at most `size` per destination (closed when there are more).
function M.keep(conn, idle_timeout, size)
  local key = conn._key
  idle_timeout = idle_timeout or DEFAULT_IDLE_TIMEOUT
  if conn._counted and (waiting[key] or 0) > 0 then -- somebody waits for this destination: hand it over
    call(OP.KEEP, conn[PY], idle_timeout) -- (ours no longer; the waiter takes it)
    handoff[key]:put(conn)
    return true
  end
  local stack = idle[key]
  if stack == nil then
    stack = {}
    idle[key] = stack
  end
  if #stack >= (size or DEFAULT_IDLE_SIZE) then
    conn:close()
    return true
  end
  conn._idle = true
  -- no task owns it now; the host closes it if the peer does, or once its idle time is up
  call(OP.KEEP, conn[PY], idle_timeout)
  stack[#stack + 1] = { conn = conn, expires = call(OP.MONOTONIC) + idle_timeout }
  return true
end

return M
