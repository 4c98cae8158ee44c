-- A memcached-compatible cache server (the text protocol), in memory, with a memory limit and LRU eviction.
-- Works with memcached clients (pymemcache, libmemcached's tools: `memccapable -a` passes).
-- moonlet: engine lua54 (incr/decr and CAS values are 64-bit unsigned, as memcached's)
--
-- Run:   moonlet run apps/memcache.lua [--port 11212] [--host 127.0.0.1] [--memory 64] (MiB)
-- Session (C: client, S: server):
--   C: set greeting 5 60 5          (key, 32-bit flags, exptime, bytes)
--   C: hello
--   S: STORED
--   C: get greeting
--   S: VALUE greeting 5 5
--   S: hello
--   S: END
--   C: incr counter 1
--   S: NOT_FOUND
--
-- Commands: get gets gat gats (many keys), set add replace append prepend cas, delete, incr decr (64-bit
-- unsigned: incr wraps, decr stops at 0), touch, flush_all [delay], version, stats, verbosity, quit, with
-- `noreply`. exptime: 0 never, up to 30 days relative, beyond that a unix time, negative already expired.
-- Items up to 1 MiB (key, value and ~50 bytes of bookkeeping), else SERVER_ERROR object too large for cache;
-- past --memory the least recently used items are evicted; --memory counts what the items cost in the Lua
-- heap (their bytes and ~300 more each), so the process stays near it. A get naming many items streams them.
-- Bad input gets ERROR or CLIENT_ERROR as memcached words it, and the connection goes on.
local net = require "moonlet.net"
local log = require "moonlet.log"
local time = require "moonlet.time"
local opts = require("moonlet.args").parse(arg, { port = 11212, host = "127.0.0.1", memory = 64 })
require("moonlet.workers").single("the cache is a Lua table in this process")

local byte, sub, find, match, concat = string.byte, string.sub, string.find, string.match, table.concat
local tointeger, tostring, floor = math.tointeger, tostring, math.floor
local wall = time.now

local VERSION = "1.6.18-moonlet"
local MAX_ITEM = 1024 * 1024     -- an item's key, value and overhead
local OVERHEAD = 50              -- bytes an item's size limit counts beside key and value (memcached's header)
local ITEM_COST = 300            -- Lua heap an item costs beside its key's and value's bytes (measured: see
                                 -- tests/test_memcache.py, which holds the heap to --memory)
local MAX_KEY = 250
local MAX_LINE = 2048            -- a command line (get with many keys may be longer: see read_line)
local RELATIVE_LIMIT = 60 * 60 * 24 * 30 -- exptimes above this are unix times
local limit_bytes = math.max(1, tointeger(opts.memory) or 64) * 1024 * 1024

---------------------------------------------------------------------------------------------------------
-- the store: items by key, in a doubly linked list from most to least recently used

-- key -> item: an array (its slots are 16 bytes each; named fields cost a 32-byte node each, in a hash part
-- rounded up to a power of two: 557 bytes an item against 312)
local items = {}
local KEY <const>, VALUE <const>, FLAGS <const>, EXPTIME <const>, CAS <const> = 1, 2, 3, 4, 5
local STORED <const>, HEAD <const>, NEWER <const>, OLDER <const> = 6, 7, 8, 9 -- (exptime: 0 or unix s;
-- stored: when, if a flush_all was pending; head: what VALUE lines say after the key)
local newest, oldest = nil, nil
local used, count, next_cas = 0, 0, 0
local flush_at = nil      -- flush_all: items stored before this time are gone once it has come
local started = wall()
-- (the counters of the hot paths are locals; the others live in `stats`)
local cmd_get, cmd_set, get_hits, get_misses = 0, 0, 0, 0
local stats = { cmd_touch = 0, cmd_flush = 0, get_expired = 0, delete_hits = 0, delete_misses = 0,
  incr_hits = 0, incr_misses = 0, decr_hits = 0, decr_misses = 0, cas_hits = 0, cas_misses = 0, cas_badval = 0,
  touch_hits = 0, touch_misses = 0, evictions = 0, total_items = 0, curr_connections = 0, total_connections = 0 }

-- what an item counts against --memory
local function cost(it) return #it[KEY] + #it[VALUE] + ITEM_COST end

local function unlink(it)
  if it[NEWER] then it[NEWER][OLDER] = it[OLDER] else newest = it[OLDER] end
  if it[OLDER] then it[OLDER][NEWER] = it[NEWER] else oldest = it[NEWER] end
  it[NEWER], it[OLDER] = nil, nil
end

local function push_newest(it)
  it[OLDER], it[NEWER] = newest, nil
  if newest then newest[NEWER] = it end
  newest = it
  if oldest == nil then oldest = it end
end

local function remove(it)
  unlink(it)
  items[it[KEY]] = nil
  used, count = used - cost(it), count - 1
end

-- (the clock is read only for items that can expire, or while a flush_all is pending: most gets need none)
local function dead(it)
  if it[EXPTIME] == 0 and flush_at == nil then return false end
  local now = wall()
  return (it[EXPTIME] ~= 0 and it[EXPTIME] <= now) or (flush_at ~= nil and flush_at <= now and it[STORED] <= flush_at)
end

-- The live item of key (touched as most recently used), or nil.
local function find_item(key)
  local it = items[key]
  if it == nil then return nil end
  if dead(it) then
    remove(it)
    return nil
  end
  if newest ~= it then
    unlink(it)
    push_newest(it)
  end
  return it
end

-- An absolute expiry (unix seconds, 0 for never) from a protocol exptime; negative or past: already due.
local function expiry(exptime, now)
  if exptime == 0 then return 0 end
  if exptime < 0 then return now - 1 end
  if exptime <= RELATIVE_LIMIT then return now + exptime end
  if exptime <= now then return now - 1 end
  return exptime
end

local function store(key, value, flags, exp, now)
  local old = items[key]
  if old then remove(old) end
  next_cas = next_cas + 1
  local it = { key, value, flags, exp, next_cas, flush_at and now or 0, " " .. flags .. " " .. #value }
  items[key] = it
  push_newest(it)
  used, count = used + cost(it), count + 1
  stats.total_items = stats.total_items + 1
  while used > limit_bytes and oldest and oldest ~= it do -- evict from the least recently used end
    local victim = oldest
    if not dead(victim) then stats.evictions = stats.evictions + 1 end
    remove(victim)
  end
  return it
end

---------------------------------------------------------------------------------------------------------
-- parsing

local ERROR, BAD_FORMAT = "ERROR\r\n", "CLIENT_ERROR bad command line format\r\n"

-- memcached's tokenizer: words between spaces (runs of spaces are one separator)
local function tokens(line)
  local t, n, i, len = {}, 0, 1, #line
  while i <= len do
    local s = find(line, " ", i, true)
    if s == nil then
      n = n + 1; t[n] = sub(line, i)
      break
    end
    if s > i then n = n + 1; t[n] = sub(line, i, s - 1) end
    i = s + 1
  end
  return t, n
end

-- Unsigned 64-bit numbers in Lua's signed integers (the same 64 bits; + and - wrap as unsigned ones do):
-- from decimal text (at most 2^64 - 1), and back to decimal text.
local function to_u64(s)
  local n = 0
  for i = 1, #s do n = n * 10 + (byte(s, i) - 48) end
  return n
end

local function u64_text(n)
  if n >= 0 then return tostring(n) end
  local q = (n >> 1) // 5 -- n // 10 as unsigned: halve with a logical shift first
  return tostring(q) .. tostring(n - q * 10)
end

-- A number as memcached reads one (C's strtol/strtoul in its safe_ wrappers): blanks, a sign, decimal
-- digits, then nothing or a blank; nil past the 64-bit range (and for a negative unsigned, but -0).
local U64_MAX, I64_MAX = "18446744073709551615", "9223372036854775807"
local function c_number(s, unsigned)
  if s == nil then return nil end
  local sign, digits, rest = s:match("^%s*([+-]?)(%d+)(.*)$")
  if digits == nil or (rest ~= "" and not find(rest, "^%s")) then return nil end
  digits = digits:match("^0*(%d-)$")
  if digits == "" then return 0 end
  if unsigned then
    if sign == "-" or #digits > 20 or (#digits == 20 and digits > U64_MAX) then return nil end
    return to_u64(digits)
  end
  if #digits > 19 or (#digits == 19 and digits > I64_MAX) then
    if sign == "-" and digits == "9223372036854775808" then return math.mininteger end
    return nil
  end
  local n = tointeger(tonumber(digits))
  return sign == "-" and -n or n
end

-- memcached keeps flags in 32 bits, and exptimes and lengths in signed 32 bits: the low bits of what it read
local function low32(n) return n & 0xFFFFFFFF end
local function int32(n)
  n = n & 0xFFFFFFFF
  return n >= 0x80000000 and n - 0x100000000 or n
end

local function signed32(s)
  local n = c_number(s, false)
  return n and int32(n)
end

-- A key: up to 250 bytes; any but space and newline (the text protocol's separators), as memcached takes them
local function valid_key(k)
  return k ~= nil and #k <= MAX_KEY
end

---------------------------------------------------------------------------------------------------------
-- commands: each returns the reply ("" for none)

-- get/gets/gat/gats: each item is written as it is found, so a reply naming a big item many times is never
-- held whole (memcached streams it too); conn:write waits while the client has not taken 64 KiB of it.
local function retrieval(conn, t, n, with_cas, touch_exp)
  local first = touch_exp and 3 or 2
  if n < 2 then return ERROR end -- (gat with an exptime and no key answers END, as memcached)
  for i = first, n do
    if #t[i] > MAX_KEY then return BAD_FORMAT end
  end
  for i = first, n do
    local key = t[i]
    cmd_get = cmd_get + 1
    if touch_exp then stats.cmd_touch = stats.cmd_touch + 1 end
    local it = find_item(key)
    if it then
      get_hits = get_hits + 1
      if touch_exp then it[EXPTIME] = touch_exp; stats.touch_hits = stats.touch_hits + 1 end
      local head = with_cas and "VALUE " .. key .. it[HEAD] .. " " .. it[CAS] .. "\r\n"
        or "VALUE " .. key .. it[HEAD] .. "\r\n"
      local ok, e = conn:write(head, it[VALUE], "\r\n")
      if not ok then return nil, e end
    else
      get_misses = get_misses + 1
      if touch_exp then stats.touch_misses = stats.touch_misses + 1 end
    end
  end
  return "END\r\n"
end

local function arithmetic(t, n, incr)
  if n ~= 3 and n ~= 4 then return ERROR end
  local key = t[2]
  if not valid_key(key) then return BAD_FORMAT end
  local d = c_number(t[3], true)
  if d == nil then return "CLIENT_ERROR invalid numeric delta argument\r\n" end
  local it = find_item(key)
  local which = incr and "incr_" or "decr_"
  if it == nil then
    stats[which .. "misses"] = stats[which .. "misses"] + 1
    return "NOT_FOUND\r\n"
  end
  local a = c_number(it[VALUE], true)
  if a == nil then return "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n" end
  stats[which .. "hits"] = stats[which .. "hits"] + 1
  local r
  if incr then
    r = a + d -- wraps at 2^64, as memcached does
  elseif math.ult(a, d) then
    r = 0
  else
    r = a - d
  end
  local text = u64_text(r)
  local value = text
  if #text < #it[VALUE] then value = text .. string.rep(" ", #it[VALUE] - #text) end -- (memcached pads in place)
  used = used - #it[VALUE] + #value
  it[VALUE], it[HEAD] = value, " " .. it[FLAGS] .. " " .. #value
  next_cas = next_cas + 1
  it[CAS] = next_cas
  return text .. "\r\n"
end

local function delete(t, n)
  if n < 2 or n > 4 then return ERROR end
  local key = t[2]
  local valid = n == 2 or (n == 3 and (t[3] == "0" or t[3] == "noreply"))
    or (n == 4 and t[3] == "0" and t[4] == "noreply") -- (a hold time of 0: an old client's habit)
  if not valid then
    return "CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n"
  end
  if not valid_key(key) then return BAD_FORMAT end
  local it = find_item(key)
  if it == nil then
    stats.delete_misses = stats.delete_misses + 1
    return "NOT_FOUND\r\n"
  end
  stats.delete_hits = stats.delete_hits + 1
  remove(it)
  return "DELETED\r\n"
end

local function touch(t, n, now)
  if n ~= 3 and n ~= 4 then return ERROR end
  local key, exptime = t[2], signed32(t[3])
  if not valid_key(key) then return BAD_FORMAT end
  if exptime == nil then return "CLIENT_ERROR invalid exptime argument\r\n" end
  stats.cmd_touch = stats.cmd_touch + 1
  local it = find_item(key)
  if it == nil then
    stats.touch_misses = stats.touch_misses + 1
    return "NOT_FOUND\r\n"
  end
  stats.touch_hits = stats.touch_hits + 1
  it[EXPTIME] = expiry(exptime, now)
  return "TOUCHED\r\n"
end

local function flush_all(t, n, now)
  if n > 3 then return ERROR end
  local delay = 0
  if n >= 2 and t[2] ~= "noreply" then
    delay = signed32(t[2])
    if delay == nil or (n == 3 and t[3] ~= "noreply") then return "CLIENT_ERROR invalid exptime argument\r\n" end
  end
  stats.cmd_flush = stats.cmd_flush + 1
  flush_at = delay > 0 and expiry(delay, now) or now
  if delay <= 0 then -- now: drop everything at once (memcached marks this with a CAS id of its own)
    items, newest, oldest, used, count = {}, nil, nil, 0, 0
    flush_at = nil
    next_cas = next_cas + 1
  end
  return "OK\r\n"
end

local function stats_reply(now)
  local lines = {}
  local function add(name, value) lines[#lines + 1] = "STAT " .. name .. " " .. tostring(value) .. "\r\n" end
  add("uptime", floor(now - started))
  add("time", floor(now))
  add("version", VERSION)
  add("threads", 1)
  add("curr_items", count)
  add("total_items", stats.total_items)
  add("bytes", used)
  add("limit_maxbytes", limit_bytes)
  add("curr_connections", stats.curr_connections)
  add("total_connections", stats.total_connections)
  add("cmd_get", cmd_get)
  add("cmd_set", cmd_set)
  add("get_hits", get_hits)
  add("get_misses", get_misses)
  for _, name in ipairs { "cmd_flush", "cmd_touch", "get_expired",
    "delete_misses", "delete_hits", "incr_misses", "incr_hits", "decr_misses", "decr_hits", "cas_misses",
    "cas_hits", "cas_badval", "touch_hits", "touch_misses", "evictions" } do
    add(name, stats[name])
  end
  lines[#lines + 1] = "END\r\n"
  return concat(lines)
end

local STORAGE = { set = true, add = true, replace = true, append = true, prepend = true, cas = true }

-- A storage command: its line is parsed, its data block read; the reply, or nil, err if the connection
-- went away.
local function storage(conn, cmd, t, n, now)
  local is_cas = cmd == "cas"
  local want = is_cas and 6 or 5
  local noreply = t[n] == "noreply" and n == want + 1
  if n ~= want and not noreply then return ERROR, false end
  local key, flags, exptime, size = t[2], c_number(t[3], true), signed32(t[4]), signed32(t[5])
  local unique = is_cas and c_number(t[6], true)
  if not valid_key(key) or flags == nil or exptime == nil or size == nil or size < 0 or (is_cas and not unique) then
    return BAD_FORMAT, noreply -- (memcached then reads the data block as a command line; so do we)
  end
  cmd_set = cmd_set + 1
  if #key + size + OVERHEAD > MAX_ITEM then -- refused: its bytes are read and dropped, the stream goes on
    local left = size + 2
    while left > 0 do
      local piece, e = conn:read(math.min(left, 65536))
      if not piece then return nil, e end
      left = left - #piece
    end
    return "SERVER_ERROR object too large for cache\r\n", noreply
  end
  local block, e = conn:readn(size + 2)
  if not block then return nil, e end
  if sub(block, -2) ~= "\r\n" then return "CLIENT_ERROR bad data chunk\r\n", noreply end
  local value = sub(block, 1, size)
  local it = find_item(key)
  local reply = "STORED\r\n"
  if cmd == "set" then
    store(key, value, low32(flags), expiry(exptime, now), now)
  elseif cmd == "add" then
    if it then reply = "NOT_STORED\r\n"
    else store(key, value, low32(flags), expiry(exptime, now), now) end
  elseif cmd == "replace" then
    if not it then reply = "NOT_STORED\r\n"
    else store(key, value, low32(flags), expiry(exptime, now), now) end
  elseif cmd == "append" or cmd == "prepend" then
    if not it then reply = "NOT_STORED\r\n"
    else
      local joined = cmd == "append" and it[VALUE] .. value or value .. it[VALUE]
      if #key + #joined + OVERHEAD > MAX_ITEM then return "SERVER_ERROR object too large for cache\r\n", noreply end
      store(key, joined, it[FLAGS], it[EXPTIME], now)
    end
  else -- cas
    if not it then
      stats.cas_misses = stats.cas_misses + 1
      reply = "NOT_FOUND\r\n"
    elseif it[CAS] ~= unique then
      stats.cas_badval = stats.cas_badval + 1
      reply = "EXISTS\r\n"
    else
      stats.cas_hits = stats.cas_hits + 1
      store(key, value, low32(flags), expiry(exptime, now), now)
    end
  end
  return reply, noreply
end

-- Commands whose last token may be "noreply" (storage commands handle it themselves).
local SILENCEABLE = { delete = true, incr = true, decr = true, touch = true, flush_all = true, verbosity = true }

local function run(conn, line)
  local t, n = tokens(line)
  if n == 0 then return ERROR end
  local cmd = t[1]
  local now = wall()
  if STORAGE[cmd] then
    local reply, noreply = storage(conn, cmd, t, n, now)
    if reply == nil then return nil, noreply end
    return noreply and "" or reply
  end
  local noreply = SILENCEABLE[cmd] and t[n] == "noreply"
  local reply
  local why
  if cmd == "get" then reply, why = retrieval(conn, t, n, false, nil)
  elseif cmd == "gets" then reply, why = retrieval(conn, t, n, true, nil)
  elseif cmd == "gat" or cmd == "gats" then
    local exptime = signed32(t[2])
    if n < 2 then reply = ERROR
    elseif exptime == nil then reply = "CLIENT_ERROR invalid exptime argument\r\n"
    else reply, why = retrieval(conn, t, n, cmd == "gats", expiry(exptime, now)) end
  elseif cmd == "delete" then reply = delete(t, n)
  elseif cmd == "incr" or cmd == "decr" then reply = arithmetic(t, n, cmd == "incr")
  elseif cmd == "touch" then reply = touch(t, n, now)
  elseif cmd == "flush_all" then reply = flush_all(t, n, now)
  elseif cmd == "version" then reply = "VERSION " .. VERSION .. "\r\n"
  elseif cmd == "verbosity" then reply = (n == 2 or n == 3) and "OK\r\n" or ERROR
  elseif cmd == "stats" then reply = n == 1 and stats_reply(now) or ERROR
  elseif cmd == "quit" then return nil, "quit"
  else reply = ERROR end
  if reply == nil then return nil, why end
  return noreply and "" or reply
end

-- The two commands of nearly every request, in their usual form (one key; canonical numbers), answered
-- without the general tokenizer; anything else goes the general way, with the same results.
local function fast_get(key)
  cmd_get = cmd_get + 1
  local it = find_item(key)
  if it == nil then
    get_misses = get_misses + 1
    return "END\r\n"
  end
  get_hits = get_hits + 1
  return "VALUE " .. key .. it[HEAD] .. "\r\n" .. it[VALUE] .. "\r\nEND\r\n"
end

local function fast_set(conn, key, flags, exptime, size)
  if #flags > 9 or #exptime > 9 or #size > 9 or #key > MAX_KEY then return false end
  size = tointeger(size)
  if #key + size + OVERHEAD > MAX_ITEM then return false end
  local block, e = conn:readn(size + 2)
  if not block then return nil, e end
  cmd_set = cmd_set + 1
  if byte(block, size + 1) ~= 13 or byte(block, size + 2) ~= 10 then return "CLIENT_ERROR bad data chunk\r\n" end
  exptime = tointeger(exptime)
  local now = (exptime ~= 0 or flush_at) and wall() or 0
  store(key, sub(block, 1, size), tointeger(flags), exptime == 0 and 0 or expiry(exptime, now), now)
  return "STORED\r\n"
end

local function serve(conn)
  stats.curr_connections = stats.curr_connections + 1
  stats.total_connections = stats.total_connections + 1
  conn:settimeouts(nil, nil, false) -- like memcached: idle clients may stay
  while true do
    local line, e = conn:readline()
    if not line then
      if e == "line too long" then conn:write("CLIENT_ERROR line too long\r\n") end
      break
    end
    local reply, why
    local c = byte(line, 1)
    if c == 103 and byte(line, 4) == 32 and byte(line, 2) == 101 and byte(line, 3) == 116 and #line > 4
      and not find(line, " ", 5, true) then
      reply = #line - 4 <= MAX_KEY and fast_get(sub(line, 5)) or run(conn, line)
    elseif c == 115 then
      local key, flags, exptime, size = match(line, "^set ([^ ]+) (%d+) (%-?%d+) (%d+)$")
      if key then reply, why = fast_set(conn, key, flags, exptime, size) end
      if not key or reply == false then reply, why = run(conn, line) end
    else
      reply, why = run(conn, line)
    end
    if reply == nil then
      if why ~= "quit" and why ~= "closed" then log.info("memcache: " .. tostring(why)) end
      break
    end
    if reply ~= "" then conn:write(reply) end
  end
  stats.curr_connections = stats.curr_connections - 1
end

local server = assert(net.listen {
  host = opts.host, port = opts.port, handler = serve, max_line = MAX_LINE * 8, max_read = MAX_ITEM + 2,
})
log.info("memcache ready on " .. server.host .. ":" .. server.port .. " (" .. opts.memory .. " MiB)")
