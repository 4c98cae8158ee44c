-- Builds the two Lua environments moonlet runs code in, then hands the host what it needs.
--
-- Run once per Lua state by runtime/host.py, before any app code. It captures the privileged functions
-- (io.open to read modules, debug for strict globals and tracebacks, the raw coroutine.yield used by the
-- door) into locals here, so that no app code can reach them afterwards:
--
--   * the stdlib environment: the standard Lua globals and a `require` that may load the private modules
--     (`moonlet._host`, the one door to the host);
--   * the app environment: a safe subset (no io, debug, os.execute, dofile, loadfile, binary chunks, C
--     modules), strict globals, and a `require` that searches the app's directory, its lib/ and the stdlib.
--
-- `require` is written in Lua, so a module's top level may yield (connect, query, sleep) like any code.

local host_call, OP, limits, stdlib_dir, app_path, app_args = ...

local G = _G
local io_open, load, setmetatable, rawset = io.open, load, setmetatable, rawset

local function read_file(path)
  local f = io_open(path, "rb")
  if not f then return nil end
  local src = f:read("*a")
  f:close()
  return src
end

-- LuaJIT: what it lacks of Lua 5.4, filled in before anything copies the globals (moonlet._compat)
local compat_path = stdlib_dir .. "/moonlet/_compat.lua"
local compat = assert(load(assert(read_file(compat_path)), "@" .. compat_path, "t", G))(G)
local LUAJIT = compat.engine == "luajit"
-- A pool thread's state (no host_call) stops a job at its deadline with a count hook, which LuaJIT never
-- runs inside a loop it has compiled: there, pool jobs run interpreted (README: Engines).
if LUAJIT and not host_call then G.jit.off() end
local error, type, pairs, tostring, select = error, type, pairs, tostring, select
local getinfo, traceback = debug.getinfo, debug.traceback
local raw_yield = coroutine.yield
local gsub, find, concat = string.gsub, string.find, table.concat

setmetatable(OP, { __index = function(_, name)
  error("unknown host op '" .. tostring(name) .. "' (see runtime/kernel/ops.py)", 2)
end })

local function dirname(path)
  local dir = path:match("^(.*)/[^/]*$")
  if dir == nil then return "." elseif dir == "" then return "/" end
  return dir
end

local app_dir = app_path and dirname(app_path) or "."

-- strict globals: reading an undeclared global is an error; so is creating one outside a main chunk.
local function strict(env)
  return setmetatable(env, {
    __index = function(_, name)
      error("undefined global '" .. tostring(name) .. "'", 2)
    end,
    __newindex = function(t, name, value)
      local info = getinfo(2, "S")
      if info and info.what ~= "main" and info.what ~= "C" then
        error("assignment to undeclared global '" .. tostring(name)
          .. "' (declare it at the top level of a file, or make it local)", 2)
      end
      rawset(t, name, value)
    end,
  })
end

local SAFE = {
  "assert", "error", "ipairs", "next", "pairs", "pcall", "xpcall", "rawequal", "rawget", "rawlen", "rawset",
  "select", "setmetatable", "getmetatable", "tonumber", "tostring", "type", "_VERSION", "collectgarbage",
  "string", "table", "math", "utf8", "coroutine",
}

-- Lua's print, to standard output (target nil) or to a console session.
local function printer(target)
  return function(...)
    local n = select("#", ...)
    local parts = {}
    for i = 1, n do parts[i] = tostring((select(i, ...))) end
    host_call(OP.PRINT, concat(parts, "\t") .. "\n", target)
  end
end
local print = printer(nil)

local function base_env()
  local env = {}
  for _, name in pairs(SAFE) do env[name] = G[name] end
  env.os = { time = os.time, clock = os.clock, date = os.date, difftime = os.difftime, getenv = os.getenv }
  env.print = print
  env._G = env
  return env
end

local stdlib_env = base_env()
local app_env = base_env()

-- load text only, into the app environment unless told otherwise
app_env.load = function(chunk, name, mode, env)
  if mode ~= nil and mode ~= "t" then error("moonlet loads text chunks only (mode 't')", 2) end
  return load(chunk, name, "t", env == nil and app_env or env)
end

---------------------------------------------------------------------------------------------------------
-- modules
local loaded = { ["moonlet._compat"] = compat } -- module name -> value
local LOADING = {}         -- marker while a module's top level runs

local function find_module(name, templates)
  local rel = gsub(name, "%.", "/")
  local tried = {}
  for i = 1, #templates do
    local path = gsub(templates[i], "%?", rel)
    local src = read_file(path)
    if src then return path, src end
    tried[#tried + 1] = "\n\tno file '" .. path .. "'"
  end
  return nil, concat(tried)
end

local function is_private(name)
  return find(name, "^moonlet%._") ~= nil or find(name, "^moonlet%.[^%.]*%._") ~= nil
end

local STDLIB_PATH = { stdlib_dir .. "/?.lua", stdlib_dir .. "/?/init.lua" }
-- the app's directory and its lib/, then limits.module_dirs: --path directories, the stdlib, Debian's lua-*
local APP_PATH = {
  app_dir .. "/?.lua", app_dir .. "/?/init.lua", app_dir .. "/lib/?.lua", app_dir .. "/lib/?/init.lua",
}
for _, dir in ipairs(limits.module_dirs or { stdlib_dir }) do
  APP_PATH[#APP_PATH + 1] = dir .. "/?.lua"
  APP_PATH[#APP_PATH + 1] = dir .. "/?/init.lua"
end

-- Source that says it needs Lua 5.4 in its first comment lines: `-- moonlet: engine lua54`.
local function needs_lua54(src)
  for line in src:gmatch("[^\n]*") do
    if not find(line, "^%s*%-%-") and not find(line, "^#!") and find(line, "%S") then return false end
    if find(line, "^%s*%-%-+%s*moonlet:%s*engine%s+lua54") then return true end
  end
  return false
end

-- Compile a module or the main chunk for this engine. On LuaJIT the stdlib's `<const>` locals lose their
-- attribute (a compile-time promise only), and code that needs Lua 5.4 is refused with a reason: one
-- that says so, or one that does not parse where Lua 5.4 syntax would explain it.
local function compile(src, path, env, std)
  if not LUAJIT then return load(src, "@" .. path, "t", env) end
  if std then src = gsub(src, "<const>", "") end
  if needs_lua54(src) then
    return nil, path .. " needs Lua 5.4 (its first lines say `moonlet: engine lua54`): run it with --engine lua54"
  end
  local chunk, err = load(src, "@" .. path, "t", env)
  if not chunk and find(err, "near '[/<>~&|]") then
    err = err .. " (LuaJIT parses Lua 5.1 syntax: `//`, bit operators, `<const>` and `<close>` need --engine "
      .. "lua54)"
  end
  return chunk, err
end

local function load_module(name, templates, env)
  local value = loaded[name]
  if value == LOADING then
    error("module '" .. name .. "' is required again while its own top level runs (a require loop)", 3)
  elseif value ~= nil then
    return value
  end
  local std = find(name, "^moonlet%.") ~= nil
  local path, src = find_module(name, std and STDLIB_PATH or templates)
  if not path then
    error("module '" .. name .. "' not found:" .. src, 3)
  end
  local chunk, err = compile(src, path, std and stdlib_env or env, std)
  if not chunk then error("error loading module '" .. name .. "': " .. err, 3) end
  loaded[name] = LOADING
  local ok, result = pcall(chunk, name, path)
  if not ok then
    loaded[name] = nil
    error(result, 0)
  end
  if result == nil then result = true end
  loaded[name] = result
  return result
end

-- Module names are dot-separated words (letters, digits, '_', '-'): no NUL, no path separator, no "..",
-- so a name can only ever mean NAME.lua (or NAME/init.lua) on the module path.
local MAX_MODULE_NAME = 200
local function check_module_name(name)
  if type(name) ~= "string" then error("bad argument #1 to 'require' (string expected)", 3) end
  if #name > MAX_MODULE_NAME or not find(name, "^[%w_%-]+$") and not find(name, "^[%w_%-][%w_%-%.]*[%w_%-]$")
    or find(name, "..", 1, true) then
    error("bad argument #1 to 'require' (a module name is dot-separated words of letters, digits, '_' and "
      .. "'-', at most " .. MAX_MODULE_NAME .. " bytes)", 3)
  end
end

stdlib_env.require = function(name)
  check_module_name(name)
  return load_module(name, STDLIB_PATH, stdlib_env)
end

-- `require "string"` and the other standard libraries the sandbox keeps give what the globals hold (pure-Lua
-- modules written for plain Lua require them)
local STANDARD_LIBRARIES = { string = true, table = true, math = true, utf8 = true, coroutine = true }

app_env.require = function(name)
  check_module_name(name)
  if STANDARD_LIBRARIES[name] then return rawget(app_env, name) end
  if is_private(name) then
    error("module '" .. name .. "' is private to the moonlet standard library", 2)
  end
  return load_module(name, APP_PATH, app_env)
end

-- The door is built here, from the privileged values, and registered before anything can require it.
-- A pool thread's state (no host_call) has no door: it runs plain Lua jobs and cannot wait on the host.
local host = nil
if host_call then
  local path = stdlib_dir .. "/moonlet/_host.lua"
  local chunk = assert(load(assert(read_file(path), "cannot read " .. path), "@" .. path, "t", stdlib_env))
  host = chunk({
    call = host_call, OP = OP, yield = raw_yield, limits = limits, traceback = traceback,
    create = coroutine.create, resume = coroutine.resume, isyieldable = coroutine.isyieldable,
    running = coroutine.running, stdlib_dir = stdlib_dir,
    coroutine = coroutine, sethook = debug.sethook, gethook = debug.gethook, getinfo = getinfo,
    setlocal = debug.setlocal,
    engine = compat.engine,
  })
  loaded["moonlet._host"] = host
  -- The few Python objects Lua holds (the door's functions, a console session; host handles are numbers:
  -- runtime/kernel/handles.py) share lupa's one metatable: app code may neither read nor change it
  -- (replacing its __gc or __tostring would reach every one of them).
  local handles = debug.getmetatable(host_call)
  if handles then handles.__metatable = "protected" end
  -- both environments see the coroutine library that lets host requests through app coroutines
  stdlib_env.coroutine = host.coroutine
  app_env.coroutine = host.coroutine
else
  loaded["moonlet._host"] = setmetatable({}, { __index = function()
    error("this moonlet module needs the server's event loop, which a pool job does not have", 2)
  end })
end

strict(stdlib_env)

-- common calls as globals of the app
if host then
  local time = stdlib_env.require("moonlet.time")
  rawset(app_env, "sleep", time.sleep)
  rawset(app_env, "spawn", stdlib_env.require("moonlet.task").spawn)
end

local args = { [0] = app_path }
if app_args then for i = 1, #app_args do args[i] = app_args[i] end end
rawset(app_env, "arg", args)
strict(app_env)

local M = {}
if host then
  M.body, M.task_body, M.misuse, M.flush_released = host.body, host.task_body, host.misuse, host.flush_released
  M.ended = host.ended
end

--- The console's \gc: two full collections (the second frees what the first's finalizers released), made in
--- steps for at most `budget` seconds of the process's CPU time; true if they completed, false if the
--- budget ran out first (the collector goes on incrementally as the app allocates). The host calls this as a
--- Lua function, so Python's lock is released meanwhile and its watchdog (--block-limit) can end a worker
--- whose finalizer never returns, which a collection started from Python would hang for good. The first
--- round ends the cycle the incremental collector may be in the middle of (what it had marked survives it):
--- a full collection is one that starts afresh.
function M.collect(budget)
  local clock, step = os.clock, collectgarbage
  local start = clock()
  for _ = 1, 3 do
    repeat
      if clock() - start > budget then return false end
    until step("step", 256)
  end
  return true
end

--- A stdlib module, for the host (the load generator's engine).
function M.stdlib(name)
  return stdlib_env.require(name)
end

-- compile the app's main chunk; the host runs it as the first task
function M.load_main()
  local src = read_file(app_path)
  if not src then return nil, "cannot read " .. app_path end
  local main, err = compile(src, app_path, app_env, false)
  return main, err  -- always two values: lupa hands Python a tuple
end

---------------------------------------------------------------------------------------------------------
-- the console (runtime/services/console.py)

--- A session's environment: its own globals, reading through to the app's.
--- A console session's environment: its own variables (`x = 1` stays in the session), reading through to
--- the app's globals (`_G` is the app's: `_G.x = 1` sets one), and a `print` whose output goes back to the
--- session (`session` is the host's handle for it).
function M.console_env(session)
  local env = setmetatable({}, { __index = function(_, name) return rawget(app_env, name) end })
  env.print = printer(session)
  return env
end

--- What a console chunk returned (`packed`: true, values... as table.pack gives them), each value as Lua
--- source text (raw access only: no app code runs; see moonlet._show).
function M.console_show(packed)
  local show, out = stdlib_env.require("moonlet._show").show, {}
  for i = 2, packed.n do out[i - 1] = show(packed[i]) end
  return out
end

--- Compile `code` typed at the console: an expression prints its value (`1 + 1`), a statement runs. Returns
--- a job id for the host to run as a task; or nil, err, incomplete (true when more lines may complete it).
function M.console_compile(env, code)
  local fn = load("return " .. code, "=console", "t", env)
  local err
  if not fn then fn, err = load(code, "=console", "t", env) end
  if not fn then return nil, err, (err:find("<eof>'?$") ~= nil) end -- (LuaJIT quotes it: near '<eof>')
  return host.job(table.pack(fn))
end

--- Names for completing `text` (a dotted or colon path) in a session: globals, module fields, methods.
--- Runs no app code: fields are read raw (an `__index` that spins would otherwise hang the server here,
--- on the main Lua thread, outside any task's stall budget).
function M.console_complete(env, text)
  local base, sep, prefix = text:match("^(.-)([%.:]?)([%w_]*)$")
  local scope
  if sep == "" then
    scope = { env, app_env }
  else
    local value = env
    for part in base:gmatch("[^%.:]+") do
      if type(value) ~= "table" then return {} end
      local raw = rawget(value, part)
      if raw == nil and value == env then -- (a session reads through to the app's globals)
        raw = rawget(app_env, part)
      elseif raw == nil then -- (a module's functions may live in its metatable's __index table)
        local mt = getmetatable(value)
        local index = type(mt) == "table" and rawget(mt, "__index")
        raw = type(index) == "table" and rawget(index, part) or nil
      end
      value = raw
    end
    if type(value) ~= "table" then return {} end
    scope = { value }
    local mt = getmetatable(value)
    if type(mt) == "table" and type(rawget(mt, "__index")) == "table" then scope[2] = rawget(mt, "__index") end
  end
  local names, seen = {}, {}
  for _, t in ipairs(scope) do
    for k, v in next, t do
      if type(k) == "string" and k:sub(1, #prefix) == prefix and not seen[k] and k:sub(1, 1) ~= "_" then
        if sep ~= ":" or type(v) == "function" then
          seen[k] = true
          names[#names + 1] = base .. sep .. k
        end
      end
    end
  end
  table.sort(names)
  return names
end

--- Load a module again (console \reload): later requires get the new version; code that already holds
--- the old one keeps it, and no connection is dropped.
function M.reload(name)
  local old = loaded[name]
  loaded[name] = nil
  local ok, value = pcall(app_env.require, name)
  if not ok then
    loaded[name] = old
    error(value, 0)
  end
  return value
end

--- Forget a compiled chunk that will not run (the console only checked it).
function M.console_drop(id)
  host.drop_job(id)
end

--- reload(name) as a job for the host to run as a task (a module's top level may wait).
function M.reload_job(name)
  return host.job(table.pack(M.reload, name))
end

-- The job's end of a pool.spawn channel (runtime/services/channels.py): `ops` are the host's put/get/close.
local JobChannel = {}
JobChannel.__index = JobChannel

--- Send `v` (a plain value, not nil) to the task that started the job; waits while the channel is full.
--- Returns true, or nil, "closed".
function JobChannel:put(v)
  if v == nil then error("bad argument #1 to 'put' (a value expected, got nil)", 2) end
  return self._ops.put(v)
end

--- The next value the task sent; waits for one (at most `timeout` seconds: then nil, "timeout").
--- Returns nil once the task has closed the channel and everything it sent was taken.
function JobChannel:get(timeout)
  if timeout ~= nil and (type(timeout) ~= "number" or timeout < 0) then
    error("bad argument #1 to 'get' (non-negative number expected, got " .. type(timeout) .. ")", 2)
  end
  return self._ops.get(timeout)
end

--- Close the channel: the task's job:get gives nil once it has taken what was sent.
function JobChannel:close() self._ops.close() end

--- In a pool thread: run module.fname(args[1..n]) (a spawned job, with the host's put, get and close
--- functions: fname(channel, args...));
--- returns true, results... or false, traceback. `expired()` (from the host) says whether the job's time
--- is up: the count hook then fails every instruction (no pcall hides it) until the host says otherwise.
function M.run_job(module, fname, job_args, n, expired, put, get, close)
  local ops = put and { put = put, get = get, close = close }
  local sethook = debug.sethook
  sethook(function()
    if expired() then
      sethook(function() if expired() then error("timeout", 0) end end, "", 1)
      error("timeout", 0)
    end
  end, "", 100000)
  local found, mod = pcall(app_env.require, module)
  if not found then return false, mod end
  local f = type(mod) == "table" and mod[fname]
  if type(f) ~= "function" then return false, "module '" .. module .. "' has no function '" .. fname .. "'" end
  local on_error = function(err) return traceback(tostring(err), 2) end
  local r
  if ops then
    r = table.pack(xpcall(f, on_error, setmetatable({ _ops = ops }, JobChannel), table.unpack(job_args, 1, n)))
  else
    r = table.pack(xpcall(f, on_error, table.unpack(job_args, 1, n)))
  end
  return table.unpack(r, 1, r.n)
end

return M
