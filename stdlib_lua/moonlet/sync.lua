--- Synchronisation between tasks: queues, semaphores (and locks), events.
--
-- All waits take an optional timeout in seconds and then return nil, "timeout". Waiters are served first
-- come, first served. A task cancelled while it waits is simply skipped: nothing handed to it is lost.
--
--     local sync = require "moonlet.sync"
--     local jobs = sync.queue(100)              -- at most 100 items; put waits when full
--     spawn(function() while true do handle(jobs:get()) end end)
--     jobs:put({ id = 1 })
--
--     local lock = sync.semaphore(1)            -- share one connection between tasks
--     lock:with(function() conn:writen(request); reply = conn:readline() end)
-- @module moonlet.sync
local host = require "moonlet._host"
-- (a tail call: the error still points at the API's caller)
local function check_timeout(t, i, what) return host.check_seconds(t, i, what, true) end
local request, call, OP, argerror = host.request, host.call, host.OP, host.argerror
local type, error, setmetatable, pcall = type, error, setmetatable, pcall
local unpack, pack = table.unpack, table.pack
local floor, huge = math.floor, math.huge

local PARK, UNPARK, CURRENT = OP.PARK, OP.UNPARK, OP.CURRENT

local M = {}

-- A FIFO of waiter records {py = task, value = ..., closed = bool, dead = bool}.
local function fifo() return { head = 1, tail = 0 } end

local function push(list, x)
  local t = list.tail + 1
  list.tail = t
  list[t] = x
end

local function shift(list)
  local h = list.head
  if h > list.tail then return nil end
  local x = list[h]
  list[h] = nil
  list.head = h + 1
  return x
end

-- Wake the first waiter that can still be woken (cancelled ones are dropped); returns its record.
local function wake_one(list)
  while true do
    local w = shift(list)
    if w == nil then return nil end
    if not w.dead and call(UNPARK, w.py, true) then return w end
  end
end

local function wake_all(list, closed)
  while true do
    local w = shift(list)
    if w == nil then return end
    if not w.dead then
      w.closed = closed
      call(UNPARK, w.py, true)
    end
  end
end

-- Park the running task in `list` until woken; returns its record, or nil, "timeout".
local function park(list, timeout, value)
  local rec = { py = call(CURRENT), value = value }
  push(list, rec)
  local woke, err = request(PARK, timeout)
  if not woke then
    rec.dead = true
    return nil, err
  end
  return rec
end

---------------------------------------------------------------------------------------------------------
---@class moonlet.Queue
local Queue = {}
Queue.__index = Queue

--- A first-in first-out queue holding at most `maxsize` items (default: no limit). `nil` cannot be queued.
---@param maxsize? integer
---@return moonlet.Queue
function M.queue(maxsize)
  if maxsize ~= nil
    and (type(maxsize) ~= "number" or maxsize < 1 or (maxsize ~= huge and floor(maxsize) ~= maxsize)) then
    argerror(1, "queue", "integer >= 1 or nil", maxsize)
  end
  return setmetatable({ _items = fifo(), _n = 0, _max = maxsize or huge, _getters = fifo(),
    _putters = fifo(), _closed = false }, Queue)
end

--- Add `v`; waits while the queue is full. Returns true, or nil, "timeout" / "closed".
--- Example: `local ok, err = jobs:put(line, 1)`
---@async
---@param v any
---@param timeout? number
---@return true? ok
---@return string? err
function Queue:put(v, timeout)
  if v == nil then argerror(1, "put", "a value (nil cannot be queued)", v) end
  timeout = check_timeout(timeout, 2, "put")
  if self._closed then return nil, "closed" end
  local getter = wake_one(self._getters)
  if getter then -- somebody is waiting: hand it over directly
    getter.value = v
    return true
  end
  if self._n < self._max then
    push(self._items, v)
    self._n = self._n + 1
    return true
  end
  local rec, err = park(self._putters, timeout, v)
  if not rec then return nil, err end
  if rec.closed then return nil, "closed" end
  return true -- a getter moved our value into the queue
end

--- Take the oldest item; waits while the queue is empty. Returns the item, or nil, "timeout" / "closed"
--- ("closed" only once a closed queue is empty).
--- Example: `local line, err = jobs:get(5)`
---@async
---@param timeout? number
---@return any item
---@return string? err
function Queue:get(timeout)
  timeout = check_timeout(timeout, 1, "get")
  if self._n > 0 then
    local v = shift(self._items)
    self._n = self._n - 1
    local putter = wake_one(self._putters)
    if putter then
      push(self._items, putter.value)
      self._n = self._n + 1
    end
    return v
  end
  if self._closed then return nil, "closed" end
  local rec, err = park(self._getters, timeout)
  if not rec then return nil, err end
  if rec.closed then return nil, "closed" end
  return rec.value
end

--- Close the queue: puts fail with "closed", gets drain what is left and then fail. Waiters wake at once.
--- Example: `jobs:close()`
function Queue:close()
  self._closed = true
  wake_all(self._getters, true)
  wake_all(self._putters, true)
end

--- How many items are queued.
---@return integer
function Queue:len()
  return self._n
end

---------------------------------------------------------------------------------------------------------
---@class moonlet.Semaphore
local Semaphore = {}
Semaphore.__index = Semaphore

--- A semaphore holding `n` permits (default 1: a lock).
---@param n? integer
---@return moonlet.Semaphore
function M.semaphore(n)
  n = n or 1
  if type(n) ~= "number" or n < 0 or floor(n) ~= n then
    argerror(1, "semaphore", "integer >= 0", n)
  end
  return setmetatable({ _permits = n, _waiters = fifo() }, Semaphore)
end

--- Take a permit, waiting for one if none is free. Returns true, or nil, "timeout".
--- Example: `local ok, err = slots:acquire(2)`
---@async
---@param timeout? number
---@return true? ok
---@return string? err
function Semaphore:acquire(timeout)
  timeout = check_timeout(timeout, 1, "acquire")
  local waiters = self._waiters
  if self._permits > 0 and waiters.head > waiters.tail then
    self._permits = self._permits - 1
    return true
  end
  local rec, err = park(waiters, timeout)
  if not rec then return nil, err end
  return true -- release handed its permit to us
end

--- Give a permit back (to the first waiter, if any).
--- Example: `slots:release()`
function Semaphore:release()
  if not wake_one(self._waiters) then self._permits = self._permits + 1 end
end

--- Permits free right now.
--- Example: `log.info("free slots: " .. slots:available())`
---@return integer
function Semaphore:available()
  return self._permits
end

--- Run `fn(...)` holding a permit; the permit is given back even if fn raises (the error is re-raised).
---@async
---@param fn async fun(...): ...
---@return any ...
function Semaphore:with(fn, ...)
  self:acquire()
  local r = pack(pcall(fn, ...))
  self:release()
  if not r[1] then error(r[2], 0) end
  return unpack(r, 2, r.n)
end

---------------------------------------------------------------------------------------------------------
---@class moonlet.Event
local Event = {}
Event.__index = Event

--- An event: tasks wait until it is set.
--- Example: `local ready = sync.event()`
---@return moonlet.Event
function M.event()
  return setmetatable({ _set = false, _waiters = fifo() }, Event)
end

--- Set the event and wake every waiter; later waits return at once until `clear`.
--- Example: `ready:set()`
function Event:set()
  self._set = true
  wake_all(self._waiters, false)
end

--- Unset the event.
--- Example: `ready:clear()`
function Event:clear()
  self._set = false
end

--- Whether the event is set.
--- Example: `if not ready:is_set() then ready:wait(5) end`
---@return boolean
function Event:is_set()
  return self._set
end

--- Wait until the event is set. Returns true, or nil, "timeout".
--- Example: `local ok, err = ready:wait(10)`
---@async
---@param timeout? number
---@return true? ok
---@return string? err
function Event:wait(timeout)
  timeout = check_timeout(timeout, 1, "wait")
  if self._set then return true end
  local rec, err = park(self._waiters, timeout)
  if not rec then return nil, err end
  return true
end

return M
