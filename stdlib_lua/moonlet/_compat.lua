--- What LuaJIT 2.1 lacks of Lua 5.4, as far as moonlet's stdlib and its apps need it. Private to the stdlib.
--
-- Run once per Lua state by _bootstrap.lua, before any other module, with the privileged globals; on Lua
-- 5.4 it changes nothing. On LuaJIT it adds, for the stdlib and app code alike:
--
--   * table.pack, table.unpack, rawlen; math.type and math.tointeger, which call a number "integer" when
--     it is integral and within 64 bits (LuaJIT's numbers are doubles: integers are exact up to 2^53);
--   * utf8.char, utf8.charpattern, utf8.codepoint, utf8.codes, utf8.len, as strict as Lua 5.4's (no
--     surrogates, nothing above U+10FFFF, no overlong forms);
--   * string.pack and string.unpack for whole integers only ("[<>=]" then "I" or "i" with a size of 1-8,
--     repeated), which is what binary protocols frame with; any other format is an error that says so;
--   * coroutine.close, which ends a suspended coroutine for good (status "dead", resume refused) but cannot
--     close its to-be-closed variables: LuaJIT has none.
--
-- Not added, so that a program needing them fails where it names them instead of computing wrong numbers:
-- math.maxinteger, math.mininteger, math.ult, utf8.offset, and the syntax LuaJIT cannot parse (`//`, bit
-- operators, `<const>`, `<close>`). An app that needs them says so in its first comment lines
-- (`-- moonlet: engine lua54`) and gets a clear error on LuaJIT. The stdlib's own `<const>` locals are taken
-- out of its source as it loads on LuaJIT (_bootstrap.lua); it uses none of the rest.
--
-- `finalized(t, mt)` is setmetatable for tables whose metatable has a `__gc` (host handles): LuaJIT runs
-- `__gc` only for userdata, so there the table also holds a userdata whose finalizer calls it.
local G = ...
local M = {}

M.engine = G.jit and "luajit" or "lua54"

if not G.jit then
  M.finalized = G.setmetatable
  return M
end

local type, select, error, tonumber, setmetatable = G.type, G.select, G.error, G.tonumber, G.setmetatable
local floor = G.math.floor
local byte, char, format, gsub = G.string.byte, G.string.char, G.string.format, G.string.gsub
local concat = G.table.concat
local newproxy, getmetatable = G.newproxy, G.getmetatable

G.table.pack = function(...) return { n = select("#", ...), ... } end
G.table.unpack = G.unpack
G.rawlen = function(v)
  local t = type(v)
  if t ~= "table" and t ~= "string" then
    error("table or string expected", 2)
  end
  return #v -- (LuaJIT's # on a table never calls __len)
end

local TWO63 = 2 ^ 63

local function math_type(x)
  if type(x) ~= "number" then return nil end
  if x == floor(x) and x >= -TWO63 and x < TWO63 then return "integer" end
  return "float"
end
G.math.type = math_type

G.math.tointeger = function(x)
  if type(x) == "string" then x = tonumber(x) end
  if math_type(x) == "integer" then return x end
  return nil
end

---------------------------------------------------------------------------------------------------------
-- utf8

local utf8 = { charpattern = "[\0-\x7F\xC2-\xFD][\x80-\xBF]*" }
G.utf8 = utf8

local function encode(code)
  if type(code) ~= "number" or code < 0 or code > 0x7FFFFFFF or code ~= floor(code) then
    error("bad argument to 'char' (value out of range)", 3)
  end
  if code < 0x80 then return char(code) end
  if code < 0x800 then return char(0xC0 + floor(code / 64), 0x80 + code % 64) end
  if code < 0x10000 then
    return char(0xE0 + floor(code / 4096), 0x80 + floor(code / 64) % 64, 0x80 + code % 64)
  end
  return char(0xF0 + floor(code / 262144), 0x80 + floor(code / 4096) % 64, 0x80 + floor(code / 64) % 64,
    0x80 + code % 64)
end

function utf8.char(...)
  local out = {}
  for i = 1, select("#", ...) do out[i] = encode((select(i, ...))) end
  return concat(out)
end

-- The code point starting at byte i of s and the index after it; nil if none starts there (strict).
local function decode(s, i)
  local c = byte(s, i)
  if c == nil then return nil end
  if c < 0x80 then return c, i + 1 end
  local n, code, low
  if c >= 0xF0 and c <= 0xF4 then
    n, code, low = 3, c - 0xF0, 0x10000
  elseif c >= 0xE0 then
    if c > 0xEF then return nil end
    n, code, low = 2, c - 0xE0, 0x800
  elseif c >= 0xC2 then
    n, code, low = 1, c - 0xC0, 0x80
  else
    return nil
  end
  for k = 1, n do
    local b = byte(s, i + k)
    if b == nil or b < 0x80 or b > 0xBF then return nil end
    code = code * 64 + (b - 0x80)
  end
  if code < low or code > 0x10FFFF or (code >= 0xD800 and code <= 0xDFFF) then return nil end
  return code, i + n + 1
end

local function position(i, len, default)
  if i == nil then return default end
  if i < 0 then i = len + i + 1 end
  return i
end

function utf8.len(s, i, j)
  if type(s) ~= "string" then error("bad argument #1 to 'len' (string expected, got " .. type(s) .. ")", 2) end
  local len = #s
  i, j = position(i, len, 1), position(j, len, -1)
  if j < 0 then j = len + j + 1 end
  local n = 0
  while i <= j do
    local _, after = decode(s, i)
    if not after then return nil, i end
    n, i = n + 1, after
  end
  return n
end

function utf8.codepoint(s, i, j)
  local len = #s
  i = position(i, len, 1)
  j = position(j, len, i)
  local out, n = {}, 0
  while i <= j do
    local code, after = decode(s, i)
    if not code then error("invalid UTF-8 code", 2) end
    n = n + 1
    out[n] = code
    i = after
  end
  return G.unpack(out, 1, n)
end

function utf8.codes(s)
  local i = 1
  return function()
    if i > #s then return nil end
    local code, after = decode(s, i)
    if not code then error("invalid UTF-8 code", 2) end
    local at = i
    i = after
    return at, code
  end
end

---------------------------------------------------------------------------------------------------------
-- string.pack / string.unpack for whole integers

-- The items of a format: a list of {size, signed}, and whether it is little-endian.
local function items(fmt, fn)
  if type(fmt) ~= "string" then error("bad argument #1 to '" .. fn .. "' (string expected)", 3) end
  local little, list = false, {}
  local rest = gsub(fmt, "([<>=]?)([Ii])(%d*)", function(order, kind, size)
    if order == "<" or order == "=" then little = true elseif order == ">" then little = false end
    size = tonumber(size) or 4
    if size < 1 or size > 8 then error("integral size (" .. size .. ") out of limits [1,8]", 4) end
    list[#list + 1] = { size, kind == "i" }
    return ""
  end)
  if rest ~= "" then
    error(format("format %q is not supported by string.%s on LuaJIT (whole integers only: [<>=] and I or i "
      .. "with a size 1-8; run the app with --engine lua54)", fmt, fn), 3)
  end
  return list, little
end

function G.string.pack(fmt, ...)
  local list, little = items(fmt, "pack")
  local out = {}
  for k = 1, #list do
    local size, signed = list[k][1], list[k][2]
    local v = select(k, ...)
    if math_type(v) ~= "integer" then
      error("bad argument #" .. (k + 1) .. " to 'pack' (number has no integer representation)", 2)
    end
    local limit = 2 ^ (8 * size)
    if size < 8 and (v < -limit / 2 or v >= (signed and limit / 2 or limit)) then
      error("bad argument #" .. (k + 1) .. " to 'pack' (integer overflow)", 2)
    end
    if v < 0 then v = v + limit end
    local bytes = {}
    for b = 1, size do
      local digit = v % 256
      bytes[little and b or size - b + 1] = char(digit)
      v = (v - digit) / 256
    end
    out[k] = concat(bytes)
  end
  return concat(out)
end

function G.string.unpack(fmt, s, pos)
  local list, little = items(fmt, "unpack")
  pos = pos or 1
  local out = {}
  for k = 1, #list do
    local size, signed = list[k][1], list[k][2]
    if pos + size - 1 > #s then error("bad argument #2 to 'unpack' (data string too short)", 2) end
    local v = 0
    for b = 1, size do
      v = v * 256 + byte(s, little and pos + size - b or pos + b - 1)
    end
    if signed and v >= 2 ^ (8 * size - 1) then v = v - 2 ^ (8 * size) end
    out[k] = v
    pos = pos + size
  end
  out[#list + 1] = pos
  return G.unpack(out, 1, #list + 1)
end

---------------------------------------------------------------------------------------------------------
-- coroutine.close

local co_status, co_resume = G.coroutine.status, G.coroutine.resume
local closed = setmetatable({}, { __mode = "k" })

G.coroutine.status = function(co)
  if closed[co] then return "dead" end
  return co_status(co)
end

G.coroutine.resume = function(co, ...)
  if closed[co] then return false, "cannot resume dead coroutine" end
  return co_resume(co, ...)
end

G.coroutine.close = function(co)
  if type(co) ~= "thread" then
    error("bad argument #1 to 'close' (coroutine expected, got " .. type(co) .. ")", 2)
  end
  local s = co_status(co)
  if s == "running" or s == "normal" then error("cannot close a " .. s .. " coroutine", 2) end
  closed[co] = true
  return true
end

---------------------------------------------------------------------------------------------------------
-- finalizers

local PROXY = {} -- the key of a table's finalizing userdata

function M.finalized(t, mt)
  setmetatable(t, mt)
  local gc = mt.__gc
  if gc then
    local proxy = newproxy(true)
    getmetatable(proxy).__gc = function() gc(t) end
    t[PROXY] = proxy
  end
  return t
end

return M
