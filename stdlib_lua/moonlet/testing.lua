--- Tests of Lua code, run by `moonlet test` inside a real moonlet runtime: a test may listen on a port,
--- connect to it, query a database, sleep — every yielding API works.
--
--     local t = require "moonlet.testing"
--     local describe, it, expect = t.describe, t.it, t.expect
--
--     describe("adder", function()
--       local total
--       t.before_each(function() total = 0 end)
--       it("adds", function()
--         total = total + 2
--         expect(total).to_be(2)
--       end)
--       it("compares tables", function()
--         expect({ 1, { a = 2 } }).to_equal({ 1, { a = 2 } })
--       end)
--       it("waits", function() sleep(0.01) end, { timeout = 1 })
--       it("waits an hour at once", function() sleep(3600) end, { virtual_time = true })
--       t.skip("is not written yet", function() end)
--     end)
--
-- A failed expectation reports what was expected and what came, with the differing path for tables.
--
-- Virtual time (`{ virtual_time = true }` on `it` or `describe`): the clock jumps ahead whenever every task
-- waits, so `sleep`, timers, I/O timeouts and `task:wait` timeouts end at once in real time, in the order
-- they would have; `time.now`/`time.monotonic` follow the jumps. Real sockets still work: a peer in the
-- test's own process is always heard before the clock moves, one in another process gets 50 ms of real
-- time to answer a task waiting on it; the clock never jumps while a pool job, a query or a connect is in
-- progress. The test's timeout is then real time.
-- @module moonlet.testing
local host = require "moonlet._host"
local task = require "moonlet.task"
local sleep = require("moonlet.time").sleep
local call, OP = host.call, host.OP
local type, error, pairs, tostring, format, concat, sort = type, error, pairs, tostring, string.format,
  table.concat, table.sort

local M = {}

local root = { name = nil, tests = {}, before = {}, after = {}, children = {} }
local current = root

--- A group of tests (groups nest; `before_each`/`after_each` apply to the group and those inside it).
--- `opts.virtual_time = true` runs every test of the group in virtual time.
--- Example: `t.describe("the parser", function() t.it("reads a line", function() ... end) end)`
---@param name string
---@param body fun()
---@param opts? {virtual_time?: boolean}
function M.describe(name, body, opts)
  local group = { name = name, parent = current, tests = {}, before = {}, after = {}, children = {},
    virtual_time = (opts and opts.virtual_time) or current.virtual_time }
  current.children[#current.children + 1] = group
  current.tests[#current.tests + 1] = group
  local saved = current
  current = group
  body()
  current = saved
end

local TEST_OPTIONS = { timeout = true, virtual_time = true }

-- (raises at the test file's line: check_options, this, pcall, M.it, the file)
local function check_test_options(opts)
  if type(opts) ~= "table" then host.argerror(3, "it", "table", opts, nil, 2) end
  host.check_options(opts, 3, "it", TEST_OPTIONS, nil, 2)
  local timeout = opts.timeout
  if timeout ~= nil and (type(timeout) ~= "number" or timeout ~= timeout or timeout <= 0) then
    host.argerror(3, "it", "seconds > 0", timeout, "timeout", 2)
  end
end

--- A test: `body` runs in its own task with a timeout (default 10 s; `opts.timeout`), in virtual time with
--- `opts.virtual_time = true` (or when its group has it; the timeout is then counted in real time).
--- Example: `t.it("times out", function() t.expect(conn:readline()).to_be_nil() end, { virtual_time = true })`
---@param name string
---@param body async fun()
---@param opts? {timeout?: number, virtual_time?: boolean}
function M.it(name, body, opts)
  local virtual = current.virtual_time
  local test = { name = name, body = body, timeout = 10 }
  if opts ~= nil then
    local ok, err = pcall(check_test_options, opts)
    if not ok then
      test.bad = tostring(err) -- (a bad option fails this test only: the others still run)
    else
      if opts.virtual_time ~= nil then virtual = opts.virtual_time end
      test.timeout = opts.timeout or 10
    end
  end
  test.virtual_time = virtual
  current.tests[#current.tests + 1] = test
end

--- A test that is not run (reported as skipped).
--- Example: `t.skip("talks to the staging server", function() ... end)`
function M.skip(name, _)
  current.tests[#current.tests + 1] = { name = name, skip = true }
end

--- Run `fn` before each test of the current group.
--- Example: `t.before_each(function() store = {} end)`
function M.before_each(fn) current.before[#current.before + 1] = fn end

--- Run `fn` after each test of the current group (also when the test failed).
--- Example: `t.after_each(function() if conn then conn:close() end end)`
function M.after_each(fn) current.after[#current.after + 1] = fn end

---------------------------------------------------------------------------------------------------------
-- expectations

local function show(v)
  if type(v) == "string" then return format("%q", v) end
  return tostring(v)
end

-- The first path where a and b differ ("" if they are equal), and the two values there.
local function difference(a, b, path)
  if a == b then return nil end
  if type(a) ~= "table" or type(b) ~= "table" then return path, a, b end
  local keys = {}
  for k in pairs(a) do keys[#keys + 1] = k end
  for k in pairs(b) do if a[k] == nil then keys[#keys + 1] = k end end
  sort(keys, function(x, y) return tostring(x) < tostring(y) end)
  for _, k in ipairs(keys) do
    local p, x, y = difference(a[k], b[k], path .. "[" .. show(k) .. "]")
    if p then return p, x, y end
  end
  return nil
end

local function fail(message)
  error(message, 3)
end

--- expect(actual).to_be(v) (==), .to_equal(v) (deep), .to_be_truthy(), .to_be_nil(), .to_match(pattern),
--- .to_fail([pattern]) (actual is a function that must raise).
--- Example: `t.expect(parse("a=1")).to_equal({ a = "1" })`
function M.expect(actual)
  local e = {}
  function e.to_be(expected)
    if actual ~= expected then fail("expected " .. show(expected) .. ", got " .. show(actual)) end
  end
  function e.to_equal(expected)
    local path, want, got = difference(expected, actual, "")
    if path then
      fail(format("tables differ at %s: expected %s, got %s", path == "" and "the top" or path, show(want), show(got)))
    end
  end
  function e.to_be_truthy()
    if not actual then fail("expected a true value, got " .. show(actual)) end
  end
  function e.to_be_nil()
    if actual ~= nil then fail("expected nil, got " .. show(actual)) end
  end
  function e.to_match(pattern)
    if type(actual) ~= "string" or not actual:find(pattern) then
      fail("expected a string matching " .. show(pattern) .. ", got " .. show(actual))
    end
  end
  function e.to_fail(pattern)
    local ok, err = pcall(actual)
    if ok then fail("expected an error, none was raised") end
    if pattern and not tostring(err):find(pattern) then
      fail("expected an error matching " .. show(pattern) .. ", got " .. show(err))
    end
  end
  return e
end

---------------------------------------------------------------------------------------------------------
-- running

local function chain(group, field, out)
  if group.parent then chain(group.parent, field, out) end
  for _, fn in ipairs(group[field]) do out[#out + 1] = fn end
  return out
end

local function full_name(group, name)
  local parts = { name }
  while group and group.name do
    table.insert(parts, 1, group.name)
    group = group.parent
  end
  return concat(parts, " ")
end

local function run_test(group, test, filter, counts)
  local name = full_name(group, test.name)
  if filter and not name:find(filter, 1, true) then return end
  if test.skip then
    counts.skipped = counts.skipped + 1
    call(OP.REPORT, "test", { name = name, status = "skipped" })
    return
  end
  if test.bad then
    counts.failed = counts.failed + 1
    call(OP.REPORT, "test", { name = name, status = "failed", error = test.bad })
    return
  end
  local failures_before = call(OP.TASK_FAILURES)
  local t = task.spawn(function()
    for _, fn in ipairs(chain(group, "before", {})) do fn() end
    local ok, err = pcall(test.body)
    local afters = chain(group, "after", {})
    for i = #afters, 1, -1 do afters[i]() end
    if not ok then error(err, 0) end
  end)
  local ok, err
  if test.virtual_time then -- the timeout is real time then (a thread ends the test): its clock jumps
    local on, why = call(OP.VIRTUAL_TIME, true, test.timeout, t._py)
    if not on then t:cancel(); error("virtual time: " .. tostring(why)) end
    ok, err = t:wait()
  else
    ok, err = t:wait(test.timeout)
  end
  if ok == nil then
    t:cancel()
    err = "timed out after " .. test.timeout .. "s"
  end
  -- a task the test started that failed (and nobody waited for) fails the test too: give the ones it
  -- started just before returning their first turn, then ask
  sleep(0)
  sleep(0)
  local failures_after, last = call(OP.TASK_FAILURES)
  if test.virtual_time and call(OP.VIRTUAL_TIME, false) then
    ok, err = false, "timed out after " .. test.timeout .. "s of real time (in virtual time)"
  end
  if ok and failures_after > failures_before then
    ok, err = false, "a task it started failed: " .. tostring(last)
  end
  if ok then
    counts.passed = counts.passed + 1
    call(OP.REPORT, "test", { name = name, status = "passed" })
  else
    counts.failed = counts.failed + 1
    call(OP.REPORT, "test", { name = name, status = "failed", error = tostring(err) })
  end
end

local function run_group(group, filter, counts)
  for _, item in ipairs(group.tests) do
    if item.body or item.skip then run_test(group, item, filter, counts)
    else run_group(item, filter, counts) end
  end
end

--- Entry point used by `moonlet test`: run the test file's main chunk (it declares tests), then the tests.
function M._main(script_main, opts, ...)
  script_main(...)
  local counts = { passed = 0, failed = 0, skipped = 0 }
  run_group(root, opts.filter, counts)
  call(OP.REPORT, "summary", counts)
end

return M
