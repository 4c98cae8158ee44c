--- Thread pools: run CPU-heavy Lua, or a blocking Python host function, off the event loop.
--
-- The calling coroutine waits; every other connection keeps being served. A Lua job runs in a pool thread's
-- own Lua state, so it sees none of the app's globals or upvalues: name a module (found like the app's own
-- `require`) and a function in it. Only plain values cross: nil, booleans, numbers, strings, tables of these.
--
--     -- lib/heavy.lua:  local M = {} function M.primes(n) ... return count end return M
--     local pool = require "moonlet.pool"
--     local count, err = pool.run("heavy", "primes", 1e6)        -- in the "cpu" pool
--     local rows = pool.named("io", { timeout = 2 }):call("fetch_report", 42)   -- a Python host function
--
-- Failures return nil, err: "busy" (the pool's queue is full), "timeout" (the job ran past its timeout;
-- a Lua job is stopped, a Python one runs on but its result is dropped), or the job's error with its traceback.
-- @module moonlet.pool
local host = require "moonlet._host"
local request, OP = host.request, host.OP
local type, error, tostring, setmetatable, pack = type, error, tostring, setmetatable, table.pack

local M = {}

---@class moonlet.Pool
local Pool = {}
Pool.__index = Pool

local function check_name(v, i, what)
  if type(v) ~= "string" or v == "" then
    error("bad argument #" .. i .. " to '" .. what .. "' (non-empty string expected)", 3)
  end
end

--- A handle on pool `name` ("cpu" and "io" by default; more with `moonlet run --pool NAME=SIZE`), with
--- options: `timeout` (seconds per job; the pool's default is 60).
---@param name string
---@param opts? {timeout: number?}
---@return moonlet.Pool
function M.named(name, opts)
  check_name(name, 1, "named")
  local timeout = opts and opts.timeout
  if timeout ~= nil and (type(timeout) ~= "number" or timeout <= 0) then
    error("bad option 'timeout' (seconds > 0 expected)", 2)
  end
  return setmetatable({ _where = name .. "\0" .. (timeout and tostring(timeout) or "") }, Pool)
end

--- Run `module.fn(...)` in a thread of this pool; returns what it returns, or nil, err.
---@async
function Pool:run(module, fn, ...)
  check_name(module, 1, "run")
  check_name(fn, 2, "run")
  return request(OP.POOL_RUN, self._where, module .. "\0" .. fn, pack(...))
end

--- Call the Python host function `name(...)` in a thread of this pool; returns its results, or nil, err.
---@async
function Pool:call(name, ...)
  check_name(name, 1, "call")
  return request(OP.POOL_CALL, self._where, name, pack(...))
end

local cpu = setmetatable({ _where = "" }, Pool)

--- Run `module.fn(...)` in the "cpu" pool.
---@async
function M.run(module, fn, ...)
  check_name(module, 1, "run")
  check_name(fn, 2, "run")
  return request(OP.POOL_RUN, cpu._where, module .. "\0" .. fn, pack(...))
end

--- Call Python host function `name(...)` in the pool it was registered for ("io" by default).
---@async
function M.call(name, ...)
  check_name(name, 1, "call")
  return request(OP.POOL_CALL, cpu._where, name, pack(...))
end

return M
