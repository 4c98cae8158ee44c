-- BER (X.690 basic encoding rules) for SNMP: the few universal and SNMP application types, decoded from a
-- datagram with every length checked against what is there, and encoded back. Used by apps/snmp.lua.
--
-- A decoded value is {tag = byte, value = ...}: INTEGER -> integer, OCTET STRING and IpAddress -> string,
-- OBJECT IDENTIFIER -> array of integers, NULL and the exceptions -> true, Counter32/Gauge32/TimeTicks/
-- Counter64 -> integer (Counter64 as its 64 bits), SEQUENCE and the PDUs -> array of decoded values.
-- decode() raises a string error on anything malformed (the caller drops the datagram).
local byte, char, sub, concat = string.byte, string.char, string.sub, table.concat
local error = error

local M = {}

M.INTEGER, M.OCTET_STRING, M.NULL, M.OID, M.SEQUENCE = 0x02, 0x04, 0x05, 0x06, 0x30
M.IP_ADDRESS, M.COUNTER32, M.GAUGE32, M.TIMETICKS, M.OPAQUE, M.COUNTER64 = 0x40, 0x41, 0x42, 0x43, 0x44, 0x46
M.NO_SUCH_OBJECT, M.NO_SUCH_INSTANCE, M.END_OF_MIB_VIEW = 0x80, 0x81, 0x82
M.GET, M.GET_NEXT, M.RESPONSE, M.SET, M.TRAP_V1, M.GET_BULK, M.INFORM, M.TRAP, M.REPORT =
  0xA0, 0xA1, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7, 0xA8

local CONSTRUCTED = { [0x30] = true, [0xA0] = true, [0xA1] = true, [0xA2] = true, [0xA3] = true, [0xA4] = true,
  [0xA5] = true, [0xA6] = true, [0xA7] = true, [0xA8] = true }
local UNSIGNED = { [0x41] = true, [0x42] = true, [0x43] = true, [0x46] = true }
local MAX_DEPTH = 8

-- decoding ------------------------------------------------------------------------------------------------

local decode_at

local function read_length(s, pos, limit)
  local b = byte(s, pos)
  if b == nil or pos > limit then error("truncated length", 0) end
  if b < 0x80 then return b, pos + 1 end
  local n = b - 0x80
  if n == 0 or n > 4 then error("unsupported length form", 0) end -- (0: indefinite, not in SNMP)
  if pos + n > limit then error("truncated length", 0) end
  local len = 0
  for i = 1, n do len = len * 256 + byte(s, pos + i) end
  return len, pos + 1 + n
end

local function decode_integer(s, from, to, unsigned)
  local n = to - from + 1
  if n < 1 or n > 9 or (n == 9 and (not unsigned or byte(s, from) ~= 0)) then error("bad integer", 0) end
  local v = byte(s, from)
  if v >= 0x80 and not unsigned then v = v - 256 end
  for i = from + 1, to do v = (v << 8) | byte(s, i) end
  return v
end

local function decode_oid(s, from, to)
  if to < from then error("empty object identifier", 0) end
  local out, sub_id, n = {}, 0, 0
  for i = from, to do
    local b = byte(s, i)
    if sub_id > 0x1FFFFFF then error("object identifier part too large", 0) end
    sub_id = (sub_id << 7) | (b & 0x7F)
    if b < 0x80 then
      if n == 0 then
        local first = sub_id < 80 and sub_id // 40 or 2
        out[1], out[2], n = first, sub_id - 40 * first, 2
      else
        n = n + 1
        out[n] = sub_id
      end
      if n > 128 then error("object identifier too long", 0) end
      sub_id = 0
    end
  end
  if byte(s, to) >= 0x80 then error("truncated object identifier", 0) end
  return out
end

decode_at = function(s, pos, limit, depth)
  local tag = byte(s, pos)
  if tag == nil or pos > limit then error("truncated", 0) end
  local len, start = read_length(s, pos + 1, limit)
  local stop = start + len - 1
  if stop > limit then error("length past the end", 0) end
  local value
  if CONSTRUCTED[tag] then
    if depth >= MAX_DEPTH then error("nested too deep", 0) end
    value = {}
    local p = start
    while p <= stop do
      local item
      item, p = decode_at(s, p, stop, depth + 1)
      value[#value + 1] = item
    end
  elseif tag == 0x02 then value = decode_integer(s, start, stop, false)
  elseif UNSIGNED[tag] then value = decode_integer(s, start, stop, true)
  elseif tag == 0x04 or tag == 0x40 or tag == 0x44 then value = sub(s, start, stop)
  elseif tag == 0x06 then value = decode_oid(s, start, stop)
  elseif tag == 0x05 or tag == 0x80 or tag == 0x81 or tag == 0x82 then
    if len ~= 0 then error("null with content", 0) end
    value = true
  else
    error(("unknown tag 0x%02X"):format(tag), 0)
  end
  return { tag = tag, value = value }, stop + 1
end

--- Decode one value that fills `s` exactly.
function M.decode(s)
  local v, nxt = decode_at(s, 1, #s, 0)
  if nxt ~= #s + 1 then error("bytes after the message", 0) end
  return v
end

-- encoding ------------------------------------------------------------------------------------------------

local function length(n)
  if n < 0x80 then return char(n) end
  if n < 0x100 then return char(0x81, n) end
  if n < 0x10000 then return char(0x82, n >> 8, n & 0xFF) end
  return char(0x83, n >> 16, (n >> 8) & 0xFF, n & 0xFF)
end

--- A TLV from a tag byte and the encoded contents.
function M.tlv(tag, contents)
  return char(tag) .. length(#contents) .. contents
end

--- An INTEGER (signed, minimal two's complement) or, with an unsigned application tag (Counter32, Gauge32,
--- TimeTicks, Counter64), the unsigned value of the integer's 64 bits, with a leading 0 when needed.
function M.integer(v, tag)
  tag = tag or 0x02
  local out = {}
  if UNSIGNED[tag] then
    repeat
      table.insert(out, 1, v & 0xFF)
      v = v >> 8 -- (logical)
    until v == 0
    if out[1] >= 0x80 then table.insert(out, 1, 0) end
  else
    while true do
      local b = v & 0xFF
      table.insert(out, 1, b)
      v = v // 256 -- (arithmetic)
      if (v == 0 and b < 0x80) or (v == -1 and b >= 0x80) then break end
    end
  end
  return M.tlv(tag, char(table.unpack(out)))
end

function M.octets(s, tag) return M.tlv(tag or 0x04, s) end
function M.null(tag) return char(tag or 0x05, 0) end

-- One subidentifier: base 128, most significant group first, every byte but the last with its high bit set.
local function subidentifier(v)
  local chunk = { char(v & 0x7F) }
  v = v >> 7
  while v > 0 do
    table.insert(chunk, 1, char(0x80 | (v & 0x7F)))
    v = v >> 7
  end
  return concat(chunk)
end

function M.oid(parts)
  -- the first two arcs share the first subidentifier, 40 * X + Y, which is any size when X is 2 (2.999.1
  -- is 1079: two bytes, as every other subidentifier past 127)
  local out = { subidentifier(40 * parts[1] + (parts[2] or 0)) }
  for i = 3, #parts do out[#out + 1] = subidentifier(parts[i]) end
  return M.tlv(0x06, concat(out))
end

function M.sequence(items, tag) return M.tlv(tag or 0x30, concat(items)) end

--- A decoded value encoded again (a request's varbinds echoed in an error response).
function M.encode(v)
  local tag = v.tag
  if CONSTRUCTED[tag] then
    local items = {}
    for i, item in ipairs(v.value) do items[i] = M.encode(item) end
    return M.sequence(items, tag)
  elseif tag == 0x02 or UNSIGNED[tag] then return M.integer(v.value, tag)
  elseif tag == 0x06 then return M.oid(v.value)
  elseif v.value == true then return M.null(tag)
  end
  return M.octets(v.value, tag)
end

--- An OID as "1.3.6..." text, and back (nil for text that is not one).
function M.oid_text(parts) return concat(parts, ".") end
function M.parse_oid(text)
  local parts = {}
  for n in text:gmatch("[^.]+") do
    local v = math.tointeger(tonumber(n))
    if v == nil or v < 0 then return nil end
    parts[#parts + 1] = v
  end
  return #parts >= 2 and parts or nil
end

--- Compare two OIDs (arrays): -1, 0 or 1.
function M.compare(a, b)
  local n = #a < #b and #a or #b
  for i = 1, n do
    if a[i] ~= b[i] then return a[i] < b[i] and -1 or 1 end
  end
  if #a == #b then return 0 end
  return #a < #b and -1 or 1
end

return M
