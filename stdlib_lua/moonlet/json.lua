--- JSON: encode Lua values, decode JSON text.
--
--     local json = require "moonlet.json"
--     json.encode({ id = 7, tags = { "a", "b" }, note = json.null })  --> {"id":7,"note":null,"tags":["a","b"]}
--     local v = json.decode('{"ok": true, "n": [1, 2.5]}')            --> { ok = true, n = { 1, 2.5 } }
--
-- A table is an array when its keys are exactly 1..n (an empty table is an empty array; use json.object()
-- for an empty object), otherwise an object with string keys (sorted, so output is stable). `json.null`
-- stands for null both ways. Errors: encode raises on a value JSON cannot hold (a function, a cycle, NaN);
-- decode returns nil, "json: <reason> at byte <n>".
-- @module moonlet.json
local type, error, pairs, tostring, tonumber, setmetatable, pcall = type, error, pairs, tostring, tonumber,
  setmetatable, pcall
local concat, sort, byte, find, sub, format = table.concat, table.sort, string.byte, string.find, string.sub,
  string.format
local floor, huge, mtype = math.floor, math.huge, math.type

local M = {}

M.null = setmetatable({}, { __tostring = function() return "null" end, __name = "json.null" })
local OBJECT = {} -- metatable marking a table as an object even when empty

--- An empty (or given) table that encodes as an object.
--- Example: `json.encode(json.object({})) --> {}`
function M.object(t)
  return setmetatable(t or {}, OBJECT)
end

local ESCAPES = { ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f", ["\n"] = "\\n", ["\r"] = "\\r",
  ["\t"] = "\\t" }
local function escape(s)
  return '"' .. s:gsub('[%c"\\]', function(c) return ESCAPES[c] or format("\\u%04x", byte(c)) end) .. '"'
end

local function is_array(t)
  if getmetatable(t) == OBJECT then return false end
  local n = #t
  for k in pairs(t) do
    if type(k) ~= "number" or k < 1 or k > n or floor(k) ~= k then return false end
  end
  return true
end

local function encode(v, out, seen)
  local tv = type(v)
  if v == nil or v == M.null then out[#out + 1] = "null"
  elseif tv == "boolean" then out[#out + 1] = v and "true" or "false"
  elseif tv == "number" then
    if v ~= v or v == huge or v == -huge then error("json: cannot encode " .. tostring(v), 0) end
    if mtype(v) == "integer" then
      out[#out + 1] = tostring(v)
    else -- the shortest of 15, 16, 17 significant digits that reads back as the same number (0.1, not
      -- 0.10000000000000001)
      local text = format("%.15g", v)
      if tonumber(text) ~= v then
        text = format("%.16g", v)
        if tonumber(text) ~= v then text = format("%.17g", v) end
      end
      out[#out + 1] = text
    end
  elseif tv == "string" then out[#out + 1] = escape(v)
  elseif tv == "table" then
    if seen[v] then error("json: cannot encode a cycle", 0) end
    seen[v] = true
    if is_array(v) then
      out[#out + 1] = "["
      for i = 1, #v do
        if i > 1 then out[#out + 1] = "," end
        encode(v[i], out, seen)
      end
      out[#out + 1] = "]"
    else
      local keys = {}
      for k in pairs(v) do
        if type(k) ~= "string" then error("json: object keys must be strings, got " .. type(k), 0) end
        keys[#keys + 1] = k
      end
      sort(keys)
      out[#out + 1] = "{"
      for i, k in ipairs(keys) do
        if i > 1 then out[#out + 1] = "," end
        out[#out + 1] = escape(k)
        out[#out + 1] = ":"
        encode(v[k], out, seen)
      end
      out[#out + 1] = "}"
    end
    seen[v] = nil
  else
    error("json: cannot encode a " .. tv, 0)
  end
end

--- JSON text for `value`.
---@param value any
---@return string
function M.encode(value)
  local out = {}
  encode(value, out, {})
  return concat(out)
end

-- decoding: a recursive descent over the string, positions are byte indexes
local decode_value

local function fail(pos, what) error({ json = "json: " .. what .. " at byte " .. pos }, 0) end

local function skip(s, pos)
  local _, e = find(s, "^[ \t\r\n]*", pos)
  return e + 1
end

local utf8_char = utf8.char

local UNESCAPE = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }

local function decode_string(s, pos) -- pos at the opening quote
  local parts, i = {}, pos + 1
  while true do
    local j = find(s, '["\\%c]', i)
    if not j then fail(pos, "unterminated string") end
    parts[#parts + 1] = sub(s, i, j - 1)
    local c = sub(s, j, j)
    if c == '"' then return concat(parts), j + 1 end
    if c ~= "\\" then fail(j, "control character in string") end
    local e = sub(s, j + 1, j + 1)
    if e == "u" then
      local hex = sub(s, j + 2, j + 5)
      local code = #hex == 4 and tonumber(hex, 16)
      if not code then fail(j, "bad \\u escape") end
      i = j + 6
      if code >= 0xD800 and code <= 0xDBFF and sub(s, i, i + 1) == "\\u" then -- a surrogate pair
        local low = tonumber(sub(s, i + 2, i + 5), 16)
        if low and low >= 0xDC00 and low <= 0xDFFF then
          code = 0x10000 + (code - 0xD800) * 1024 + (low - 0xDC00)
          i = i + 6
        end
      end
      parts[#parts + 1] = utf8_char(code)
    else
      local u = UNESCAPE[e]
      if not u then fail(j, "bad escape") end
      parts[#parts + 1] = u
      i = j + 2
    end
  end
end

decode_value = function(s, pos, depth)
  if depth > 200 then fail(pos, "too deeply nested") end
  pos = skip(s, pos)
  local c = sub(s, pos, pos)
  if c == "{" then
    local obj = {}
    pos = skip(s, pos + 1)
    if sub(s, pos, pos) == "}" then return M.object(obj), pos + 1 end
    while true do
      if sub(s, pos, pos) ~= '"' then fail(pos, "expected a string key") end
      local key
      key, pos = decode_string(s, pos)
      pos = skip(s, pos)
      if sub(s, pos, pos) ~= ":" then fail(pos, "expected ':'") end
      obj[key], pos = decode_value(s, pos + 1, depth + 1)
      pos = skip(s, pos)
      local d = sub(s, pos, pos)
      if d == "}" then return obj, pos + 1 end
      if d ~= "," then fail(pos, "expected ',' or '}'") end
      pos = skip(s, pos + 1)
    end
  elseif c == "[" then
    local arr, n = {}, 0
    pos = skip(s, pos + 1)
    if sub(s, pos, pos) == "]" then return arr, pos + 1 end
    while true do
      n = n + 1
      arr[n], pos = decode_value(s, pos, depth + 1)
      pos = skip(s, pos)
      local d = sub(s, pos, pos)
      if d == "]" then return arr, pos + 1 end
      if d ~= "," then fail(pos, "expected ',' or ']'") end
      pos = pos + 1
    end
  elseif c == '"' then
    return decode_string(s, pos)
  elseif find(s, "^true", pos) then return true, pos + 4
  elseif find(s, "^false", pos) then return false, pos + 5
  elseif find(s, "^null", pos) then return M.null, pos + 4
  else
    local num = s:match("^-?%d+%.?%d*[eE]?[-+]?%d*", pos)
    local v = num and tonumber(num)
    if not v then fail(pos, c == "" and "unexpected end" or "unexpected '" .. c .. "'") end
    return v, pos + #num
  end
end

--- The value in JSON text `s`, or nil, "json: <reason> at byte <n>".
---@param s string
---@return any value
---@return string? err
function M.decode(s)
  if type(s) ~= "string" then error("bad argument #1 to 'decode' (string expected)", 2) end
  local ok, v, pos = pcall(decode_value, s, 1, 0)
  if not ok then
    if type(v) == "table" and v.json then return nil, v.json end
    error(v, 0)
  end
  pos = skip(s, pos)
  if pos <= #s then return nil, "json: trailing characters at byte " .. pos end
  return v
end

return M
