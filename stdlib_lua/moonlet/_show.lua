--- Lua values written as Lua, for people (the console's output): `{ 1, 2, name = "x", [true] = 3 }`.
--
-- Rules:
-- 1. Only raw access (`next`, `rawget`, `type`, `%p`): no metamethod of the value runs, so showing an app's
--    value never runs app code (the console shows it on the main Lua thread, outside any task).
-- 2. Bounded: at most MAX_ITEMS entries a table (then `--[[ N more ]]`), MAX_DEPTH levels (then `{...}`),
--    MAX_STRING bytes a string (then `--[[ N more bytes ]]`); a table met again inside itself is `<cycle>`.
-- 3. What reads back reads back: strings are quoted with escapes for every control byte (`\n`, `\t`, `\0`,
--    `\x1B`...) and for bytes that are not UTF-8; floats keep their point (`1.0`), `math.huge`, `0/0`.
-- 4. The sequence part first (`1..n`), then the other keys, numbers then strings then the rest, sorted;
--    a table that does not fit on one line of WIDTH characters is written one entry a line, indented.
-- 5. An empty table whose metatable names it (`__name`, a sentinel such as `json.null`) is written as that
--    name: `{ note = json.null }`.
-- 6. Bounded in time too: a table's keys are counted up to MAX_COUNT (then `--[[ more than N ]]`), and one
--    value visits at most BUDGET keys in all (a table met 2,500 times is counted 2,500 times); past it,
--    tables are written `{--[[ not shown ]]}` (or `--[[ more, not counted ]]` at their end) and the text
--    ends with a comment that says it stopped.
-- @module moonlet._show
local type, next, rawget, tostring, tonumber, ipairs, format, concat, sort, byte, find, math_type, utf8_len =
  type, next, rawget, tostring, tonumber, ipairs, string.format, table.concat, table.sort, string.byte, string.find,
  math.type, utf8.len
local getmetatable = getmetatable

local M = {}

local MAX_ITEMS, MAX_DEPTH, MAX_STRING, WIDTH = 50, 4, 2000, 100
local MAX_COUNT, BUDGET = 10000, 200000
local left = BUDGET -- keys this showing may still visit (M.show resets it)

local KEYWORDS = {}
for word in ([[and break do else elseif end false for function goto if in local nil not or repeat return
  then true until while]]):gmatch("%a+") do KEYWORDS[word] = true end

local ESCAPES = { ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t", ["\\"] = "\\\\", ['"'] = '\\"',
  ["\a"] = "\\a", ["\b"] = "\\b", ["\f"] = "\\f", ["\v"] = "\\v" }

local function quote(s)
  local more = #s - MAX_STRING
  if more > 0 then s = s:sub(1, MAX_STRING) end
  local utf8_ok = utf8_len(s) ~= nil or more > 0 -- (a cut may split a character: judge by bytes then)
  local out = s:gsub('[%c"\\\128-\255]', function(c)
    local e = ESCAPES[c]
    if e then return e end
    local b = byte(c)
    if b >= 128 and utf8_ok then return c end
    return format("\\x%02X", b)
  end)
  out = '"' .. out .. '"'
  if more > 0 then out = out .. format(" --[[ %d more bytes ]]", more) end
  return out
end

local function number(n)
  if n ~= n then return "0/0" end
  if n == math.huge then return "math.huge" end
  if n == -math.huge then return "-math.huge" end
  if math_type(n) == "float" then -- the shortest text that reads back as the same number
    local s
    for digits = 14, 17 do
      s = format("%." .. digits .. "g", n)
      if tonumber(s) == n then break end
    end
    if not find(s, "[%.eE]") then s = s .. ".0" end
    return s
  end
  return tostring(n)
end

local ORDER = { number = 1, string = 2, boolean = 3 }

local function key_before(a, b)
  local ta, tb = type(a), type(b)
  if ta ~= tb then return (ORDER[ta] or 4) < (ORDER[tb] or 4) end
  if ta == "number" or ta == "string" then return a < b end
  if ta == "boolean" then return not a and b end
  return format("%p", a) < format("%p", b)
end

local show

local function key_text(k, seen, depth)
  if type(k) == "string" and find(k, "^[%a_][%w_]*$") and not KEYWORDS[k] then return k end
  return "[" .. show(k, seen, depth, "") .. "]"
end

local function table_text(t, seen, depth, indent)
  if seen[t] then return "<cycle>" end
  local mt = getmetatable(t) -- (a sentinel such as json.null: an empty table named by its metatable's __name)
  if type(mt) == "table" and type(rawget(mt, "__name")) == "string" and next(t) == nil then
    return rawget(mt, "__name")
  end
  if depth >= MAX_DEPTH then return next(t) == nil and "{}" or "{...}" end
  if left <= 0 then return "{--[[ not shown ]]}" end
  seen[t] = true
  local items, n = {}, 0
  while rawget(t, n + 1) ~= nil and n < MAX_ITEMS do
    n = n + 1
    items[n] = show(rawget(t, n), seen, depth + 1, indent .. "  ")
  end
  local sequence = n
  local keys, total, counted = {}, sequence, 0
  for k in next, t do
    counted = counted + 1
    if counted > MAX_COUNT or counted > left then break end
    if not (math_type(k) == "integer" and k >= 1 and k <= sequence) then
      total = total + 1
      if #keys + sequence < MAX_ITEMS then keys[#keys + 1] = k end
    end
  end
  local uncounted = counted > MAX_COUNT and "over" or counted > left and "budget"
  left = left - counted
  sort(keys, key_before)
  for _, k in ipairs(keys) do
    items[#items + 1] = key_text(k, seen, depth + 1) .. " = " .. show(rawget(t, k), seen, depth + 1, indent .. "  ")
  end
  local more = total - #items
  if uncounted then
    more = 1
    items[#items + 1] = uncounted == "over" and format("--[[ more than %d ]]", total - #items)
      or "--[[ more, not counted ]]"
  elseif more > 0 then
    items[#items + 1] = format("--[[ %d more ]]", more)
  end
  seen[t] = nil
  if #items == 0 then return "{}" end
  local line = "{ " .. concat(items, ", ") .. " }"
  if #line + #indent <= WIDTH and not find(line, "\n", 1, true) then return line end
  -- one entry a line; the sequence's one-line items share lines up to WIDTH
  local inner, lines, current, packing = indent .. "  ", {}, nil, false
  for i, item in ipairs(items) do
    local piece = item .. (i < #items and "," or "")
    local packs = (i <= sequence or (i == #items and more > 0)) and not find(item, "\n", 1, true)
    if current and packing and packs and #inner + #current + 1 + #piece <= WIDTH then
      current = current .. " " .. piece
    else
      if current then lines[#lines + 1] = inner .. current end
      current, packing = piece, packs
    end
    if find(item, "\n", 1, true) then lines[#lines + 1], current = inner .. current, nil end
  end
  if current then lines[#lines + 1] = inner .. current end
  return "{\n" .. concat(lines, "\n") .. "\n" .. indent .. "}"
end

function show(v, seen, depth, indent)
  local kind = type(v)
  if kind == "string" then return quote(v) end
  if kind == "number" then return number(v) end
  if kind == "table" then return table_text(v, seen, depth, indent) end
  if kind == "nil" or kind == "boolean" then return tostring(v) end
  return format("<%s: %p>", kind, v) -- (functions, coroutines, host handles: never their __tostring)
end

--- `v` written as Lua source (see the rules above).
---@param v any
---@return string
function M.show(v)
  left = BUDGET
  local text = show(v, {}, 0, "")
  if left <= 0 then text = text .. format(" --[[ stopped after visiting %d keys ]]", BUDGET) end
  return text
end

return M
