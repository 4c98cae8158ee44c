-- A Redis-protocol (RESP2) key-value store, in memory. Works with redis-cli, redis-benchmark and redis-py.
--
-- Run:   moonlet run apps/kv.lua [--port 6380] [--host 127.0.0.1]
-- Try:   redis-cli -p 6380 set greeting hello EX 60     ->  OK
--        redis-cli -p 6380 get greeting                 ->  "hello"
--        redis-cli -p 6380 incrby counter 5             ->  (integer) 5
--        redis-cli -p 6380 ttl greeting                 ->  (integer) 60
--        redis-benchmark -p 6380 -t ping_inline,set,get -P 16
--
-- Commands: PING ECHO SET(EX PX NX XX KEEPTTL) GET DEL EXISTS INCR INCRBY DECR DECRBY EXPIRE PEXPIRE TTL PTTL
-- PERSIST KEYS DBSIZE FLUSHDB FLUSHALL SELECT(0) QUIT, plus the handshake commands clients send (COMMAND,
-- CONFIG GET, CLIENT, HELLO 2|3). Both RESP arrays and inline commands; pipelining is just reading the next one.
local net = require "moonlet.net"
local log = require "moonlet.log"
local time = require "moonlet.time"
local opts = require("moonlet.args").parse(arg, { port = 6380, host = "127.0.0.1" })
require("moonlet.workers").single("the store is a Lua table in this process")

local byte, sub, upper, find, format, gmatch = string.byte, string.sub, string.upper, string.find, string.format,
  string.gmatch
local tointeger, tostring, tonumber, concat = math.tointeger, tostring, tonumber, table.concat
local monotonic = time.monotonic

local MAX_BULK = 16 * 1024 * 1024
local MAX_ARGS = 1024 * 1024

local data = {}      -- key -> string value
local expires = {}   -- key -> monotonic deadline, for keys with a TTL
local nexpires = 0   -- how many keys have a TTL (skip the clock when none do)

---------------------------------------------------------------------------------------------------------
-- keyspace

local function expire_now(key)
  data[key], expires[key] = nil, nil
  nexpires = nexpires - 1
end

-- The live value of key (nil when absent or expired).
local function lookup(key)
  local v = data[key]
  if v ~= nil and nexpires > 0 then
    local deadline = expires[key]
    if deadline and deadline <= monotonic() then
      expire_now(key)
      return nil
    end
  end
  return v
end

local function set_ttl(key, deadline)
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
  set_ttl(key, nil)
  return true
end

local function purge_expired()
  if nexpires == 0 then return end
  local now = monotonic()
  for key, deadline in pairs(expires) do
    if deadline <= now then expire_now(key) end
  end
end

---------------------------------------------------------------------------------------------------------
-- replies

local OK, PONG, NIL = "+OK\r\n", "+PONG\r\n", "$-1\r\n"

local function bulk(s) return "$" .. #s .. "\r\n" .. s .. "\r\n" end
local function int(n) return ":" .. n .. "\r\n" end
local function err(msg) return "-ERR " .. msg .. "\r\n" end
local function array(items)
  local parts = { "*" .. #items .. "\r\n" }
  for i = 1, #items do parts[i + 1] = bulk(items[i]) end
  return concat(parts)
end

local NOT_INTEGER = err("value is not an integer or out of range")
local SYNTAX = err("syntax error")

local function wrong_args(name)
  return err(format("wrong number of arguments for '%s' command", name:lower()))
end

-- Redis accepts only canonical decimal integers.
local function parse_int(s)
  if s == nil or not find(s, "^%-?%d+$") or #s > 20 then return nil end
  local n = tointeger(tonumber(s))
  if n == nil or tostring(n) ~= s then return nil end
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
  if (delta > 0 and result < n) or (delta < 0 and result > n) then
    return err("increment or decrement would overflow")
  end
  data[key] = tostring(result)
  return int(result)
end

local function ttl_reply(key, scale)
  if lookup(key) == nil then return int(-2) end
  local deadline = expires[key]
  if deadline == nil then return int(-1) end
  local left = (deadline - monotonic()) * scale
  return int(math.max(0, math.floor(left + 0.5)))
end

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

commands.SET = function(a)
  if #a < 3 then return wrong_args("set") end
  local key, value = a[2], a[3]
  local deadline, nx, xx, keepttl = nil, false, false, false
  local i = 4
  while i <= #a do
    local o = upper(a[i])
    if (o == "EX" or o == "PX") and a[i + 1] then
      local n = parse_int(a[i + 1])
      if n == nil then return NOT_INTEGER end
      if n <= 0 then return err("invalid expire time in 'set' command") end
      deadline = monotonic() + (o == "EX" and n or n / 1000)
      i = i + 2
    elseif o == "NX" then nx, i = true, i + 1
    elseif o == "XX" then xx, i = true, i + 1
    elseif o == "KEEPTTL" then keepttl, i = true, i + 1
    else return SYNTAX end
  end
  if (nx and xx) or (keepttl and deadline) then return SYNTAX end
  local exists = lookup(key) ~= nil
  if (nx and exists) or (xx and not exists) then return NIL end
  data[key] = value
  if not keepttl then set_ttl(key, deadline) end
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
  if delta == nil or delta == math.mininteger then return NOT_INTEGER end
  return incr_by(a[2], -delta)
end

local function expire(a, name, scale)
  if #a ~= 3 then return wrong_args(name) end
  local n = parse_int(a[3])
  if n == nil then return NOT_INTEGER end
  if lookup(a[2]) == nil then return int(0) end
  if n <= 0 then
    delete(a[2])
  else
    set_ttl(a[2], monotonic() + n / scale)
  end
  return int(1)
end

commands.EXPIRE = function(a) return expire(a, "expire", 1) end
commands.PEXPIRE = function(a) return expire(a, "pexpire", 1000) end

commands.TTL = function(a)
  if #a ~= 2 then return wrong_args("ttl") end
  return ttl_reply(a[2], 1)
end

commands.PTTL = function(a)
  if #a ~= 2 then return wrong_args("pttl") end
  return ttl_reply(a[2], 1000)
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

commands.FLUSHDB = function()
  data, expires, nexpires = {}, {}, 0
  return OK
end
commands.FLUSHALL = commands.FLUSHDB

commands.SELECT = function(a)
  if #a ~= 2 then return wrong_args("select") end
  if a[2] ~= "0" then return err("DB index is out of range") end
  return OK
end

commands.QUIT = function() return OK, true end

-- Handshakes: redis-cli asks COMMAND DOCS, redis-benchmark CONFIG GET, redis-py CLIENT SETINFO.
commands.COMMAND = function() return "*0\r\n" end
commands.CONFIG = function(a) -- no settings: every parameter reads as empty
  if #a ~= 3 or upper(a[2]) ~= "GET" then return err("CONFIG supports only GET <parameter> here") end
  return "*2\r\n" .. bulk(a[3]) .. "$0\r\n\r\n"
end
commands.CLIENT = function(a)
  local sub_command = a[2] and upper(a[2]) or ""
  if sub_command == "SETINFO" or sub_command == "SETNAME" then return OK end
  if sub_command == "GETNAME" then return NIL end
  return err("unsupported CLIENT subcommand")
end
-- HELLO [2|3]: RESP3 differs from RESP2 here only in the null reply and the HELLO map (redis-py 5+ asks for 3).
commands.HELLO = function(a, session)
  local proto = a[2] or "2"
  if proto ~= "2" and proto ~= "3" then return "-NOPROTO unsupported protocol version\r\n" end
  session.resp3 = proto == "3"
  local fields = "$6\r\nserver\r\n$7\r\nmoonlet\r\n$5\r\nproto\r\n:" .. proto .. "\r\n"
  return (session.resp3 and "%2\r\n" or "*4\r\n") .. fields
end

---------------------------------------------------------------------------------------------------------
-- the protocol

-- Read one command into `args`, which is reused from one command to the next (no garbage per request; no
-- command keeps it): an array of bulk strings, or an inline line split on whitespace. Returns the argument
-- count, or nil, err (connection trouble), or false, message (a protocol error: answer and close).
local function read_command(conn, args, last_count)
  local line, e = conn:readline()
  if not line then
    if e == "line too long" then return false, "Protocol error: too big inline request" end
    return nil, e
  end
  local n
  if commands[line] then -- an inline command alone on its line (PING): nothing to split
    args[1], n = line, 1
  elseif byte(line, 1) ~= 42 then -- '*' starts an array; anything else is an inline command
    n = 0
    for word in gmatch(line, "%S+") do n = n + 1; args[n] = word end
  else
    n = parse_int(sub(line, 2))
    if n == nil or n > MAX_ARGS then return false, "Protocol error: invalid multibulk length" end
    for i = 1, n do
      local header
      header, e = conn:readline()
      if not header then return nil, e end
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

local function serve(conn)
  local session = { resp3 = false }
  conn:settimeouts(nil, nil, false) -- like Redis: idle clients may stay forever
  conn:setlimits { read = MAX_BULK + 2 }
  local args, count = {}, 0
  while true do
    local n, e = read_command(conn, args, count)
    if n == nil then return end -- closed, or a timeout while sending
    if n == false then
      conn:write(err(e))
      return
    end
    count = n
    local name = args[1]
    if name ~= nil and name ~= "" then
      local command = commands[name] or commands[upper(name)]
      if command == nil then
        conn:write(err(format("unknown command '%s', with args beginning with: %s", name,
          n > 1 and ("'" .. concat(args, "' '", 2, math.min(n, 4)) .. "' ") or "")))
      else
        local reply, close = command(args, session)
        if reply == NIL and session.resp3 then reply = "_\r\n" end
        conn:write(reply)
        if close then return end
      end
    end
  end
end

local server = assert(net.listen { host = opts.host, port = opts.port, handler = serve })
log.info("kv ready on " .. server.host .. ":" .. server.port)
