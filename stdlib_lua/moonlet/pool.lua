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
local finalized = require("moonlet._compat").finalized -- (setmetatable; on LuaJIT __gc needs a userdata)
-- (a tail call: the error still points at the API's caller)
local function check_timeout(t, i, what) return host.check_seconds(t, i, what, true) end
local request, call, OP, argerror = host.request, host.call, host.OP, host.argerror
local math_type = math.type
local type, error, setmetatable, pack, unpack = type, error, setmetatable, table.pack,
  table.unpack

local M = {}

---@class moonlet.Pool
local Pool = {}
Pool.__index = Pool

local function check_name(v, i, what)
  if type(v) ~= "string" or v == "" then
    argerror(i, what, "non-empty string", v, nil, 1)
  end
end

local NAMED_OPTIONS = { timeout = true, buffer = true }

--- A handle on pool `name` ("cpu" and "io" by default; more with `moonlet run --pool NAME=SIZE`), with
--- options: `timeout` (seconds per job; the pool's default is 60) and `buffer` (bytes queued each way on a
--- spawned job's channel before the sender waits, 256 KiB: strings count their length, every other value
--- and table entry 16 bytes; one bigger value passes alone).
--- Example: `local cpu = pool.named("cpu", { timeout = 5 })`
---@param name string
---@param opts? {timeout: number?, buffer: integer?}
---@return moonlet.Pool
function M.named(name, opts)
  check_name(name, 1, "named")
  if opts ~= nil then
    if type(opts) ~= "table" then argerror(2, "named", "table", opts) end
    host.check_options(opts, 2, "named", NAMED_OPTIONS)
  end
  local timeout = opts and opts.timeout
  if timeout ~= nil and (type(timeout) ~= "number" or timeout <= 0) then
    error("bad option 'timeout' (seconds > 0 expected)", 2)
  end
  local buffer = opts and opts.buffer
  if buffer ~= nil and (math_type(buffer) ~= "integer" or buffer <= 0) then
    error("bad option 'buffer' (bytes > 0 expected)", 2)
  end
  return setmetatable({ _where = { pool = name, timeout = timeout, buffer = buffer } }, Pool)
end

--- Run `module.fn(...)` in a thread of this pool; returns what it returns, or nil, err.
--- Example: `local thumb, err = cpu:run("images", "thumbnail", data, 128)`
---@async
function Pool:run(module, fn, ...)
  check_name(module, 1, "run")
  check_name(fn, 2, "run")
  return request(OP.POOL_RUN, self._where, { module = module, fn = fn }, pack(...))
end

--- Call the Python host function `name(...)` in a thread of this pool; returns its results, or nil, err.
--- Example: `local digest, err = cpu:call("sha256", data)`
---@async
function Pool:call(name, ...)
  check_name(name, 1, "call")
  return request(OP.POOL_CALL, self._where, name, pack(...))
end

---------------------------------------------------------------------------------------------------------
-- spawned jobs: a job that runs beside the task that started it, with a channel between them

---@class moonlet.Job
local Job = {}
Job.__index = Job
-- A job's table holds the host number of its channel (runtime/kernel/handles.py), given back when collected.
function Job.__gc(self)
  local py = rawget(self, "_py")
  if py ~= nil then host.release(py) end
end

local function spawn(where, target, ...)
  local py, err = call(OP.POOL_SPAWN, where, target, pack(...))
  if not py then return nil, err end
  return finalized({ _py = py }, Job)
end

--- The next value the job sent (`ch:put`). Waits for one, at most `timeout` seconds (then nil, "timeout").
--- Returns nil once the job has returned or closed its side and every value it sent was taken; nil, err if
--- the job failed (err: its error and traceback).
--- Example: `local row, err = job:get(5)`
---@async
---@param timeout? number
---@return any value
---@return string? err
function Job:get(timeout)
  check_timeout(timeout, 1, "get")
  local ok, value = request(OP.CHAN_GET, self._py, timeout)
  if ok == true then return value end
  return nil, value
end

--- Send `value` (a plain value, not nil) to the job (`ch:get` there); waits while the channel is full.
--- Returns true, or nil, "closed" (the job returned or closed its side).
--- Example: `job:put({ op = "next" })`
---@async
---@param value any
---@return true? ok
---@return string? err
function Job:put(value)
  if value == nil then argerror(1, "put", "a value", value) end
  return request(OP.CHAN_PUT, self._py, value)
end

--- Close the channel from this side: the job's `ch:get` gives nil once it has taken what was sent, its
--- `ch:put` gives nil, "closed".
--- Example: `job:close()`
function Job:close()
  call(OP.CHAN_CLOSE, self._py)
end

--- Wait until the job has returned (at most `timeout` seconds: then nil, "timeout"): its results, or nil,
--- err if it failed.
--- Example: `local total, err = job:wait(60)`
---@async
---@param timeout? number
---@return any ...
function Job:wait(timeout)
  check_timeout(timeout, 1, "wait")
  local r = pack(request(OP.CHAN_WAIT, self._py, timeout))
  if r[1] == true then return unpack(r, 2, r.n) end
  return nil, r[2]
end

--- Start `module.fn(ch, ...)` in a thread of this pool, beside the calling task (which goes on): `ch` is the
--- job's end of a channel to the task. Returns a job handle (see Job), or nil, err ("busy", ...). The job is
--- the task's: when the task ends, the job is stopped at its next channel operation.
--- Example: `local job = assert(cpu:spawn("report", "rows", day))`
---@param module string
---@param fn string
---@return moonlet.Job? job
---@return string? err
function Pool:spawn(module, fn, ...)
  check_name(module, 1, "spawn")
  check_name(fn, 2, "spawn")
  return spawn(self._where, { module = module, fn = fn }, ...)
end

--- Start the Python host function `name(...)` in a thread of this pool: if it is a generator, each value it
--- yields is sent on the channel (job:get), waiting while the channel is full; job:wait gives what it
--- returns.
--- Example: `local job = io:spawn_call("export_rows", "sales")`
---@param name string
---@return moonlet.Job? job
---@return string? err
function Pool:spawn_call(name, ...)
  check_name(name, 1, "spawn_call")
  return spawn(self._where, { host = name }, ...)
end

local cpu = setmetatable({ _where = {} }, Pool) -- (no pool named: "cpu", or a host function's own)

--- Pool:spawn on the "cpu" pool.
---@param module string
---@param fn string
---@return moonlet.Job? job
---@return string? err
function M.spawn(module, fn, ...)
  check_name(module, 1, "spawn")
  check_name(fn, 2, "spawn")
  return spawn(cpu._where, { module = module, fn = fn }, ...)
end

--- Pool:spawn_call in the pool the host function was registered for ("io" by default).
--- Example: `local job = assert(pool.spawn_call("export_rows", "sales"))`
---@param name string
---@return moonlet.Job? job
---@return string? err
function M.spawn_call(name, ...)
  check_name(name, 1, "spawn_call")
  return spawn(cpu._where, { host = name }, ...)
end

--- Run `module.fn(...)` in the "cpu" pool.
---@async
function M.run(module, fn, ...)
  check_name(module, 1, "run")
  check_name(fn, 2, "run")
  return request(OP.POOL_RUN, cpu._where, { module = module, fn = fn }, pack(...))
end

--- Call Python host function `name(...)` in the pool it was registered for ("io" by default).
---@async
function M.call(name, ...)
  check_name(name, 1, "call")
  return request(OP.POOL_CALL, cpu._where, name, pack(...))
end

return M
