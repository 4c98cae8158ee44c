-- Lua 5.4 semantics, as the reference manual states them, in cases that run the same in plain Lua 5.4 and
-- inside moonlet (tests/test_lua_semantics.py runs both). Areas follow Lua's own test suite (coroutine,
-- locals, calls, errors, closure, nextvar, events, goto, vararg, strings, pm, sort, tpack, utf8); the cases
-- are ours. Only what the sandbox keeps is used (no io, os.execute, debug, load of binary chunks).
-- Each case raises on a mismatch.
local cases = {}
local function case(name, fn) cases[#cases + 1] = { name = name, fn = fn } end

local function eq(a, b, what)
  if a ~= b then error((what or "value") .. ": expected " .. tostring(b) .. ", got " .. tostring(a), 2) end
end

local function fails(fn, pattern)
  local ok, err = pcall(fn)
  if ok then error("expected an error matching " .. pattern, 2) end
  if not tostring(err):find(pattern) then error("error " .. tostring(err) .. " does not match " .. pattern, 2) end
  return err
end

-- coroutine ---------------------------------------------------------------------------------------------
case("coroutine: resume/yield pass values both ways", function()
  local co = coroutine.create(function(a, b)
    local c = coroutine.yield(a + b)
    local d, e = coroutine.yield(c * 2)
    return d + e, "end"
  end)
  local ok, v = coroutine.resume(co, 1, 2)
  eq(ok, true) eq(v, 3)
  ok, v = coroutine.resume(co, 10)
  eq(v, 20)
  local ok2, sum, tag = coroutine.resume(co, 4, 5)
  eq(ok2, true) eq(sum, 9) eq(tag, "end")
  eq(coroutine.status(co), "dead")
  local again, err = coroutine.resume(co)
  eq(again, false) eq(err, "cannot resume dead coroutine")
end)

case("coroutine: status, running and isyieldable tell the truth", function()
  local main, ismain = coroutine.running()
  eq(type(main), "thread") eq(ismain, true)
  eq(coroutine.isyieldable(), false)
  local co
  co = coroutine.create(function()
    eq(coroutine.status(co), "running")
    local me, im = coroutine.running()
    eq(me, co) eq(im, false)
    eq(coroutine.isyieldable(), true)
    local inner = coroutine.create(function() eq(coroutine.status(co), "normal") end)
    assert(coroutine.resume(inner))
    coroutine.yield()
  end)
  eq(coroutine.status(co), "suspended")
  eq(coroutine.isyieldable(co), true)
  assert(coroutine.resume(co))
  eq(coroutine.status(co), "suspended")
  assert(coroutine.resume(co))
  eq(coroutine.status(co), "dead")
end)

case("coroutine: yield outside a coroutine is a catchable error", function()
  fails(function() coroutine.yield(1) end, "attempt to yield from outside a coroutine")
end)

case("coroutine: an error inside is returned by resume; wrap rethrows it", function()
  local co = coroutine.create(function() error({ code = 7 }) end)
  local ok, e = coroutine.resume(co)
  eq(ok, false) eq(e.code, 7)
  eq(coroutine.status(co), "dead")
  local w = coroutine.wrap(function() error("boom") end)
  fails(w, "boom")
  local again, why = coroutine.resume(coroutine.running())
  eq(again, false) eq(why, "cannot resume non-suspended coroutine")
end)

case("coroutine: close runs to-be-closed variables of a suspended coroutine", function()
  local log = {}
  local co = coroutine.create(function()
    local a <close> = setmetatable({}, { __close = function(_, err) log[#log + 1] = "a:" .. tostring(err) end })
    coroutine.yield()
  end)
  assert(coroutine.resume(co))
  local ok = coroutine.close(co)
  eq(ok, true) eq(log[1], "a:nil") eq(coroutine.status(co), "dead")
end)

case("coroutine: wrap as a generator in a for loop", function()
  local function range(n) return coroutine.wrap(function() for i = 1, n do coroutine.yield(i) end end) end
  local sum = 0
  for i in range(10) do sum = sum + i end
  eq(sum, 55)
end)

-- locals, <const>, <close> ------------------------------------------------------------------------------
case("locals: scopes, shadowing, const and close order", function()
  local x = 1
  do local x = 2; eq(x, 2) end
  eq(x, 1)
  local k <const> = 10
  eq(k * 2, 20)
  local order = {}
  do
    local a <close> = setmetatable({}, { __close = function() order[#order + 1] = "a" end })
    local b <close> = setmetatable({}, { __close = function() order[#order + 1] = "b" end })
    local c <close> = nil -- nil and false are allowed and ignored
  end
  eq(table.concat(order), "ba")
  fails(function() local bad <close> = {} end, "non%-closable value")
end)

case("locals: close runs on error and gets the error", function()
  local seen
  local ok, err = pcall(function()
    local r <close> = setmetatable({}, { __close = function(_, e) seen = e end })
    error("oops", 0)
  end)
  eq(ok, false) eq(err, "oops") eq(seen, "oops")
end)

case("locals: close runs on break and on return from a loop", function()
  local n = 0
  local mt = { __close = function() n = n + 1 end }
  for _ = 1, 3 do
    local r <close> = setmetatable({}, mt)
    if n == 1 then break end
  end
  eq(n, 2)
  local function f()
    local r <close> = setmetatable({}, mt)
    return "done"
  end
  eq(f(), "done") eq(n, 3)
end)

-- calls and varargs -------------------------------------------------------------------------------------
case("calls: varargs, select, table.pack/unpack with nils", function()
  local function count(...) return select("#", ...) end
  eq(count(), 0) eq(count(nil), 1) eq(count(nil, nil, 3), 3)
  local t = table.pack(1, nil, 3, nil)
  eq(t.n, 4) eq(t[3], 3)
  local a, b, c, d = table.unpack(t, 1, t.n)
  eq(a, 1) eq(b, nil) eq(c, 3) eq(d, nil)
  eq(select(-1, "a", "b", "c"), "c")
  eq(select(2, "a", "b", "c"), "b")
  fails(function() select(0, 1) end, "index out of range")
  local function tail(n) if n == 0 then return "bottom" end return tail(n - 1) end
  eq(tail(100000), "bottom") -- proper tail calls: no stack growth
  local function many() return 1, 2, 3 end
  eq(select("#", many(), many()), 4) -- only the last call expands
  eq(select("#", (many())), 1)
end)

case("calls: methods and __call", function()
  local obj = { v = 5 }
  function obj:get(d) return self.v + (d or 0) end
  eq(obj:get(1), 6) eq(obj.get(obj), 5)
  local callable = setmetatable({}, { __call = function(self, a, b) return a + b end })
  eq(callable(2, 3), 5)
end)

-- errors -----------------------------------------------------------------------------------------------
case("errors: levels, objects, xpcall handlers, nested pcall", function()
  local function lvl1() error("L1", 1) end
  local function lvl2() error("L2", 2) end
  local _, e1 = pcall(lvl1)
  assert(e1:find(":%d+: L1$"), e1)
  local _, e0 = pcall(error, "plain", 0)
  eq(e0, "plain")
  local _, eobj = pcall(error, setmetatable({}, { __tostring = function() return "custom" end }))
  eq(tostring(eobj), "custom")
  local ok, handled = xpcall(function() error("x", 0) end, function(m) return "handled " .. m end)
  eq(ok, false) eq(handled, "handled x")
  local _, e2 = pcall(function() lvl2() end)
  assert(e2:find(":%d+: L2$"), e2)
  eq(select("#", pcall(error)), 2) -- error(nil): the error value is nil
  eq(select(2, pcall(error)), nil)
  local ok3, v3 = pcall(pcall, error, "inner")
  eq(ok3, true) eq(v3, false)
end)

case("errors: runtime errors name the culprit", function()
  local t = {}
  fails(function() return t.x.y end, "attempt to index a nil value %(field 'x'%)")
  fails(function() return 1 + {} end, "attempt to perform arithmetic on a table value")
  fails(function() return #5 end, "attempt to get length of a number value")
  fails(function() return {} < {} end, "attempt to compare two table values")
  fails(function() return ("x")() end, "attempt to call a string value")
  local zero = 0
  fails(function() return 1 // zero end, "attempt to")
  fails(function() return math.tointeger(2^63) // 1 end, "attempt to perform arithmetic on a nil value")
end)

-- closures ---------------------------------------------------------------------------------------------
case("closure: shared upvalues, a fresh one per loop iteration", function()
  local fs = {}
  for i = 1, 3 do fs[i] = function() return i end end
  eq(fs[1]() + fs[2]() + fs[3](), 6)
  local function counter()
    local n = 0
    return function() n = n + 1 return n end, function() return n end
  end
  local inc, get = counter()
  inc() inc()
  eq(get(), 2)
  local ws = {}
  local j = 1
  while j <= 3 do local k = j; ws[j] = function() return k end; j = j + 1 end
  eq(ws[1](), 1) eq(ws[3](), 3)
end)

-- tables: next, pairs, length, insert/remove ------------------------------------------------------------
case("nextvar: next, pairs, ipairs, #, and table functions", function()
  local t = { 10, 20, 30, x = 1 }
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  eq(n, 4)
  local m = 0
  for i, v in ipairs({ 1, 2, nil, 4 }) do m = m + 1 end
  eq(m, 2)
  eq(#t, 3)
  table.insert(t, 40) eq(t[4], 40)
  table.insert(t, 1, 5) eq(t[1], 5) eq(#t, 5)
  eq(table.remove(t), 40) eq(table.remove(t, 1), 5) eq(#t, 3)
  eq(table.concat({ 1, 2, 3 }, ", ", 2, 3), "2, 3")
  eq(next({}), nil)
  local moved = table.move({ 1, 2, 3 }, 1, 3, 2, {})
  eq(moved[2], 1) eq(moved[4], 3)
  fails(function() table.insert(t, 10, 1) end, "position out of bounds")
  local pt = setmetatable({}, {
    __pairs = function() return function(_, k) if not k then return 1, "one" end end, nil, nil end,
  })
  local got
  for k, v in pairs(pt) do got = v end
  eq(got, "one")
  -- assigning nil to existing fields while traversing is allowed
  local big = {}
  for i = 1, 100 do big["k" .. i] = i end
  for k in pairs(big) do big[k] = nil end
  eq(next(big), nil)
end)

case("nextvar: integer and float keys are the same key", function()
  local t = {}
  t[1.0] = "a"
  eq(t[1], "a")
  t[2^53] = "b"
  eq(t[math.tointeger(2^53)], "b")
  fails(function() t[0/0] = 1 end, "index is NaN")
  fails(function() t[nil] = 1 end, "index is nil")
end)

-- metamethods ------------------------------------------------------------------------------------------
case("events: arithmetic, comparison, concat, len, index chains", function()
  local V = {}
  V.__index = V
  V.__add = function(a, b) return setmetatable({ x = a.x + b.x }, V) end
  V.__eq = function(a, b) return a.x == b.x end
  V.__lt = function(a, b) return a.x < b.x end
  V.__le = function(a, b) return a.x <= b.x end
  V.__concat = function(a, b)
    local ax = type(a) == "table" and a.x or a
    local bx = type(b) == "table" and b.x or b
    return ax .. "&" .. bx
  end
  V.__len = function() return 42 end
  V.__unm = function(a) return setmetatable({ x = -a.x }, V) end
  V.__tostring = function(a) return "V(" .. a.x .. ")" end
  V.__name = "Vector"
  local a, b = setmetatable({ x = 1 }, V), setmetatable({ x = 2 }, V)
  eq((a + b).x, 3)
  eq(a == setmetatable({ x = 1 }, V), true)
  eq(a < b, true) eq(b <= a, false) eq(a > b, false)
  eq(a .. "s", "1&s") eq("s" .. b, "s&2")
  eq(#a, 42) eq((-a).x, -1) eq(tostring(a), "V(1)")
  local base = { greet = function() return "hi" end }
  local mid = setmetatable({}, { __index = base })
  local top = setmetatable({}, { __index = mid })
  eq(top.greet(), "hi")
  local log = {}
  local guarded = setmetatable({}, { __newindex = function(t, k, v) log[#log + 1] = k; rawset(t, k, v) end })
  guarded.a = 1 guarded.a = 2
  eq(#log, 1) eq(guarded.a, 2)
  local fi = setmetatable({}, { __index = function(_, k) return k * 2 end })
  eq(fi[21], 42)
end)

case("events: __idiv, __mod, __pow, bitwise, and __metatable protection", function()
  local N = {}
  N.__idiv = function() return "idiv" end
  N.__mod = function() return "mod" end
  N.__pow = function() return "pow" end
  N.__band = function() return "band" end
  N.__shl = function() return "shl" end
  N.__bnot = function() return "bnot" end
  local n = setmetatable({}, N)
  eq(n // 1, "idiv") eq(n % 1, "mod") eq(n ^ 1, "pow") eq(n & 1, "band") eq(n << 1, "shl") eq(~n, "bnot")
  local locked = setmetatable({}, { __metatable = "locked" })
  eq(getmetatable(locked), "locked")
  fails(function() setmetatable(locked, {}) end, "cannot change a protected metatable")
  eq(getmetatable("abc").__index, string)
end)

-- goto -------------------------------------------------------------------------------------------------
case("goto: continue and nested loops", function()
  local odd = {}
  for i = 1, 6 do
    if i % 2 == 0 then goto continue end
    odd[#odd + 1] = i
    ::continue::
  end
  eq(table.concat(odd, ","), "1,3,5")
  local found
  for i = 1, 3 do
    for j = 1, 3 do
      if i * j == 6 then found = i .. "x" .. j goto out end
    end
  end
  ::out::
  eq(found, "2x3")
end)

-- strings ----------------------------------------------------------------------------------------------
case("strings: format, rep, byte/char, sub with negatives, comparison", function()
  eq(string.format("%5.2f|%-4d|%x|%q", 3.14159, 7, 255, "a\nb"), " 3.14|7   |ff|\"a\\\nb\"")
  eq(string.format("%q", 1 / 0), "1e9999") eq(string.format("%q", math.mininteger), "0x8000000000000000")
  eq(string.format("%s %s", 1, 1.0), "1 1.0")
  eq(("ab"):rep(3, "-"), "ab-ab-ab")
  eq(("ab"):rep(0), "")
  eq(string.char(104, 105), "hi")
  local b1, b2 = ("hi"):byte(1, -1)
  eq(b1, 104) eq(b2, 105)
  eq(("hello"):sub(-3), "llo") eq(("hello"):sub(2, -2), "ell") eq(("hello"):sub(10), "")
  eq("a" < "b", true) eq("a\0b" < "a\0c", true) eq(#"a\0b", 3)
  eq(("%d"):format(3.0), "3")
  fails(function() return ("%d"):format(3.5) end, "number has no integer representation")
  eq(tostring(10 // 3), "3") eq(tostring(10 / 2), "5.0") eq(tostring(-0.0), "-0.0")
  eq(math.type(1), "integer") eq(math.type(1.0), "float") eq(math.type("1"), nil)
  eq("10" + 1, 11) eq("0x10" + 0, 16) eq("1e1" * 1, 10.0)
  eq(math.maxinteger + 1, math.mininteger)
  eq(tonumber("  12  "), 12) eq(tonumber("z", 36), 35) eq(tonumber("1e"), nil)
end)

-- patterns ---------------------------------------------------------------------------------------------
case("pm: captures, anchors, %b, %f, gsub with table and function, gmatch", function()
  eq(("hello world"):match("^(%w+)"), "hello")
  local k, v = ("key = value"):match("^(%w+)%s*=%s*(%w+)$")
  eq(k, "key") eq(v, "value")
  eq(("f(a(b)c)d"):match("%b()"), "(a(b)c)")
  eq(("THE (quick) fox"):gsub("%f[%a]%a+", function(w) return w:lower() end), "the (quick) fox")
  eq((("$x and $y"):gsub("%$(%w+)", { x = "1", y = "2" })), "1 and 2")
  local n = select(2, ("aaa"):gsub("a", "b"))
  eq(n, 3)
  eq((("abc"):gsub("", "-")), "-a-b-c-")
  local words = {}
  for w in ("one two  three"):gmatch("%a+") do words[#words + 1] = w end
  eq(#words, 3)
  eq(("x=1, y=2"):gsub("(%w+)=(%w+)", "%2=%1"), "1=x, 2=y")
  eq(("a.b"):find(".", 1, true), 2)
  eq(("[test]"):find("[", 1, true), 1)
  local s, e, cap = ("abc123"):find("(%d+)")
  eq(s, 4) eq(e, 6) eq(cap, "123")
  eq(("  trim  "):match("^%s*(.-)%s*$"), "trim")
  eq(("()"):match("()"), 1)  -- position capture
  fails(function() ("x"):find("[a") end, "malformed pattern")
  fails(function() ("x"):gsub("x", "%2") end, "invalid capture index")
end)

-- sort -------------------------------------------------------------------------------------------------
case("sort: default order, comparator, stability not promised, errors", function()
  local t = { 5, 2, 8, 1, 9, 3 }
  table.sort(t)
  eq(table.concat(t, ","), "1,2,3,5,8,9")
  table.sort(t, function(a, b) return a > b end)
  eq(table.concat(t, ","), "9,8,5,3,2,1")
  local words = { "pear", "Apple", "fig" }
  table.sort(words, function(a, b) return a:lower() < b:lower() end)
  eq(table.concat(words, ","), "Apple,fig,pear")
  fails(function() table.sort({ 1, "x", 2 }) end, "attempt to compare")
  local big = {}
  for i = 1, 1000 do big[i] = (i * 7919) % 1000 end
  table.sort(big)
  for i = 2, #big do assert(big[i - 1] <= big[i]) end
end)

-- string.pack ------------------------------------------------------------------------------------------
case("tpack: pack, unpack, packsize, limits", function()
  local p = string.pack(">I2 i4 z s1", 0x0102, -2, "zs", "len")
  eq(#p, 2 + 4 + 3 + 4)
  local a, b, c, d, nextpos = string.unpack(">I2 i4 z s1", p)
  eq(a, 0x0102) eq(b, -2) eq(c, "zs") eq(d, "len") eq(nextpos, #p + 1)
  eq(string.packsize("<i4 i8 d"), 20)
  eq(string.unpack("<i2", "\255\255"), -1)
  eq(string.unpack("<I2", "\255\255"), 65535)
  fails(function() string.pack("i1", 200) end, "overflow")
  fails(function() string.unpack(">I4", "ab") end, "data string too short")
  eq(string.pack("<d", 1.5):len(), 8)
  eq(string.unpack("<d", string.pack("<d", 0.1)), 0.1)
end)

-- utf8 -------------------------------------------------------------------------------------------------
case("utf8: char, codepoint, len (and where it fails), offset, codes", function()
  local s = utf8.char(72, 233, 8364, 128512)
  eq(s, "Hé€😀")
  eq(utf8.len(s), 4)
  local cps = { utf8.codepoint(s, 1, -1) }
  eq(#cps, 4) eq(cps[3], 8364)
  local bad, pos = utf8.len("ab\255c")
  eq(bad, nil) eq(pos, 3)
  eq(utf8.offset(s, 3), 4)
  local n = 0
  for _, c in utf8.codes(s) do n = n + c end
  eq(n, 72 + 233 + 8364 + 128512)
  fails(function() for _ in utf8.codes("a\255") do end end, "invalid UTF%-8 code")
  eq(#utf8.charpattern > 0, true)
end)

return cases
