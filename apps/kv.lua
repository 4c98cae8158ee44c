-- A Redis-protocol key-value store, in memory, answering byte for byte as redis-server 7.0 does for the
-- commands below (tests/test_kv_vs_redis.py compares the two). Works with redis-cli, redis-benchmark, redis-py.
--
-- Run:   moonlet run apps/kv.lua [--port 6380] [--host 127.0.0.1] [--requirepass SECRET]
-- Try:   redis-cli -p 6380 set greeting hello EX 60     ->  OK
--        redis-cli -p 6380 get greeting                 ->  "hello"
--        redis-cli -p 6380 incrby counter 5             ->  (integer) 5
--        redis-cli -p 6380 ttl greeting                 ->  (integer) 60
--        redis-benchmark -p 6380 -t ping_inline,set,get -P 16
--
-- Commands: PING ECHO SET(NX XX GET KEEPTTL EX PX EXAT PXAT) GET DEL EXISTS INCR INCRBY DECR DECRBY
-- EXPIRE PEXPIRE(NX XX GT LT) TTL PTTL PERSIST KEYS DBSIZE SELECT(0-15) FLUSHDB FLUSHALL HELLO(2|3 [AUTH]
-- [SETNAME]) AUTH QUIT, MULTI EXEC DISCARD WATCH UNWATCH (Redis's semantics: replies queued, EXECABORT after
-- a queuing error, a watched key changed aborts EXEC), plus the handshake commands clients send (COMMAND,
-- CONFIG GET, CLIENT). RESP arrays and inline commands (with
-- Redis's quoting); pipelining is just reading the next one. Differences from Redis: see the README.
local net = require "moonlet.net"
local log = require "moonlet.log"
local time = require "moonlet.time"
local opts = require("moonlet.args").parse(arg, { port = 6380, host = "127.0.0.1", requirepass = "" })
require("moonlet.workers").single("the store is a Lua table in this process")

local byte, sub, upper, find, format, gsub = string.byte, string.sub, string.upper, string.find, string.format,
  string.gsub
local tointeger, tostring, tonumber, concat, floor = math.tointeger, tostring, tonumber, table.concat, math.floor
local wall = time.now

-- Integers are Redis's 64-bit ones on Lua 5.4. LuaJIT's numbers are doubles: there the store keeps to
-- ±(2^53 - 1), where every integer is exact, and answers "not an integer or out of range" beyond, as Redis
-- does beyond 64 bits (README: Engines).
local INT_MAX, INT_MIN = math.maxinteger or 2 ^ 53 - 1, math.mininteger or -(2 ^ 53 - 1)
-- floor division: Lua 5.4's `//` keeps integers exact; LuaJIT cannot parse it (and has no integers to keep)
local idiv = load("return function(a, b) return a // b end")
idiv = idiv and idiv() or function(a, b) return floor(a / b) end

local MAX_BULK = 16 * 1024 * 1024
local MAX_ARGS = 1024 * 1024
local DATABASES = 16 -- SELECT 0..15, as Redis's default

-- Expiry is kept as Redis keeps it: an absolute unix time in milliseconds, an integer; a key is gone once
-- the clock has passed it (`now > when`), and TTL rounds (ms + 500) // 1000.
local function now_ms() return tointeger(floor(wall() * 1000)) end

-- The databases, and the selected one's tables in upvalues (commands never wait, so a connection's
-- database is switched in before each of its commands: see `serve`).
local dbs = {}
for i = 0, DATABASES - 1 do dbs[i] = { data = {}, expires = {}, nexpires = 0 } end
local active = dbs[0]
local data = active.data         -- key -> string value
local expires = active.expires   -- key -> expiry (unix ms), for keys with a TTL
local nexpires = 0               -- how many keys have a TTL (skip the clock when none do)

-- WATCH: the sessions watching each key, by database; a write to a watched key marks them (EXEC aborts)
local watchers = {} -- db -> key -> { [session] = true }
local nwatching = 0 -- keys watched, in all (a write looks no further when none is)

local function touch(key)
  local w = watchers[active]
  local sessions = w and w[key]
  if sessions then
    for session in pairs(sessions) do session.dirty = true end
  end
end

local function touch_all(db)
  local w = watchers[db]
  if w then
    for _, sessions in pairs(w) do
      for session in pairs(sessions) do session.dirty = true end
    end
  end
end

local function use_db(db)
  active.nexpires = nexpires
  active, data, expires, nexpires = db, db.data, db.expires, db.nexpires
end

---------------------------------------------------------------------------------------------------------
-- keyspace

local function expire_now(key)
  data[key], expires[key] = nil, nil
  nexpires = nexpires - 1
  if nwatching > 0 then touch(key) end
end

-- The live value of key (nil when absent or expired).
local function lookup(key)
  local v = data[key]
  if v ~= nil and nexpires > 0 then
    local deadline = expires[key]
    if deadline and now_ms() > deadline then
      expire_now(key)
      return nil
    end
  end
  return v
end

local function set_ttl(key, deadline)
  if nwatching > 0 and expires[key] ~= deadline then touch(key) end
  if expires[key] == nil then
    if deadline == nil then return end
    nexpires = nexpires + 1
  elseif deadline == nil then
    nexpires = nexpires - 1
  end
  expires[key] = deadline
end

local function delete(key)
  if lookup(key) == nil then return false end
  data[key] = nil
  if nwatching > 0 then touch(key) end
  set_ttl(key, nil)
  return true
end

local function purge_expired()
  if nexpires == 0 then return end
  local now = now_ms()
  for key, deadline in pairs(expires) do
    if now > deadline then expire_now(key) end
  end
end

---------------------------------------------------------------------------------------------------------
-- replies

local OK, PONG, NIL = "+OK\r\n", "+PONG\r\n", "$-1\r\n"

local function bulk(s) return "$" .. #s .. "\r\n" .. s .. "\r\n" end
-- LuaJIT writes integral numbers of 15 digits and more in exponent form ("1e+15"): "%d" writes them whole
local digits = math.maxinteger and tostring or function(n) return format("%d", n) end
local function int(n) return ":" .. digits(n) .. "\r\n" end
local function err(msg) return "-ERR " .. msg .. "\r\n" end
-- An error that quotes the client's bytes: CR and LF become spaces, as Redis does, so the reply stays one line.
local function err_quoting(msg) return "-ERR " .. gsub(msg, "[\r\n]", " ") .. "\r\n" end
-- A client's bytes as Redis quotes them in an error: as a C string, up to the first NUL byte.
local function cstring(s)
  local zero = find(s, "\0", 1, true)
  return zero and sub(s, 1, zero - 1) or s
end
local function array(items)
  local parts = { "*" .. #items .. "\r\n" }
  for i = 1, #items do parts[i + 1] = bulk(items[i]) end
  return concat(parts)
end

local NOT_INTEGER = err("value is not an integer or out of range")
local SYNTAX = err("syntax error")
local function bad_expire(name) return err(format("invalid expire time in '%s' command", name)) end

local function wrong_args(name)
  return err(format("wrong number of arguments for '%s' command", name:lower()))
end

-- Redis accepts only canonical decimal integers.
local function parse_int(s)
  if s == nil or not find(s, "^%-?%d+$") or #s > 20 then return nil end
  local n = tointeger(tonumber(s))
  if n == nil or n > INT_MAX or n < INT_MIN or format("%d", n) ~= s then return nil end
  return n
end

-- KEYS patterns, with Redis's glob rules (`*`, `?`, `[abc]`, `[^a]`, `[a-z]` with reversed ranges swapped,
-- `\x` for a literal x, an unterminated `[` closed by the pattern's end). Compiled into tokens: STAR, ANY,
-- a byte, or a set {map = 256 booleans, negate =}; matched by the classic one-backtrack-point walk, which
-- is right because every token but STAR takes exactly one byte: at most #key x #pattern steps, never the
-- exponential or quadratic-in-C time a translation into a Lua pattern could take on hostile input.
local STAR, ANY = "*", "?"

local function glob_compile(p)
  local toks, i, n = {}, 1, #p
  while i <= n do
    local c = byte(p, i)
    if c == 42 then -- *
      if toks[#toks] ~= STAR then toks[#toks + 1] = STAR end
      i = i + 1
    elseif c == 63 then -- ?
      toks[#toks + 1] = ANY
      i = i + 1
    elseif c == 91 then -- [
      local edges, negate = {}, false -- edges: +1 where a range starts, -1 past where it ends
      i = i + 1
      if byte(p, i) == 94 then
        negate = true
        i = i + 1
      end
      while true do
        local b = byte(p, i)
        if b == nil then break end -- (unterminated: the pattern's end closes it)
        if b == 92 and i < n then -- an escaped byte
          i = i + 1
          b = byte(p, i)
          edges[b] = (edges[b] or 0) + 1
          edges[b + 1] = (edges[b + 1] or 0) - 1
        elseif b == 93 then -- ]
          i = i + 1
          break
        elseif i + 2 <= n and byte(p, i + 1) == 45 then -- a range
          local lo, hi = b, byte(p, i + 2)
          if lo > hi then lo, hi = hi, lo end
          edges[lo] = (edges[lo] or 0) + 1
          edges[hi + 1] = (edges[hi + 1] or 0) - 1
          i = i + 2
        else
          edges[b] = (edges[b] or 0) + 1
          edges[b + 1] = (edges[b + 1] or 0) - 1
        end
        i = i + 1
      end
      local map, depth = {}, 0
      for x = 0, 255 do
        depth = depth + (edges[x] or 0)
        map[x] = depth > 0
      end
      toks[#toks + 1] = { map = map, negate = negate }
    elseif c == 92 and i < n then -- \x
      toks[#toks + 1] = byte(p, i + 1)
      i = i + 2
    else
      toks[#toks + 1] = c
      i = i + 1
    end
  end
  return toks
end

local function glob_match(toks, s)
  local ti, si, ns = 1, 1, #s
  local star, resume_at = nil, 0 -- the last STAR seen, and the byte its next try starts at
  while si <= ns do
    local t, c = toks[ti], byte(s, si)
    if t == STAR then
      star, resume_at = ti, si
      ti = ti + 1
    elseif t ~= nil and (t == ANY or t == c or (type(t) == "table" and t.map[c] ~= t.negate)) then
      ti, si = ti + 1, si + 1
    elseif star then -- the last STAR takes one byte more
      resume_at = resume_at + 1
      ti, si = star + 1, resume_at
    else
      return false
    end
  end
  while toks[ti] == STAR do ti = ti + 1 end
  return toks[ti] == nil
end

---------------------------------------------------------------------------------------------------------
-- commands: each takes the argument array and returns the reply (and true to close afterwards)

local function incr_by(key, delta)
  local current = lookup(key)
  local n = 0
  if current ~= nil then
    n = parse_int(current)
    if n == nil then return NOT_INTEGER end
  end
  local result = n + delta
  if (delta > 0 and result < n) or (delta < 0 and result > n) or result > INT_MAX or result < INT_MIN then
    return err("increment or decrement would overflow")
  end
  data[key] = digits(result)
  if nwatching > 0 then touch(key) end
  return int(result)
end

local function ttl_reply(key, in_ms)
  if lookup(key) == nil then return int(-2) end
  local deadline = expires[key]
  if deadline == nil then return int(-1) end
  local left = deadline - now_ms()
  if left < 0 then left = 0 end
  return int(in_ms and left or idiv(left + 500, 1000))
end

local LLONG_MAX, MAX_SECONDS = INT_MAX, idiv(INT_MAX, 1000)

local commands = {}

commands.PING = function(a)
  if #a == 1 then return PONG elseif #a == 2 then return bulk(a[2]) end
  return wrong_args("ping")
end

commands.ECHO = function(a)
  if #a ~= 2 then return wrong_args("echo") end
  return bulk(a[2])
end

commands.GET = function(a)
  if #a ~= 2 then return wrong_args("get") end
  local v = lookup(a[2])
  return v == nil and NIL or bulk(v)
end

-- SET key value [NX|XX] [GET] [EX s|PX ms|EXAT t|PXAT t|KEEPTTL], with Redis 7.0's rules: a repeated option
-- is allowed (the last value wins), options that conflict are a syntax error, the time is checked after.
commands.SET = function(a)
  local n = #a
  if n < 3 then return wrong_args("set") end
  local key, value = a[2], a[3]
  local nx, xx, get, keepttl, unit, when = false, false, false, false, nil, nil
  local i = 4
  while i <= n do
    local o = upper(a[i])
    local next_arg = a[i + 1]
    if o == "NX" and not xx then nx = true
    elseif o == "XX" and not nx then xx = true
    elseif o == "GET" then get = true
    elseif o == "KEEPTTL" and not unit then keepttl = true
    elseif (o == "EX" or o == "PX" or o == "EXAT" or o == "PXAT") and next_arg ~= nil and not keepttl
      and (unit == nil or unit == o) then
      unit, when = o, next_arg
      i = i + 1
    else
      return SYNTAX
    end
    i = i + 1
  end
  local deadline
  if unit then
    local t = parse_int(when)
    if t == nil then return NOT_INTEGER end
    local seconds = unit == "EX" or unit == "EXAT"
    if t <= 0 or (seconds and t > MAX_SECONDS) then return bad_expire("set") end
    if seconds then t = t * 1000 end
    if unit == "EX" or unit == "PX" then t = t + now_ms() end
    if t <= 0 then return bad_expire("set") end -- (it wrapped around)
    deadline = t
  end
  local old = lookup(key)
  if (nx and old ~= nil) or (xx and old == nil) then return get and (old == nil and NIL or bulk(old)) or NIL end
  data[key] = value
  if nwatching > 0 then touch(key) end
  if not keepttl then set_ttl(key, deadline) end
  if get then return old == nil and NIL or bulk(old) end
  return OK
end

commands.DEL = function(a)
  if #a < 2 then return wrong_args("del") end
  local n = 0
  for i = 2, #a do if delete(a[i]) then n = n + 1 end end
  return int(n)
end

commands.EXISTS = function(a)
  if #a < 2 then return wrong_args("exists") end
  local n = 0
  for i = 2, #a do if lookup(a[i]) ~= nil then n = n + 1 end end
  return int(n)
end

commands.INCR = function(a)
  if #a ~= 2 then return wrong_args("incr") end
  return incr_by(a[2], 1)
end

commands.DECR = function(a)
  if #a ~= 2 then return wrong_args("decr") end
  return incr_by(a[2], -1)
end

commands.INCRBY = function(a)
  if #a ~= 3 then return wrong_args("incrby") end
  local delta = parse_int(a[3])
  if delta == nil then return NOT_INTEGER end
  return incr_by(a[2], delta)
end

commands.DECRBY = function(a)
  if #a ~= 3 then return wrong_args("decrby") end
  local delta = parse_int(a[3])
  if delta == nil then return NOT_INTEGER end
  if delta == math.mininteger then return err("decrement would overflow") end
  return incr_by(a[2], -delta)
end

-- EXPIRE/PEXPIRE key time [NX|XX|GT|LT] (Redis 7.0): options first, then the time's range, then the key.
local EXPIRE_OPTIONS = { NX = true, XX = true, GT = true, LT = true }

local function expire(a, name, in_seconds)
  local n = #a
  if n < 3 then return wrong_args(name) end
  local flag = {}
  for i = 4, n do
    local o = upper(a[i])
    if not EXPIRE_OPTIONS[o] then return err_quoting("Unsupported option " .. cstring(a[i])) end
    flag[o] = true
  end
  if flag.NX and (flag.XX or flag.GT or flag.LT) then
    return err("NX and XX, GT or LT options at the same time are not compatible")
  end
  if flag.GT and flag.LT then return err("GT and LT options at the same time are not compatible") end
  local when = parse_int(a[3])
  if when == nil then return NOT_INTEGER end
  if in_seconds then
    if when > MAX_SECONDS or when < idiv(INT_MIN, 1000) then return bad_expire(name) end
    when = when * 1000
  end
  local now = now_ms()
  if when > LLONG_MAX - now then return bad_expire(name) end
  when = when + now
  local key = a[2]
  if lookup(key) == nil then return int(0) end
  local current = expires[key] -- nil: no expiry (Redis's -1, an infinite TTL)
  if (flag.NX and current ~= nil) or (flag.XX and current == nil)
    or (flag.GT and (current == nil or when <= current)) or (flag.LT and current ~= nil and when >= current) then
    return int(0)
  end
  if when <= now then
    delete(key)
  else
    set_ttl(key, when)
  end
  return int(1)
end

commands.EXPIRE = function(a) return expire(a, "expire", true) end
commands.PEXPIRE = function(a) return expire(a, "pexpire", false) end

commands.TTL = function(a)
  if #a ~= 2 then return wrong_args("ttl") end
  return ttl_reply(a[2], false)
end

commands.PTTL = function(a)
  if #a ~= 2 then return wrong_args("pttl") end
  return ttl_reply(a[2], true)
end

commands.PERSIST = function(a)
  if #a ~= 2 then return wrong_args("persist") end
  if lookup(a[2]) == nil or expires[a[2]] == nil then return int(0) end
  set_ttl(a[2], nil)
  return int(1)
end

commands.KEYS = function(a)
  if #a ~= 2 then return wrong_args("keys") end
  purge_expired()
  local toks, found = glob_compile(a[2]), {}
  for key in pairs(data) do
    if glob_match(toks, key) then found[#found + 1] = key end
  end
  table.sort(found)
  return array(found)
end

commands.DBSIZE = function(a)
  if #a ~= 1 then return wrong_args("dbsize") end
  purge_expired()
  local n = 0
  for _ in pairs(data) do n = n + 1 end
  return int(n)
end

-- FLUSHDB/FLUSHALL [ASYNC|SYNC]: the error for anything else, or nil
local function bad_flush_mode(a)
  if #a > 2 or (#a == 2 and upper(a[2]) ~= "ASYNC" and upper(a[2]) ~= "SYNC") then return SYNTAX end
end

commands.FLUSHDB = function(a)
  local bad = bad_flush_mode(a)
  if bad then return bad end
  if nwatching > 0 then touch_all(active) end
  for k in pairs(data) do data[k] = nil end
  for k in pairs(expires) do expires[k] = nil end
  nexpires = 0
  return OK
end

commands.FLUSHALL = function(a)
  local bad = bad_flush_mode(a)
  if bad then return bad end
  for i = 0, DATABASES - 1 do
    local db = dbs[i]
    if nwatching > 0 then touch_all(db) end
    db.data, db.expires, db.nexpires = {}, {}, 0
  end
  active.nexpires = 0
  data, expires, nexpires = active.data, active.expires, 0
  return OK
end

commands.SELECT = function(a, session)
  if #a ~= 2 then return wrong_args("select") end
  local i = parse_int(a[2])
  if i == nil then return NOT_INTEGER end
  if i < 0 or i >= DATABASES then return err("DB index is out of range") end
  session.db = dbs[i]
  use_db(session.db)
  return OK
end

commands.QUIT = function() return OK, true end

local BAD_CLIENT_NAME = err("Client names cannot contain spaces, newlines or special characters.")

-- Handshakes: redis-cli asks COMMAND DOCS, redis-benchmark CONFIG GET, redis-py CLIENT SETINFO.
commands.COMMAND = function() return "*0\r\n" end
commands.CONFIG = function(a) -- no settings: every parameter reads as empty
  if #a ~= 3 or upper(a[2]) ~= "GET" then return err("CONFIG supports only GET <parameter> here") end
  return "*2\r\n" .. bulk(a[3]) .. "$0\r\n\r\n"
end
commands.CLIENT = function(a)
  local sub_command = a[2] and upper(a[2]) or ""
  if sub_command == "SETNAME" and a[3] and find(a[3], "[^!-~]") then return BAD_CLIENT_NAME end
  if sub_command == "SETINFO" or sub_command == "SETNAME" then return OK end
  if sub_command == "GETNAME" then return NIL end
  return err("unsupported CLIENT subcommand")
end
-- AUTH [user] password: with --requirepass, the default user's password opens the connection; without one,
-- Redis's own error. (One user, "default", as Redis without ACL files.)
local NOAUTH = "-NOAUTH Authentication required.\r\n"
local NOAUTH_HELLO = "-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO "
  .. "<proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol "
  .. "version at the same time\r\n"
local WRONGPASS = "-WRONGPASS invalid username-password pair or user is disabled.\r\n"

-- A session is special while it must authenticate or is queuing: the one flag a plain command checks (true
-- or nil: a session that never needed it keeps no slot for it).
local function settle(session)
  session.special = (session.locked or session.queue ~= nil) or nil
end

local function authenticate(session, user, pass)
  if opts.requirepass == "" then
    return err("AUTH <password> called without any password configured for the default user. Are you sure "
      .. "your configuration is correct?")
  end
  if user ~= "default" or pass ~= opts.requirepass then return WRONGPASS end
  session.locked = nil
  settle(session)
end

commands.AUTH = function(a, session)
  local n = #a
  if n ~= 2 and n ~= 3 then return wrong_args("auth") end
  local denied = authenticate(session, n == 3 and a[2] or "default", a[n])
  return denied or OK
end

-- HELLO [protover [AUTH user pass] [SETNAME name]]: switches to RESP3 on 3 (the null reply and maps differ;
-- redis-py 5+ asks for it), and answers Redis's map of the connection, naming this server.
commands.HELLO = function(a, session)
  local n = #a
  if n >= 2 then
    local ver = parse_int(a[2])
    if ver == nil then return err("Protocol version is not an integer or out of range") end
    if ver < 2 or ver > 3 then return "-NOPROTO unsupported protocol version\r\n" end
    local i, name = 3, nil
    while i <= n do
      local o = upper(a[i])
      if o == "SETNAME" and i < n then
        name, i = a[i + 1], i + 2
      elseif o == "AUTH" and i + 1 < n then
        local denied = authenticate(session, a[i + 1], a[i + 2])
        if denied then return denied end
        i = i + 3
      else
        return err_quoting("Syntax error in HELLO option '" .. cstring(a[i]) .. "'")
      end
    end
    if session.locked then return NOAUTH_HELLO end
    if name and find(name, "[^!-~]") then return BAD_CLIENT_NAME end
    session.resp3 = ver == 3
  end
  local fields = bulk("server") .. bulk("moonlet-kv") .. bulk("version") .. bulk("7.0.15") .. bulk("proto")
    .. int(session.resp3 and 3 or 2) .. bulk("id") .. int(session.id) .. bulk("mode") .. bulk("standalone")
    .. bulk("role") .. bulk("master") .. bulk("modules") .. "*0\r\n"
  return (session.resp3 and "%7\r\n" or "*14\r\n") .. fields
end

---------------------------------------------------------------------------------------------------------
-- transactions: MULTI queues, EXEC runs the queue at once (commands never wait, so nothing runs between),
-- WATCH makes EXEC abort if a watched key was written since

-- Redis's arity of each command (negative: at least that many), checked as a command is queued
local ARITY = { PING = -1, ECHO = 2, SET = -3, GET = 2, DEL = -2, EXISTS = -2, INCR = 2, DECR = 2, INCRBY = 3,
  DECRBY = 3, EXPIRE = -3, PEXPIRE = -3, TTL = 2, PTTL = 2, PERSIST = 2, KEYS = 2, DBSIZE = 1, FLUSHDB = -1,
  FLUSHALL = -1, SELECT = 2, QUIT = -1, COMMAND = -1, CONFIG = -2, CLIENT = -2, HELLO = -1, AUTH = -2,
  MULTI = 1, EXEC = 1, DISCARD = 1, WATCH = -2, UNWATCH = 1 }
-- run at once inside MULTI, not queued
local NOT_QUEUED = { EXEC = true, DISCARD = true, MULTI = true, WATCH = true, QUIT = true }

local function unwatch(session)
  local watching = session.watching
  if watching then
    for i = 1, #watching, 2 do
      local db, key = watching[i], watching[i + 1]
      local sessions = watchers[db][key]
      sessions[session] = nil
      if next(sessions) == nil then
        watchers[db][key] = nil
        nwatching = nwatching - 1
      end
    end
    session.watching = nil
  end
  session.dirty = false
end

commands.WATCH = function(a, session)
  if #a < 2 then return wrong_args("watch") end
  if session.queue then return err("WATCH inside MULTI is not allowed") end
  local db = session.db
  local w = watchers[db]
  if w == nil then
    w = {}
    watchers[db] = w
  end
  local watching = session.watching or {}
  session.watching = watching
  for i = 2, #a do
    local key = a[i]
    local sessions = w[key]
    if sessions == nil then
      sessions = {}
      w[key] = sessions
      nwatching = nwatching + 1
    end
    if not sessions[session] then
      sessions[session] = true
      watching[#watching + 1], watching[#watching + 2] = db, key
    end
  end
  return OK
end

commands.UNWATCH = function(a, session)
  if #a ~= 1 then return wrong_args("unwatch") end
  unwatch(session)
  return OK
end

commands.MULTI = function(a, session)
  if #a ~= 1 then return wrong_args("multi") end
  if session.queue then return err("MULTI calls can not be nested") end
  session.queue, session.queue_failed = {}, false
  settle(session)
  return OK
end

commands.DISCARD = function(a, session)
  if #a ~= 1 then return wrong_args("discard") end
  if not session.queue then return err("DISCARD without MULTI") end
  session.queue = nil
  settle(session)
  unwatch(session)
  return OK
end

commands.EXEC = function(a, session)
  if #a ~= 1 then return wrong_args("exec") end
  local queue = session.queue
  if not queue then return err("EXEC without MULTI") end
  session.queue = nil
  settle(session)
  if session.queue_failed then
    unwatch(session)
    return "-EXECABORT Transaction discarded because of previous errors.\r\n"
  end
  if session.dirty then
    unwatch(session)
    return session.resp3 and "_\r\n" or "*-1\r\n"
  end
  unwatch(session)
  local replies = { "*" .. #queue .. "\r\n" }
  for i = 1, #queue do
    local q = queue[i]
    if session.db ~= active then use_db(session.db) end
    local name = upper(q[1])
    local reply = commands[name](q, session)
    if reply == NIL and session.resp3 then reply = "_\r\n" end
    replies[i + 1] = reply
  end
  return concat(replies)
end

-- In MULTI: queue the command (its arguments copied: `args` is reused), or refuse it and mark the
-- transaction failed (EXEC then answers EXECABORT), as Redis checks a command's name and arity.
local function queue_command(session, args, n, name)
  local command = commands[name]
  if command == nil then
    session.queue_failed = true
    return nil
  end
  local want = ARITY[name]
  if want and (want > 0 and n ~= want or want < 0 and n < -want) then
    session.queue_failed = true
    return wrong_args(name)
  end
  local copy = {}
  for i = 1, n do copy[i] = args[i] end
  session.queue[#session.queue + 1] = copy
  return "+QUEUED\r\n"
end

---------------------------------------------------------------------------------------------------------
-- the protocol

-- An inline command split as Redis splits it (sdssplitargs): words between blanks; "double quotes" with
-- \n \r \t \b \a \xHH and \<any> escapes, 'single quotes' with \' only; a closing quote must be followed
-- by a blank or the end; a NUL byte ends the line (Redis reads it as a C string). Returns the word count,
-- or nil for unbalanced quotes. One pass over the bytes.
local ESCAPES = { [110] = "\n", [114] = "\r", [116] = "\t", [98] = "\b", [97] = "\a" }
local HEX = {}
for i = 0, 9 do HEX[48 + i] = i end
for i = 0, 5 do HEX[65 + i], HEX[97 + i] = 10 + i, 10 + i end
local function blank(c) return c == 32 or (c >= 9 and c <= 13) end

local function split_inline(line, args)
  local zero = find(line, "\0", 1, true)
  if zero then line = sub(line, 1, zero - 1) end
  local n, i, len = 0, 1, #line
  local word = {}
  while true do
    while i <= len and blank(byte(line, i)) do i = i + 1 end
    if i > len then return n end
    local w, quote = 0, nil -- quote: 34 or 39 while inside quotes
    while true do
      local c = byte(line, i)
      if quote == 34 then
        if c == nil then return nil end
        if c == 92 and byte(line, i + 1) == 120 and HEX[byte(line, i + 2)] and HEX[byte(line, i + 3)] then
          w = w + 1; word[w] = string.char(HEX[byte(line, i + 2)] * 16 + HEX[byte(line, i + 3)])
          i = i + 3
        elseif c == 92 and i < len then
          i = i + 1
          local e = byte(line, i)
          w = w + 1; word[w] = ESCAPES[e] or string.char(e)
        elseif c == 34 then
          if i < len and not blank(byte(line, i + 1)) then return nil end
          i = i + 1
          break
        else
          w = w + 1; word[w] = string.char(c)
        end
      elseif quote == 39 then
        if c == nil then return nil end
        if c == 92 and byte(line, i + 1) == 39 then
          i = i + 1
          w = w + 1; word[w] = "'"
        elseif c == 39 then
          if i < len and not blank(byte(line, i + 1)) then return nil end
          i = i + 1
          break
        else
          w = w + 1; word[w] = string.char(c)
        end
      elseif c == nil or c == 32 or c == 10 or c == 13 or c == 9 then
        break
      elseif c == 34 or c == 39 then
        quote = c
      else
        w = w + 1; word[w] = string.char(c)
      end
      i = i + 1
    end
    n = n + 1
    args[n] = concat(word, "", 1, w)
  end
end

-- Redis's reply to an unknown command: its name and the start of its arguments, each cut at a NUL byte
-- and at 128 bytes in all.
local function unknown_command(args, n)
  local given = ""
  for i = 2, n do
    if #given >= 128 then break end
    given = given .. "'" .. sub(cstring(args[i]), 1, 128 - #given) .. "' "
  end
  return err_quoting(format("unknown command '%s', with args beginning with: %s", sub(cstring(args[1]), 1, 128),
    given))
end

-- Read one command into `args`, which is reused from one command to the next (no garbage per request; no
-- command keeps it): an array of bulk strings, or an inline line split on whitespace. Returns the argument
-- count, or nil, err (connection trouble), or false, message (a protocol error: answer and close).
-- The command that starts with `line` (or readline's nil, e, bare): its first line is read by `serve`, so
-- that a client waiting between commands waits in serve's frame, not one deeper (see README, Performance:
-- an idle connection's coroutine stays inside its first stack).
local function read_command(conn, args, last_count, line, e, bare)
  if not line then
    if e == "bare newline" then -- an inline command may end in LF alone; an array's count may not (Redis
      if byte(bare, 1) == 42 then return false, "Protocol error: invalid multibulk length" end -- reads to CR)
      line = bare
    elseif e == "line too long" then
      return false, "Protocol error: too big inline request"
    else
      return nil, e
    end
  end
  local n
  if commands[line] then -- an inline command alone on its line (PING): nothing to split
    args[1], n = line, 1
  elseif byte(line, 1) ~= 42 then -- '*' starts an array; anything else is an inline command
    n = split_inline(line, args)
    if n == nil then return false, "Protocol error: unbalanced quotes in request" end
  else
    n = parse_int(sub(line, 2))
    if n == nil or n > MAX_ARGS then return false, "Protocol error: invalid multibulk length" end
    if n < 0 then n = 0 end -- (*-1 and *0: nothing to run)
    for i = 1, n do
      local header
      header, e = conn:readline(true)
      if not header then
        if e == "bare newline" then return false, "Protocol error: invalid bulk length" end
        return nil, e
      end
      if byte(header, 1) ~= 36 then -- '$'
        return false, format("Protocol error: expected '$', got '%s'", sub(header, 1, 1))
      end
      local len = parse_int(sub(header, 2))
      if len == nil or len < 0 or len > MAX_BULK then return false, "Protocol error: invalid bulk length" end
      local body
      body, e = conn:readn(len + 2)
      if not body then return nil, e end
      args[i] = sub(body, 1, len)
    end
  end
  for i = n + 1, last_count do args[i] = nil end
  return n
end

-- A command from a session that must authenticate or is queuing: answered here (true), or left to run.
local function special(conn, session, args, n)
  local name = upper(args[1])
  if session.locked and name ~= "AUTH" and name ~= "HELLO" and name ~= "QUIT" then
    conn:write(NOAUTH)
    return true
  end
  if session.queue and not NOT_QUEUED[name] then
    conn:write(queue_command(session, args, n, name) or unknown_command(args, n))
    return true
  end
  return false
end

local next_client_id = 0 -- (client ids, as Redis numbers its connections)

local function serve(conn)
  next_client_id = next_client_id + 1
  -- (locked and special, nil unless a password is required, queue and watching, nil until MULTI and WATCH,
  -- and resp3, dirty and queue_failed, nil until HELLO 3, a change to a watched key and a failed queued
  -- command, are not named here: a constructor sizes the table for every field it names, nil, false or
  -- not, and 2 names take 2 slots (32 B each on Lua 5.4, 24 on LuaJIT), 4 take 4)
  local session = { db = dbs[0], id = next_client_id }
  if opts.requirepass ~= "" then session.locked, session.special = true, true end
  conn:settimeouts(nil, nil, false) -- like Redis: idle clients may stay forever
  local args, count = {}, 0
  -- (The loop keeps few locals live where it writes a reply: on Lua 5.4 a C function called 20 slots up
  -- grows the coroutine's stack for good, ~1.3 KB an idle connection keeps, and conn:write calls two.)
  while true do
    local n
    do
      local line, e, bare = conn:readline(true)
      n, e = read_command(conn, args, count, line, e, bare)
      if n == false then
        conn:write(err(e))
        break
      end
    end
    if n == nil then break end -- closed, or a timeout while sending
    count = n
    if n > 0 then
      if session.db ~= active then use_db(session.db) end
      local command = commands[args[1]] or commands[upper(args[1])]
      if session.special and special(conn, session, args, n) then -- luacheck: ignore 542
        -- (answered: it must authenticate first, or it was queued)
      elseif command == nil then
        conn:write(unknown_command(args, n))
      else
        local reply, close = command(args, session)
        if reply == NIL and session.resp3 then reply = "_\r\n" end
        conn:write(reply)
        if close then break end
      end
    end
  end
  unwatch(session) -- (its watches end with it)
end

-- (the limits every connection has: set once here, not per connection with conn:setlimits)
local server = assert(net.listen { host = opts.host, port = opts.port, handler = serve, max_read = MAX_BULK + 2 })
log.info("kv ready on " .. server.host .. ":" .. server.port)
