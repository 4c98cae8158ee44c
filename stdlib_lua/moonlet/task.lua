--- Light tasks: run functions concurrently in one Lua state.
--
-- A task is a coroutine run by the host, like a connection's handler. `spawn` returns at once; the task
-- starts on the next turn of the event loop. Its error never vanishes: `wait` returns it, and it is logged
-- when nobody is waiting. A task spawned (directly or not) by a connection's handler is cancelled when that
-- handler ends, unless it is detached. Cancellation is immediate and final: the task is never resumed again,
-- and whatever it waited on (a read, a sleep, a queue) forgets it.
--
--     local task = require "moonlet.task"
--     local a = task.spawn(fetch, "users")
--     local b = task.spawn(fetch, "orders")
--     local ok1, users = a:wait()
--     local ok2, orders = b:wait(2)     -- nil/false, "timeout" after 2 s
-- @module moonlet.task
local host = require "moonlet._host"
local finalized = require("moonlet._compat").finalized -- (setmetatable; on LuaJIT __gc needs a userdata)
local request, call, OP, where = host.request, host.call, host.OP, host.where
-- (a tail call: the error still points at the API's caller)
local function check_timeout(t, i, what) return host.check_seconds(t, i, what, true) end
local type, error, getmetatable = type, error, getmetatable
local pack, unpack = table.pack, table.unpack

local SPAWN, RESULT, WATCH, UNWATCH, PARK, JOIN = OP.SPAWN, OP.RESULT, OP.WATCH, OP.UNWATCH, OP.PARK, OP.JOIN
local RUNNING, DONE = 0, 1

local M = {}

---@class moonlet.Task
local Task = {}
Task.__index = Task
M.Task = Task

-- A task's table holds its host number (runtime/kernel/handles.py): when the table is collected, the host
-- may forget the task once it has ended. (A table the app makes around another's number gives back a hold
-- that is not its own: misuse, like any forged handle.)
local release = host.release
function Task.__gc(self)
  local py = rawget(self, "_py")
  if py ~= nil then release(py) end
end

local function is_task(t)
  return type(t) == "table" and getmetatable(t) == Task
end

--- Start `fn(...)` as a new task. Returns its handle at once; the task starts on the next loop turn.
---@param fn async fun(...): ...
---@return moonlet.Task
function M.spawn(fn, ...)
  if type(fn) ~= "function" then
    host.argerror(1, "spawn", "function", fn)
  end
  return finalized({ _py = call(SPAWN, host.job(pack(fn, ...)), where(2)) }, Task)
end

--- The running task (a connection's handler and the main chunk are tasks too).
--- Example: `local me = task.current()`
---@return moonlet.Task
function M.current()
  return finalized({ _py = call(OP.CURRENT, true) }, Task)
end

-- A task method called on something that is not a task (`t.wait(x)` for `t:wait()`), in Lua's words.
local function self_py(self, fn)
  local py = type(self) == "table" and self._py or nil
  if py == nil then
    error(("calling '%s' on bad self (task expected, got %s)"):format(fn, type(self)), 3)
  end
  return py
end

-- done?, and if so true, results... or false, err
local function outcome(py)
  local status, value = call(RESULT, py)
  if status == RUNNING then return false end
  if status == DONE then return true, unpack(value, 1, value.n) end
  return true, false, value
end

--- Wait until the task ends. Returns `true, results...` if it returned, `false, err` if it failed or was
--- cancelled (err starts with "cancelled"), or `nil, "timeout"` if it is still running after `timeout`
--- seconds (it keeps running).
--- Example: `local ok, result = t:wait(5)`
---@async
---@param timeout? number
---@return boolean? ok
---@return any ...
function Task:wait(timeout)
  local py = self_py(self, "wait")
  timeout = check_timeout(timeout, 1, "wait")
  local status, value = request(JOIN, py, timeout)
  if status == true then status, value = call(RESULT, py) end -- woken: it has ended
  if status == DONE then return unpack(value, 1, value.n) end
  if status == nil then
    call(UNWATCH, py)
    return nil, value
  end
  return false, value
end

--- End the task now. Returns true, or nil and an error for the running task itself (return instead).
--- Cancelling a task that has ended does nothing.
--- Example: `t:cancel()`
---@return true? ok
---@return string? err
function Task:cancel()
  return call(OP.CANCEL, self_py(self, "cancel"))
end

--- Let the task outlive the connection whose handler started it.
--- Example: `spawn(audit, user, action):detach()`
---@return moonlet.Task self
function Task:detach()
  call(OP.DETACH, self_py(self, "detach"))
  return self
end

--- "running", "done" (returned) or "failed" (an error, or cancelled).
--- Example: `if t:status() == "running" then t:cancel() end`
---@return string
function Task:status()
  local status = call(RESULT, self_py(self, "status"))
  if status == RUNNING then return "running" elseif status == DONE then return "done" end
  return "failed"
end

local function check_tasks(tasks, what)
  if type(tasks) ~= "table" then host.argerror(1, what, "array of tasks", tasks, nil, 1) end
  for i = 1, #tasks do
    if not is_task(tasks[i]) then
      host.argerror(1, what, "array of tasks (element " .. i .. ")", tasks[i], nil, 1)
    end
  end
end

local function unwatch_all(tasks)
  for i = 1, #tasks do call(UNWATCH, tasks[i]._py) end
end

--- Wait for the first of `tasks` to end (like OpenResty's ngx.thread.wait). Returns that task, then what
--- its `wait` returns; or nil, "timeout". The others keep running.
---@async
---@param tasks moonlet.Task[]
---@param timeout? number
---@return moonlet.Task? task
---@return any ...
function M.wait_any(tasks, timeout)
  check_tasks(tasks, "wait_any")
  timeout = check_timeout(timeout, 2, "wait_any")
  if #tasks == 0 then host.argerror(1, "wait_any", "a non-empty array of tasks", tasks) end
  while true do
    for i = 1, #tasks do
      local r = pack(outcome(tasks[i]._py))
      if r[1] then return tasks[i], unpack(r, 2, r.n) end
    end
    for i = 1, #tasks do call(WATCH, tasks[i]._py) end
    local woke, err = request(PARK, timeout)
    unwatch_all(tasks)
    if not woke then
      for i = 1, #tasks do
        local r = pack(outcome(tasks[i]._py))
        if r[1] then return tasks[i], unpack(r, 2, r.n) end
      end
      return nil, err
    end
  end
end

--- Wait for every one of `tasks`. Returns true and an array whose element i is `{ok, results...}` (as
--- packed by table.pack) for tasks[i]; or nil, "timeout" if some are still running after `timeout` seconds.
---@async
---@param tasks moonlet.Task[]
---@param timeout? number
---@return true? ok
---@return table[]|string results_or_err
function M.wait_all(tasks, timeout)
  check_tasks(tasks, "wait_all")
  timeout = check_timeout(timeout, 2, "wait_all")
  local deadline = timeout and (call(OP.MONOTONIC) + timeout)
  local results = {}
  for i = 1, #tasks do
    local left = deadline and deadline - call(OP.MONOTONIC)
    if left and left < 0 then left = 0 end
    local r = pack(tasks[i]:wait(left))
    if r[1] == nil then return nil, r[2] end
    results[i] = r
  end
  return true, results
end

--- Let every other ready task run, then continue (same as sleep(0)).
---@async
function M.yield()
  return request(OP.SLEEP, 0)
end

return M
