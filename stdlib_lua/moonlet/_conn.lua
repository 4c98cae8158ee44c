--- A connection's state and its read/write API, shared by every kind of byte stream: accepted and outgoing
--- connections (moonlet.net) and the HTTP server's connections (moonlet._httpd). Private to the stdlib.
--
-- A connection keeps its read buffer here, in Lua: `readline` on bytes already buffered costs no trip to
-- the host. Output is buffered too and handed to the host when the coroutine next waits (or when more than
-- the high-water mark is waiting, which also suspends the writer until the peer drains).
local host = require "moonlet._host"
local request, call, OP, argerror = host.request, host.call, host.OP, host.argerror
local mark_dirty, unmark, recv, recv_then = host.mark_dirty, host.unmark, host.recv, host.recv_then
local find, sub, byte, concat = string.find, string.sub, string.byte, table.concat
local type, error, setmetatable, tostring, select, next, floor = type, error, setmetatable, tostring, select, next,
  math.floor
local huge = math.huge

local SEND, SENDALL, WRITE, CLOSE, BUFFERED, OFFER = OP.SEND, OP.SENDALL, OP.WRITE, OP.CLOSE, OP.BUFFERED,
  OP.OFFER
local HIGH_WATER = host.limits.write_high_water
local MIN_LINE_LIMIT = 256 -- setlimits refuses a smaller line limit

local M = { MIN_LINE_LIMIT = MIN_LINE_LIMIT }

---@class moonlet.Conn
local Conn = {}
Conn.__index = Conn

-- A connection's own state lives in its array part, at these indices: PY (the host's handle), BUF/POS
-- (unread bytes are BUF from POS on), OUT/OUTN/OUTB (buffered output parts, their count and size), LIM
-- (shared {line=, read=} limits), CLOSED. Array slots are smaller than named fields and quicker to reach;
-- `readline` and `write`, the two calls of nearly every request, are copied into each connection so that
-- they are found at once instead of through the metatable. (Client connections add named fields: _key,
-- _counted, _idle, _connect_timeout.)
local PY <const>, BUF <const>, POS <const>, OUT <const> = 1, 2, 3, 4
local OUTN <const>, OUTB <const>, LIM <const>, CLOSED <const> = 5, 6, 7, 8

local function new_conn(py, lim)
  return setmetatable({ py, "", 1, {}, 0, 0, lim, false, readline = Conn.readline, write = Conn.write }, Conn)
end

-- A method called on something that is not a connection (`conn.readn(x, 4)` for `conn:readn(4)`), in Lua's
-- own words for a bad self. readline and write, the two calls of nearly every request, do not check (it
-- costs 0.9 % of kv.lua's instructions per request at -P16): a bad self fails inside them instead.
local function bad_self(fn, self)
  error(("calling '%s' on bad self (connection expected, got %s)"):format(fn, type(self)), 3)
end
M.bad_self = bad_self

-- The buffered output as one string, leaving the buffer empty (the caller knows there is some). (Its
-- concat, a C function, sits as low in its frame as it can: it runs in a reader's wait, and on Lua 5.4 a
-- C function called 20 slots up grows the coroutine's stack for good: see host.recv_then.)
local function take_out(self, n)
  self[OUTN], self[OUTB] = 0, 0
  local out = self[OUT]
  if n == 1 then
    local s = out[1]
    out[1] = nil
    return s
  end
  local s = concat(out, "", 1, n)
  for i = 1, n do out[i] = nil end
  return s
end

-- The buffered output as one string (nil if none), no longer marked for the door to send.
local function take(self)
  local n = self[OUTN]
  if n == 0 then return nil end
  unmark(self)
  return take_out(self, n)
end

-- called by the door before the coroutine yields
function Conn:_sync()
  local out = take(self)
  if out then call(WRITE, self[PY], out) end
end

-- Everything unread, leaving the buffer empty (nil if nothing).
local function drain(self)
  local buf, pos = self[BUF], self[POS]
  self[BUF], self[POS] = "", 1
  if pos > #buf then return nil end
  return sub(buf, pos)
end

-- Append the bytes that arrived to the unread ones.
local function append(self, data)
  local buf, pos = self[BUF], self[POS]
  if pos > #buf then
    self[BUF] = data
  else
    self[BUF] = sub(buf, pos) .. data
  end
  self[POS] = 1
end

-- Wait for more bytes and append them to the buffer (sending the buffered output on the way).
local function fill(self)
  local n, out = self[OUTN], nil
  if n > 0 then out = take_out(self, n) end
  local data, err = recv(self, self[PY], out)
  if not data then return nil, err end
  append(self, data)
  return true
end

local function check_count(n, what)
  if type(n) ~= "number" or n < 0 or floor(n) ~= n then
    argerror(1, what, "non-negative integer", n, nil, 1)
  end
end

-- Waiting for a line is a tail call to the door's recv_then, which goes on in `more_line` (or
-- `more_crlf_line`) with what arrived: append it and read the line again. (The unread part of a line split
-- across reads is searched again each time: at most the line limit a read, as appending it copies.)
local more_line, more_crlf_line

--- Read one line; the `\n` or `\r\n` that ends it is removed.
--- Returns nil, "line too long", partial when more than the line limit (64 KiB) arrives without a
--- newline: the unread bytes are dropped with it, so answer and close. With `crlf` true a line must end in
--- `\r\n`, as protocols that frame by it require (RESP, SMTP): one that ends in a bare `\n` is read and
--- returned as nil, "bare newline", line.
--- Example: `local line, err, bare = conn:readline(true)`
---@async
---@param crlf? boolean
---@return string? line
---@return string? err
---@return string? partial
function Conn:readline(crlf)
  local buf, pos = self[BUF], self[POS]
  local i = pos <= #buf and find(buf, "\n", pos, true) -- (an empty buffer is the common case unpipelined)
  if i then
    -- (the limit is looked up only for lines longer than any limit can be smaller than)
    if i - pos > MIN_LINE_LIMIT and i - pos > self[LIM].line then
      self[POS] = i + 1
      return nil, "line too long", sub(buf, pos, i - 1)
    end
    self[POS] = i + 1
    if i > pos and byte(buf, i - 1) == 13 then return sub(buf, pos, i - 2) end
    if crlf then return nil, "bare newline", sub(buf, pos, i - 1) end -- (only now: CRLF lines pay nothing)
    return sub(buf, pos, i - 1)
  end
  if #buf - pos + 1 > self[LIM].line then return nil, "line too long", drain(self) end
  local n = self[OUTN]
  local out = n > 0 and take_out(self, n) or nil -- (taken before the call below is set up: lower)
  return recv_then(self, out, crlf and more_crlf_line or more_line)
end
local readline = Conn.readline

function more_line(self, data, err)
  if not data then return nil, err, drain(self) end
  append(self, data)
  return readline(self, false)
end

function more_crlf_line(self, data, err)
  if not data then return nil, err, drain(self) end
  append(self, data)
  return readline(self, true)
end

--- Read until `delim` (a plain string, not a pattern); the delimiter is consumed and not returned.
--- Example: `local headers, err = conn:readuntil("\r\n\r\n")`
---@async
---@param delim string
---@return string? data
---@return string? err
---@return string? partial
function Conn:readuntil(delim)
  if type(self) ~= "table" or not self[POS] then bad_self("readuntil", self) end
  if type(delim) ~= "string" or delim == "" then
    argerror(1, "readuntil", "non-empty string", delim)
  end
  local dlen = #delim
  local from = self[POS]
  while true do
    local buf, pos = self[BUF], self[POS]
    local i = find(buf, delim, from, true)
    if i then
      self[POS] = i + dlen
      return sub(buf, pos, i - 1)
    end
    local have = #buf - pos + 1
    if have > self[LIM].line then return nil, "too large", drain(self) end
    local ok, err = fill(self)
    if not ok then return nil, err, drain(self) end
    from = have - dlen + 2
    if from < 1 then from = 1 end
  end
end

--- Read exactly `n` bytes. Memory grows only with bytes that arrived, never with `n`; `n` above the read
--- limit (1 MiB by default) returns nil, "too large" at once.
---@async
---@param n integer
---@return string? data
---@return string? err
---@return string? partial
function Conn:readn(n)
  if type(self) ~= "table" or not self[POS] then bad_self("readn", self) end
  check_count(n, "readn")
  if n > self[LIM].read then return nil, "too large" end
  local buf, pos = self[BUF], self[POS]
  local have = #buf - pos + 1
  if have >= n then
    self[POS] = pos + n
    return sub(buf, pos, pos + n - 1)
  end
  -- collect the missing bytes in parts and join them once
  local parts, count, got = { drain(self) }, 1, have
  if have == 0 then count = 0 end
  while got < n do
    local k = self[OUTN]
    local data, err = recv(self, self[PY], k > 0 and take_out(self, k) or nil)
    if not data then return nil, err, concat(parts, "", 1, count) end
    count = count + 1
    parts[count] = data
    got = got + #data
  end
  local all = concat(parts, "", 1, count)
  if got == n then return all end
  self[BUF], self[POS] = all, n + 1
  return sub(all, 1, n)
end

--- Read whatever has arrived: at least one byte, at most `max` (all that is buffered if omitted).
--- Example: `local data, err = conn:read(4096)`
---@async
---@param max? integer
---@return string? data
---@return string? err
function Conn:read(max)
  if type(self) ~= "table" or not self[POS] then bad_self("read", self) end
  if max ~= nil then
    check_count(max, "read")
    if max == 0 then return "" end
  end
  if self[POS] > #self[BUF] then
    local ok, err = fill(self)
    if not ok then return nil, err end
  end
  local buf, pos = self[BUF], self[POS]
  if max == nil or #buf - pos + 1 <= max then
    self[BUF], self[POS] = "", 1
    return pos == 1 and buf or sub(buf, pos)
  end
  self[POS] = pos + max
  return sub(buf, pos, pos + max - 1)
end

-- The general case of write (any number of strings, numbers and arrays of them), a function of its own:
-- its loop calls C functions (select, type) high in its frame, and on Lua 5.4 one called 20 slots up grows
-- the coroutine's stack for good (host.recv_then); a handler's `conn:write(line, "\n")` went this way once,
-- and its idle connection kept ~1.4 KB more. (A tail call from write: the app's frame is still the caller
-- an argument error names.)
local function write_parts(self, out, n, size, ...)
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    local tv = type(v)
    if tv == "string" then
      n = n + 1; out[n] = v; size = size + #v
    elseif tv == "number" then
      v = tostring(v); n = n + 1; out[n] = v; size = size + #v
    elseif tv == "table" then
      for j = 1, #v do
        local part = v[j]
        if type(part) == "number" then part = tostring(part) end
        if type(part) ~= "string" then
          self[OUTN], self[OUTB] = n, size
          argerror(i, "write", "array of strings and numbers (element " .. j .. ")", part)
        end
        n = n + 1; out[n] = part; size = size + #part
      end
    else
      self[OUTN], self[OUTB] = n, size
      argerror(i, "write", "string, number or array", v)
    end
  end
  self[OUTN], self[OUTB] = n, size
  if size >= HIGH_WATER then return self:flush() end
  return true
end

--- Buffer data to send: strings, numbers, or arrays of them. Does not wait unless more than the
--- high-water mark (64 KiB) is unsent, in which case it waits for the peer to drain (backpressure).
--- Example: `conn:write("+OK ", count, "\r\n")`
---@param ... string|number|(string|number)[]
---@return true? ok
---@return string? err
function Conn:write(...)
  -- (Its C calls come first, at the bottom of its frame: a reply is often written from deep in a handler's
  -- loop, and on Lua 5.4 each slot higher could grow the stack there: see write_parts.)
  local nargs, s = select("#", ...), ...
  local plain = type(s) == "string" and (nargs == 1 or nargs == 2 and type((select(2, ...))) == "string")
  if self[CLOSED] then return nil, "closed" end
  local out, n, size = self[OUT], self[OUTN], self[OUTB]
  if n == 0 then mark_dirty(self) end
  if not plain then return write_parts(self, out, n, size, ...) end
  if nargs == 1 then -- the common cases, kept short: one string, or two
    n = n + 1
    out[n] = s
    size = size + #s
  else
    local _, s2 = ...
    out[n + 1], out[n + 2] = s, s2
    n = n + 2
    size = size + #s + #s2
  end
  self[OUTN], self[OUTB] = n, size
  if size >= HIGH_WATER then return self:flush() end
  return true
end

--- Hand buffered output to the host now; waits only while more than the high-water mark is unsent.
---@async
---@return true? ok
---@return string? err
function Conn:flush()
  if type(self) ~= "table" or not self[POS] then bad_self("flush", self) end
  if self[CLOSED] then return nil, "closed" end
  local ok, err = request(SEND, self[PY], take(self))
  if not ok and err ~= "busy" then self[CLOSED] = true end -- (closed by the host: every later call says so)
  return ok, err
end

--- Write, then wait until every byte has been handed to the operating system.
---@async
---@param ... string|number|(string|number)[]
---@return true? ok
---@return string? err
function Conn:writen(...)
  if type(self) ~= "table" or not self[POS] then bad_self("writen", self) end
  if select("#", ...) > 0 then
    local ok, err = self:write(...)
    if not ok then return nil, err end
  end
  if self[CLOSED] then return nil, "closed" end
  local ok, err = request(SENDALL, self[PY], take(self))
  if not ok and err ~= "busy" then self[CLOSED] = true end
  return ok, err
end

-- For moonlet.group: hand `s` to the host now, after what is buffered, unless more than `limit` bytes would
-- then be waiting to be sent. Never waits. Returns true; or false, bytes waiting (over the limit); or
-- nil, "closed".
function Conn:_offer(s, limit)
  if self[CLOSED] then return nil, "closed" end
  local _, unsent = call(BUFFERED, self[PY])
  if unsent == nil then self[CLOSED] = true return nil, "closed" end
  local waiting = self[OUTB] + unsent
  if waiting + #s > limit then return false, waiting end
  local out = take(self)
  if not call(WRITE, self[PY], out and out .. s or s) then
    self[CLOSED] = true
    return nil, "closed"
  end
  return true
end

-- For moonlet.group: hand `s` to each of conns[first..last] whose unsent output stays within `limit`, in one
-- trip to the host, which converts `s` once (every member left with it unsent shares that one copy). A
-- member with output buffered here goes its own way (_offer), after that output. Returns how many took it,
-- the members found closed, and the slow ones with their waiting bytes (in pairs).
function M.offer_many(conns, first, last, s, limit)
  local handles, members, n = {}, {}, 0
  local sent, closed, slow = 0, {}, {}
  for i = first, last do
    local c = conns[i]
    if c[CLOSED] then
      closed[#closed + 1] = c
    elseif c[OUTN] > 0 then
      local ok, waiting = c:_offer(s, limit)
      if ok then
        sent = sent + 1
      elseif ok == nil then
        closed[#closed + 1] = c
      else
        slow[#slow + 1], slow[#slow + 2] = c, waiting
      end
    else
      n = n + 1
      handles[n], members[n] = c[PY], c
    end
  end
  if n == 0 then return sent, closed, slow end
  sent = sent + n
  local gone, late = call(OFFER, handles, s, limit)
  if gone then
    for k = 1, #gone do
      local c = members[gone[k]]
      c[CLOSED] = true
      closed[#closed + 1] = c
    end
    for k = 1, #late, 2 do
      slow[#slow + 1], slow[#slow + 2] = members[late[k]], late[k + 1]
    end
    sent = sent - #gone - floor(#late / 2)
  end
  return sent, closed, slow
end

--- Send what is buffered, then close. Other coroutines waiting on this connection get nil, "closed".
--- Example: `conn:close()`
---@return true? ok
---@return string? err
function Conn:close()
  if type(self) ~= "table" or not self[POS] then bad_self("close", self) end
  if self[CLOSED] then return nil, "closed" end
  self[CLOSED] = true
  call(CLOSE, self[PY], take(self), false)
  if self._counted then
    self._counted = false
    M.release(self._key, self)
  end
  return true
end

-- For moonlet.group: close now, dropping what is not sent (a peer that stopped reading would otherwise keep
-- the connection open until it took every byte).
function Conn:_abort()
  if self[CLOSED] then return end
  self[CLOSED] = true
  take(self)
  call(CLOSE, self[PY], nil, true)
  if self._counted then
    self._counted = false
    M.release(self._key, self)
  end
end

--- Send what is buffered, then end the sending direction (half-close): the peer reads end-of-stream while
--- this side can still read its answer.
---@return true? ok
---@return string? err
function Conn:shutdown()
  if type(self) ~= "table" or not self[POS] then bad_self("shutdown", self) end
  if self[CLOSED] then return nil, "closed" end
  return call(OP.SHUTDOWN, self[PY], take(self))
end

local function check_timeout(v, i, what)
  if v == nil then return nil end
  if v == false then return huge end
  if type(v) ~= "number" or v ~= v or v <= 0 then
    argerror(i, what, "seconds > 0, math.huge or false", v, nil, 1)
  end
  return v
end

--- Set the send and read timeouts (seconds; `false` or `math.huge` for none). Defaults: 60 s each.
--- Example: `conn:settimeout(5)`
---@param seconds number|false
function Conn:settimeout(seconds)
  if type(self) ~= "table" or not self[POS] then bad_self("settimeout", self) end
  local s = check_timeout(seconds, 1, "settimeout")
  self._connect_timeout = s
  call(OP.SETTIMEOUTS, self[PY], s, s)
end

--- Set the connect, send and read timeouts separately; nil leaves one unchanged. The connection is open
--- already: its connect timeout bounds a later TLS handshake (`conn:starttls`).
---@param connect number|false|nil
---@param send number|false|nil
---@param read number|false|nil
function Conn:settimeouts(connect, send, read)
  if type(self) ~= "table" or not self[POS] then bad_self("settimeouts", self) end
  local c = check_timeout(connect, 1, "settimeouts")
  if c ~= nil then self._connect_timeout = c end
  call(OP.SETTIMEOUTS, self[PY], check_timeout(send, 2, "settimeouts"), check_timeout(read, 3, "settimeouts"))
end

--- The peer's address: host and port, or the socket path for a Unix socket (nil, "closed" once closed).
--- Example: `local host, port = conn:peer()`
---@return string? host
---@return integer|string|nil port
function Conn:peer()
  if type(self) ~= "table" or not self[POS] then bad_self("peer", self) end
  return call(OP.PEER, self[PY])
end

--- Bytes received but not yet read, and bytes written but not yet sent.
--- Example: `local unread, unsent = conn:buffered()`
---@return integer unread
---@return integer unsent
function Conn:buffered()
  if type(self) ~= "table" or not self[POS] then bad_self("buffered", self) end
  local pending, unsent = call(OP.BUFFERED, self[PY])
  return #self[BUF] - self[POS] + 1 + pending, self[OUTB] + unsent
end

local LIMITS = { max_line = true, max_read = true }

-- setlimits{line=, read=} until the next release (renamed max_line, max_read as net.listen's)
local RENAMED_LIMITS = { line = "max_line", read = "max_read" }

-- The limits of a connection, one table per pair of values (read only: every connection with the same
-- limits shares it; an app that sets its limits on each connection, as kv.lua does, keeps no table per
-- idle connection for them). Weak: a pair no connection uses any more goes.
local shared_limits = setmetatable({}, { __mode = "v" })
local function limits_of(line, read)
  local key = line .. ":" .. read
  local lim = shared_limits[key]
  if lim == nil then
    lim = { line = line, read = read }
    shared_limits[key] = lim
  end
  return lim
end

--- Change this connection's line limit (readline, readuntil) and read limit (readn): the same knobs, by the
--- same names, as net.listen's `max_line` and `max_read`: for limits that change during a conversation
--- (limits every connection has are cheaper as the listener's options).
--- Example: `conn:setlimits { max_read = 64 * 1024 * 1024 } -- once the client has logged in`
---@param limits {max_line?: integer, max_read?: integer}
function Conn:setlimits(limits)
  if type(self) ~= "table" or not self[POS] then bad_self("setlimits", self) end
  if type(limits) ~= "table" then
    argerror(1, "setlimits", "table", limits)
  end
  -- (options checked here, in this frame, when all are current: a handler's setup that goes two frames
  -- deeper into the checks' loops doubles its coroutine's stack on Lua 5.4, where a C function called 20
  -- slots up grows it, and an idle connection keeps it: see host.recv_then)
  for k in next, limits do
    if not LIMITS[k] then
      limits = host.renamed(limits, "conn:setlimits", RENAMED_LIMITS)
      host.check_options(limits, 1, "setlimits", LIMITS)
      break
    end
  end
  local line, read = limits.max_line or self[LIM].line, limits.max_read or self[LIM].read
  check_count(line, "setlimits"); check_count(read, "setlimits")
  if line < MIN_LINE_LIMIT then argerror(1, "setlimits", "integer >= " .. MIN_LINE_LIMIT, line, "max_line") end
  self[LIM] = limits_of(line, read)
end


M.Conn = Conn
M.new = new_conn
M.fill = fill
M.take = take
M.drain = drain
M.check_count = check_count
M.check_timeout = check_timeout
M.slots = { PY = PY, BUF = BUF, POS = POS, OUT = OUT, OUTN = OUTN, OUTB = OUTB, LIM = LIM, CLOSED = CLOSED }
-- set by moonlet.net: a pooled connection counted against its destination's pool_size was closed
M.release = nil

return M
