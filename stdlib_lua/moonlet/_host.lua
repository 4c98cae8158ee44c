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
--
-- Yields work everywhere Lua allows them: in pcall/xpcall, metamethods, required modules' top levels, and the
-- app's own coroutines. The `coroutine` library apps see is wrapped: a host request made inside an app
-- coroutine travels out through the app's `resume` to the task and the reply comes back in, while the app's
-- own yields still reach the app's resume. Where Lua cannot yield at all (a table.sort comparator, a
-- string.gsub callback, __gc, __tostring called by tostring) a request fails with an error that says so.
--
-- Stall protection (see runtime/services/tasks.py): a task's coroutine registers a hook but leaves it unarmed,
-- so its instructions cost nothing extra; the host's watchdog thread arms it when the task's run has used
-- up its CPU budget. Coroutines the app creates itself ask the host every `stall_check_every` instructions
-- (so does every coroutine when the host cannot arm hooks). A stalled coroutine is doomed: every later
-- instruction raises, so `while true do pcall(f) end` ends too.

local privileged = ...
local call, OP, raw_yield, traceback = privileged.call, privileged.OP, privileged.yield, privileged.traceback
local raw_create, raw_resume, isyieldable = privileged.create, privileged.resume, privileged.isyieldable
local running, setmetatable = privileged.running, setmetatable
local sethook, gethook, getinfo = privileged.sethook, privileged.gethook, privileged.getinfo
local setlocal = privileged.setlocal
local next, pairs, tostring, xpcall, pcall, error = next, pairs, tostring, xpcall, pcall, error
local pack, unpack = table.pack, table.unpack
local raw_close = privileged.coroutine.close

local M = { call = call, OP = OP, limits = privileged.limits, traceback = traceback }
local EXIT, STALL_CHECK, STALLED = OP.EXIT, OP.STALL_CHECK, OP.STALLED
local STALL_EVERY = privileged.limits.stall_check_every
local STALL_ARMED = STALL_EVERY > 0 and privileged.limits.stall_armed == 1
local LUAJIT = privileged.engine == "luajit"

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

-- Host numbers given back by the `__gc` of the tables that held them (runtime/kernel/handles.py). A finalizer
-- must not call the host (it may run while the state is being closed), so it only notes the number and marks
-- this list dirty: the next crossing into the host hands the numbers over, as it hands buffered output.
local released, nreleased = {}, 0
local releaser = {}
local RELEASE = OP.RELEASE
function releaser._sync()
  local list, n = released, nreleased
  released, nreleased = {}, 0
  for i = 1, n do call(RELEASE, list[i]) end
end

--- Hand the numbers noted so far to the host now (the console's \gc, after a collection).
function M.flush_released()
  M.unmark(releaser)
  releaser._sync()
end

--- From a `__gc` metamethod: the table holding host number `n` is gone.
function M.release(n)
  nreleased = nreleased + 1
  released[nreleased] = n
  M.mark_dirty(releaser)
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

-- How many app coroutines are running inside our `resume` right now: 0 means a request is surely made from
-- a task's own coroutine; otherwise `app_cos` (the app's coroutines) says whether it is.
local depth = 0
local app_cos = setmetatable({}, { __mode = "k" })
local PASS = {} -- first value yielded by a host request made inside an app coroutine

local CANNOT_YIELD = "cannot wait here: this code runs inside a C function that Lua cannot yield across "
  .. "(a table.sort comparator, a string.gsub callback, __gc, __tostring via tostring, or outside any task)"

local STDLIB_SOURCE = "@" .. privileged.stdlib_dir .. "/"

--- The stdlib's one argument error, in Lua's own words, raised at the caller of the API function that calls
--- it (`between`: stdlib helper frames in between, default 0): "bad argument #i to 'fn' (EXPECTED expected,
--- got GOT)", GOT the value for a number, else its type; `field` names an option of an options table:
--- "bad argument #1 to 'listen' ('port': integer from 0 to 65535 expected, got -5)".
local function argerror(i, fn, expected, got, field, between)
  error(("bad argument #%d to '%s' (%s%s expected, got %s)"):format(i, fn, field and ("'" .. field .. "': ") or "",
    expected, type(got) == "number" and tostring(got) or type(got)), 3 + (between or 0))
end

-- The stack level (counted from the caller of this function) of the first frame outside the stdlib.
local function app_level(level)
  while true do
    local info = getinfo(level + 1, "S")
    if info == nil then return 1 end
    if info.source:sub(1, #STDLIB_SOURCE) ~= STDLIB_SOURCE then return level end
    level = level + 1
  end
end
M.app_level = app_level

-- Misuse the host finds (a request or call whose arguments it refuses: a forged handle, a method called
-- with another object as self) is raised as an error at the app's line that called the stdlib, as Lua's
-- own "bad argument" errors are. `misuse.where(co)`: "file:line" of that line in the task coroutine `co`
-- making a host call (the host runs this on the main thread, so it names the coroutine);
-- `misuse.raise_in(co, msg)`: raise msg in the suspended task coroutine `co` as soon as it is resumed
-- (a one-instruction hook, then the hook it had is back), so only the error path pays for it.
-- The hook a coroutine has between stalls (defined with `guard` below).
local base_hook

-- LuaJIT: misuse waiting to be raised in suspended coroutines, by coroutine. Its hooks are the state's,
-- not a coroutine's, so one count hook serves them all until each has run (and other code that resets
-- the hook puts this one back while any waits: base_hook).
local raising = setmetatable({}, { __mode = "k" })

local function raise_pending()
  local msg = raising[running()]
  if msg ~= nil then raising[running()] = nil end
  if next(raising) == nil then base_hook() end
  if msg ~= nil then error(msg, app_level(2)) end
end

M.misuse = {
  where = function(co)
    local level = 0
    while true do
      local info = getinfo(co, level, "Sl")
      if info == nil then return nil end
      if info.what ~= "C" and info.source:sub(1, #STDLIB_SOURCE) ~= STDLIB_SOURCE then
        return info.short_src .. ":" .. (info.currentline or 0)
      end
      level = level + 1
    end
  end,
  raise_in = function(co, msg)
    if LUAJIT then
      raising[co] = msg
      sethook(raise_pending, "", 1)
      return
    end
    local hook, mask, count = gethook(co)
    sethook(co, function()
      if hook == nil then sethook() else sethook(hook, mask, count) end
      error(msg, app_level(2))
    end, "", 1)
  end,
}

-- LuaJIT with a memory limit (runtime/lua/state.py): LuaJIT collects no garbage when an allocation fails,
-- and the host's own allocations in the state (the values it hands in, a new task's coroutine) are made
-- outside Lua's protection, where a failure ends the process. So no run returns to the host with less than
-- the headroom free: before a coroutine waits (or ends) with more than ROOM_KB in use, the garbage is
-- collected, and if live data still leaves too little the wait fails as an allocation would, with "not
-- enough memory" in the task that waits. (0: Lua 5.4, which collects when an allocation fails.)
local ROOM_KB = privileged.limits.memory_room_kb or 0
local gc = collectgarbage

local function keep_room()
  if gc("count") > ROOM_KB then
    gc("collect")
    if gc("count") > ROOM_KB then error("not enough memory", 0) end
  end
end

--- Suspend the running coroutine until the host replies to request `op`.
function M.request(op, a, b, c)
  if ROOM_KB > 0 then keep_room() end
  if first ~= nil or nmore > 0 then sync_all() end
  if not isyieldable() then error(CANNOT_YIELD, app_level(2)) end
  if depth > 0 then
    if app_cos[running()] then return raw_yield(PASS, op, a, b, c) end
    depth = 0 -- (left too high by an error between our resume's two counts: a stall or out of memory)
  end
  return raw_yield(op, a, b, c)
end
local request = M.request
local RECV = OP.RECV

--- Wait for input on `obj` (a connection: its host handle at index 1) with its buffered output `out`,
--- already taken, travelling in the request, then `return k(obj, data, err)`: the idle reader's wait. This
--- frame takes the place of the read call that waits (a tail call) and ends in one (to `k`, which goes on
--- reading), so a handler waiting for its next line sits two Lua frames above its coroutine's first: one
--- task's stack stays inside the first one Lua gives a coroutine (the yield, a C function, wants 20 free
--- slots above it, and neither Lua shrinks a stack a third in use: bench/coroutine_depth.py measures what
--- each frame more costs an idle connection). Anywhere but a task's own coroutine, the general path.
--- (Its first lines are recv's, below, written out in both: one helper for them cost Lua 5.4 ~150
--- instructions a crossing, kv.lua -P1 19,922 -> 20,079. Keep the two alike.)
function M.recv_then(obj, out, k)
  if ROOM_KB > 0 then keep_room() end
  if first == obj then
    first = nil
  elseif nmore > 0 and more[obj] then
    more[obj] = nil
    nmore = nmore - 1
  end
  if first ~= nil or nmore > 0 then sync_all() end
  if depth == 0 and isyieldable() then return k(obj, raw_yield(RECV, obj[1], out, nil)) end
  return k(obj, request(RECV, obj[1], out))
end

--- RECV for `obj` (a connection) with its buffered output `out`, already taken, travelling in the request:
--- the echo cycle's one crossing, so the door's rules are written out here rather than reached through
--- `request` (one call fewer per read). Anywhere but a task's own coroutine it takes the general path.
--- (Folding this into `request` with an extra argument was measured: 1,800 more instructions per
--- unpipelined request, kv.lua -P1, bench/instructions.py.) `op` (default RECV) may be IDLE instead: an
--- HTTP worker giving its connection back, with its last answer, and waiting for the next.
function M.recv(obj, py, out, op, served)
  if ROOM_KB > 0 then keep_room() end
  if first == obj then
    first = nil
  elseif nmore > 0 and more[obj] then
    more[obj] = nil
    nmore = nmore - 1
  end
  if first ~= nil or nmore > 0 then sync_all() end
  if depth == 0 and isyieldable() then return raw_yield(op or RECV, py, out, served) end
  return request(op or RECV, py, out, served)
end

---------------------------------------------------------------------------------------------------------
-- stall protection

-- Make every later instruction of the running coroutine raise `msg`: no pcall can catch it for long.
-- Lua 5.4 keeps a hook per coroutine. LuaJIT keeps one for the whole state, so there the hook also fires
-- in the next coroutine to run once the doomed one has ended (or been given up by the host): there it
-- puts the usual hook back, and no other task is stopped.
local function doom_running(msg)
  local victim = running()
  sethook(function()
    if running() == victim then error(msg, 0) end
    base_hook()
  end, "", 1)
  error(msg, 0)
end

local function doom(msg)
  call(STALLED, traceback(msg, 3))
  doom_running(msg)
end

-- the periodic hook (app coroutines)
local function on_count()
  local msg = call(STALL_CHECK)
  if msg then doom(msg) end
end

-- the hook the watchdog arms (tasks)
local function on_stall()
  local msg = call(STALL_CHECK)
  if msg then doom(msg) end
  base_hook() -- armed for a run that has since yielded: back to registered, unarmed
end

function base_hook()
  if LUAJIT and next(raising) ~= nil then
    sethook(raise_pending, "", 1)
  elseif STALL_EVERY == 0 then
    sethook()
  elseif STALL_ARMED then
    sethook(on_stall, "")
  else
    sethook(on_count, "", STALL_EVERY)
  end
end

-- A task's own coroutine (co == nil: the running one) or a coroutine the app creates. (On LuaJIT a
-- coroutine's hook is the state's: the one the watchdog arms reaches whichever coroutine runs.)
local function guard(co)
  if STALL_EVERY == 0 then return end
  if co then
    if not (LUAJIT and STALL_ARMED) then sethook(co, on_count, "", STALL_EVERY) end
  else
    base_hook() -- registered for the watchdog to arm (an empty mask costs nothing), or the periodic hook
  end
end

---------------------------------------------------------------------------------------------------------
-- the coroutine library apps see

local function create(fn)
  if type(fn) ~= "function" then
    error("bad argument #1 to 'create' (function expected, got " .. type(fn) .. ")", 2) -- (Lua's own words)
  end
  local co = raw_create(fn)
  app_cos[co] = true
  guard(co)
  return co
end

-- App coroutines waiting for the host (a request made inside them, on its way out through our resume): no
-- other code may resume or close them meanwhile (it would hand them values in place of the host's reply).
local waiting_host = setmetatable({}, { __mode = "k" })

local function resume(co, ...)
  if type(co) ~= "thread" then
    error("bad argument #1 to 'resume' (coroutine expected, got " .. type(co) .. ")", 2) -- (Lua's own words)
  end
  if not app_cos[co] or waiting_host[co] then -- a task's own, or one in a moonlet call: status "normal"
    return false, "cannot resume non-suspended coroutine"
  end
  depth = depth + 1
  local r = pack(raw_resume(co, ...))
  depth = depth - 1
  if r[1] == false and STALL_EVERY > 0 then -- did co die of a stall? then so does the code resuming it
    local msg = call(STALL_CHECK)
    if msg then doom_running(msg) end
  end
  while r[1] == true and r[2] == PASS do -- a host request from inside co: make it, and hand the reply in
    waiting_host[co] = true
    local reply = pack(request(r[3], r[4], r[5], r[6]))
    waiting_host[co] = nil
    depth = depth + 1
    r = pack(raw_resume(co, unpack(reply, 1, reply.n)))
    depth = depth - 1
  end
  return unpack(r, 1, r.n)
end

local function wrap(fn)
  if type(fn) ~= "function" then
    error("bad argument #1 to 'wrap' (function expected, got " .. type(fn) .. ")", 2) -- (Lua's own words)
  end
  local co = create(fn)
  return function(...)
    local r = pack(resume(co, ...))
    if r[1] then return unpack(r, 2, r.n) end
    -- as Lua's own wrap: a coroutine that failed is closed (its to-be-closed variables are closed), and
    -- the error goes on as it was raised
    local err = r[2]
    if privileged.coroutine.status(co) == "dead" then
      local _, closing_err = privileged.coroutine.close(co)
      if closing_err ~= nil then err = closing_err end
    end
    if type(err) == "string" then error(err, 2) end -- (with the caller's position in front, as Lua's wrap)
    error(err, 0)
  end
end

-- The app's `yield` reaches only the coroutines it created: from a task's own coroutine (or a finalizer,
-- or a metamethod called from C) it is the error standard Lua gives outside a coroutine, so no app code
-- can speak to the host behind the standard library.
local function yield(...)
  if depth > 0 and app_cos[running()] then return raw_yield(...) end
  error("attempt to yield from outside a coroutine", 2)
end

-- What the app's coroutine library says of coroutines agrees with what it lets the app do: a task's own
-- coroutine is, to the app, the main thread of that task (yield there is "outside a coroutine"), and a
-- coroutine suspended in a moonlet call is in the middle of a call, "normal" as one that resumed another.
local raw_status = privileged.coroutine.status

local function app_isyieldable(co)
  if co == nil then return depth > 0 and app_cos[running()] == true and isyieldable() end
  if type(co) ~= "thread" then
    error("bad argument #1 to 'isyieldable' (coroutine expected, got " .. type(co) .. ")", 2) -- (Lua's own words)
  end
  return app_cos[co] == true and isyieldable(co) and not waiting_host[co]
end

local function app_running()
  local co = running()
  return co, not app_cos[co]
end

local function status(co)
  if type(co) ~= "thread" then
    error("bad argument #1 to 'status' (coroutine expected, got " .. type(co) .. ")", 2) -- (Lua's own words)
  end
  local s = raw_status(co)
  if s == "suspended" and (waiting_host[co] or not app_cos[co]) then return "normal" end
  return s
end

local function close(co)
  if type(co) == "thread" and (not app_cos[co] or waiting_host[co]) then
    error("cannot close a " .. status(co) .. " coroutine", 2) -- (as Lua says of a running or normal one)
  end
  return raw_close(co)
end

M.coroutine = {}
for name, f in pairs(privileged.coroutine) do M.coroutine[name] = f end
M.coroutine.create, M.coroutine.resume, M.coroutine.wrap = create, resume, wrap
M.coroutine.yield, M.coroutine.isyieldable, M.coroutine.close = yield, app_isyieldable, close
M.coroutine.running, M.coroutine.status = app_running, status

---------------------------------------------------------------------------------------------------------
-- task bodies

local function on_error(err)
  return traceback(tostring(err), 2)
end

--- A connection's handler task runs its listener's entry as the coroutine's own function, with no frame
--- under it (see recv_then): the entry calls `start_task()` and tail-calls the handler, whose return ends
--- the coroutine. Then, or after a Lua error in it, the host calls `ended`.
function M.start_task() guard() end

--- (The host, after task coroutine `co` returned, or failed with `msg` outside any xpcall: a handler's
--- error, a stall, out of memory.) Hands on the output it buffered; returns the error with co's traceback.
--- A failed coroutine keeps its stack, and what its frames hold stays live while the host holds the
--- coroutine: so, as the xpcall of a body would have unwound it, Lua 5.4 closes it here (its to-be-closed
--- variables close, and the log says the value it raised, not lupa's copy of the message, empty for a
--- table), and on LuaJIT, which cannot close one, every slot of its frames is cleared. (The host calls
--- this with the memory limit lifted: a task that ran out of memory has the heap full until then.)
function M.ended(co, msg)
  local trace
  if msg ~= nil then
    trace = traceback(co, "", 0)
    if LUAJIT then
      for level = 0, math.huge do
        if getinfo(co, level, "l") == nil then break end
        local i = 1
        while setlocal(co, level, i, nil) do i = i + 1 end
      end
    else
      local _, err = raw_close(co)
      if err ~= nil then
        local ok, text = pcall(tostring, err)
        msg = ok and text or msg
      end
    end
    if msg == "" then msg = "(an error value that is not a string)" end
  end
  if first ~= nil or nmore > 0 then sync_all() end
  if ROOM_KB > 0 and gc("count") > ROOM_KB then gc("collect") end -- (see keep_room: the host allocates next)
  if trace ~= nil then return msg .. trace end
end

--- The body of a spawned function and of the main chunk: run fn(...) and report how it ended.
function M.body(fn, ...)
  guard()
  local ok, err = xpcall(fn, on_error, ...)
  if first ~= nil or nmore > 0 then sync_all() end
  if ROOM_KB > 0 then keep_room() end
  if ok then return EXIT, true, nil, nil end
  return EXIT, false, err, nil
end

-- What spawned tasks and timers will run, by id: {fn, args..., n=}. The host holds only the id. (A Lua
-- table handed to a Python call is wrapped with a pointer to the calling coroutine, which may be collected
-- before the wrapper: only plain values cross in calls.)
-- Lua never shrinks a table as keys are removed, so once no job is pending the table is replaced: after a
-- burst of 30,000 timers the memory comes back instead of staying at the burst's size.
local jobs, last_job, pending_jobs = {}, 0, 0

local function forget_job(id)
  if jobs[id] ~= nil then
    jobs[id] = nil
    pending_jobs = pending_jobs - 1
    if pending_jobs == 0 then jobs = {} end
  end
end

--- Keep `packed` for a later task_body; returns its id.
function M.job(packed)
  last_job = last_job + 1
  jobs[last_job] = packed
  pending_jobs = pending_jobs + 1
  return last_job
end

--- Forget a job (a cancelled timer).
M.drop_job = forget_job

--- The body of a spawned task or timer callback: runs job `id` (kept if `keep`: a repeating timer).
--- wait() gets the results, or the value the task raised; the log gets the traceback.
function M.task_body(id, keep)
  guard()
  local packed = jobs[id]
  if not keep then forget_job(id) end
  if packed == nil then return EXIT, true, pack(), nil end -- (a timer cancelled as it fired)
  local trace
  local r = pack(xpcall(packed[1], function(err)
    trace = traceback(tostring(err), 2)
    return err
  end, unpack(packed, 2, packed.n)))
  if first ~= nil or nmore > 0 then sync_all() end
  if ROOM_KB > 0 then keep_room() end
  if r[1] then return EXIT, true, r, nil end
  return EXIT, false, trace, r[2]
end

--- "file:line" of the caller `level` frames up (for naming tasks and timers in the log).
function M.where(level)
  local info = getinfo(level + 1, "Sl")
  if info == nil then return "?" end
  return info.short_src .. ":" .. (info.currentline or 0)
end

M.argerror = argerror

--- The stdlib's one check of a table of options: a key the function does not know is misuse, raised at the
--- API's caller (`between`: stdlib helper frames in between) in Lua's words: "bad argument #1 to 'request'
--- (unknown option 'timout'; the options are body, headers, ...)", so a misspelt option never falls back to
--- its default silently. `known`: the option names, as a set; `refused` (optional): names recognised but not
--- available, name -> why ("'tls': TLS on a listener is not supported yet: ...").
function M.check_options(opts, i, fn, known, refused, between)
  for k in next, opts do
    if not known[k] then
      local level = 3 + (between or 0)
      local why = refused and refused[k]
      if why then error(("bad argument #%d to '%s' ('%s': %s)"):format(i, fn, tostring(k), why), level) end
      local names = {}
      for name in next, known do names[#names + 1] = name end
      table.sort(names)
      error(("bad argument #%d to '%s' (unknown option '%s'; the options are %s)"):format(i, fn, tostring(k),
        table.concat(names, ", ")), level)
    end
  end
end

-- (fn .. old) -> true once its deprecation has been said: one log line per process, not one per call
local said_renamed = {}

--- Options renamed in a release keep their old names for one more: `opts` with each old name in `renamed`
--- (old -> new) moved to its new one (the new one wins if both are given), and one warning in the log the
--- first time a name is used: "conn:setlimits{line=} is deprecated: use max_line (the old name goes in the
--- next release)". Returns `opts` itself when no old name is in it.
function M.renamed(opts, fn, renamed)
  local copy
  for old, new in next, renamed do
    local v = rawget(opts, old)
    if v ~= nil then
      if copy == nil then
        copy = {}
        for k, value in next, opts do copy[k] = value end
      end
      copy[old] = nil
      if copy[new] == nil then copy[new] = v end
      if not said_renamed[fn .. old] then
        said_renamed[fn .. old] = true
        call(OP.LOG, "warn", ("%s{%s=} is deprecated: use %s (the old name goes in the next release)"):format(
          fn, old, new))
      end
    end
  end
  return copy or opts
end

--- A port argument: an integer from `low` (0: any free port; 1 to connect) to 65535.
function M.is_port(port, low)
  return math.type(port) == "integer" and port >= low and port <= 65535
    or type(port) == "number" and port % 1 == 0 and port >= low and port <= 65535
end

--- The stdlib's one check of a time argument, raising Lua's own message at the API's caller:
--- "bad argument #i to 'what' (seconds >= 0 expected, got -1)". With `optional`, nil and math.huge mean no
--- limit (nil is returned).
function M.check_seconds(t, i, what, optional)
  if optional and (t == nil or t == math.huge) then return nil end
  if type(t) ~= "number" or t ~= t or t < 0 then
    error(("bad argument #%d to '%s' (seconds >= 0%s expected, got %s)"):format(i, what,
      optional and " or nil" or "", type(t) == "number" and tostring(t) or type(t)), 3)
  end
  return t
end

return M
