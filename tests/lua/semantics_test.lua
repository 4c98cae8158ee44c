-- The cases of semantics.lua (plain Lua 5.4 semantics) run inside moonlet, each in a test's task; then what
-- moonlet adds: waits inside the constructs those cases use, and coroutines that wait on the host.
local t = require "moonlet.testing"
local it, expect = t.it, t.expect
local task = require "moonlet.task"

t.describe("Lua 5.4", function()
  for _, c in ipairs(require "semantics") do it(c.name, c.fn) end
end)

t.describe("waiting inside Lua's constructs", function()
  it("in a metamethod, pcall, a generic for, and a __close handler", function()
    local lazy = setmetatable({}, { __index = function(_, k) sleep(0.001) return k .. "!" end })
    expect(lazy.x).to_be("x!")
    expect(select(2, pcall(function() sleep(0.001) error("after a wait", 0) end))).to_be("after a wait")
    local gen = coroutine.wrap(function() for i = 1, 3 do sleep(0.001) coroutine.yield(i) end end)
    local sum = 0
    for i in gen do sum = sum + i end
    expect(sum).to_be(6)
    local closed = false
    do
      local _ <close> = setmetatable({}, { __close = function() sleep(0.001) closed = true end })
    end
    expect(closed).to_be(true)
  end)

  it("a coroutine waiting on the host is 'normal' and cannot be resumed or closed", function()
    local co = coroutine.create(function() sleep(0.05) return "slept" end)
    local result
    local runner = task.spawn(function() result = { coroutine.resume(co) } end)
    sleep(0.01)
    expect(coroutine.status(co)).to_be("normal")
    expect(coroutine.isyieldable(co)).to_be(false)
    local ok, err = coroutine.resume(co, "injected")
    expect(ok).to_be(false)
    expect(err).to_be("cannot resume non-suspended coroutine")
    expect(function() coroutine.close(co) end).to_fail("cannot close a normal coroutine")
    runner:wait()
    expect(result[1]).to_be(true)
    expect(result[2]).to_be("slept")
    expect(coroutine.status(co)).to_be("dead")
  end)

  it("a task's coroutine is that task's main thread to the app", function()
    local other = task.spawn(function() sleep(1) end)
    local mine, ismain = coroutine.running()
    expect(ismain).to_be(true)
    expect(coroutine.status(mine)).to_be("running")
    expect(coroutine.isyieldable()).to_be(false)
    expect(select(2, coroutine.resume(mine))).to_be("cannot resume non-suspended coroutine")
    other:cancel()
  end)
end)
