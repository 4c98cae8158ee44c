--- TCP and Unix-socket servers, and the connection API.
--
-- A connection keeps its read buffer here, in Lua: `readline` on bytes already buffered costs no trip to
-- the host. Output is buffered too and handed to the host when the coroutine next waits (or when more than
-- the high-water mark is waiting, which also suspends the writer until the peer drains).
--
-- Operational failures return `nil, err[, partial]` where err is one of:
--   "timeout"       the read or write waited longer than the connection's timeout
--   "closed"        the peer closed or vanished, the connection was closed, or the server is draining
--   "line too long" readline saw more than the line limit without a newline
--   "too large"     readn/readuntil asked for more than the read limit, or unsent output passed its cap
--   "busy"          another coroutine is already reading (or waiting to write) on this connection
-- Misuse (a bad argument) raises an error pointing at the caller's line.
-- @module moonlet.net
local host = require "moonlet._host"
local request, call, OP = host.request, host.call, host.OP
local mark_dirty, unmark = host.mark_dirty, host.unmark
local find, sub, byte, concat = string.find, string.sub, string.byte, table.concat
local type, error, setmetatable, tostring, select, floor = type, error, setmetatable, tostring, select, math.floor
local huge = math.huge

local RECV, SEND, SENDALL, WRITE, CLOSE = OP.RECV, OP.SEND, OP.SENDALL, OP.WRITE, OP.CLOSE
local HIGH_WATER = host.limits.write_high_water
local MIN_LINE_LIMIT = 256 -- setlimits refuses a smaller line limit

local M = {}

---@class moonlet.Conn
local Conn = {}
Conn.__index = Conn
M.Conn = Conn

-- Fields: _py (the host's handle), _buf/_pos (unread bytes are _buf from _pos on), _out/_outn/_outb
-- (buffered output parts, their count and size), _lim (shared {line=, read=} limits), _closed.

local function new_conn(py, lim)
  return setmetatable(
    { _py = py, _buf = "", _pos = 1, _out = {}, _outn = 0, _outb = 0, _lim = lim, _closed = false }, Conn)
end

-- Take the buffered output as one string (nil if none), leaving the buffer empty.
local function take(self)
  local n = self._outn
  if n == 0 then return nil end
  local out = self._out
  local s = n == 1 and out[1] or concat(out, "", 1, n)
  for i = 1, n do out[i] = nil end
  self._outn, self._outb = 0, 0
  unmark(self)
  return s
end

-- called by the door before the coroutine yields
function Conn:_sync()
  local out = take(self)
  if out then call(WRITE, self._py, out) end
end

-- Everything unread, leaving the buffer empty (nil if nothing).
local function drain(self)
  local buf, pos = self._buf, self._pos
  self._buf, self._pos = "", 1
  if pos > #buf then return nil end
  return sub(buf, pos)
end

-- Wait for more bytes and append them to the buffer (sending the buffered output on the way).
local function fill(self)
  local out = nil
  if self._outn > 0 then out = take(self) end
  local data, err = request(RECV, self._py, out)
  if not data then return nil, err end
  local buf, pos = self._buf, self._pos
  if pos > #buf then
    self._buf = data
  else
    self._buf = sub(buf, pos) .. data
  end
  self._pos = 1
  return true
end

local function check_count(n, what)
  if type(n) ~= "number" or n < 0 or floor(n) ~= n then
    error("bad argument #1 to '" .. what .. "' (non-negative integer expected, got " .. tostring(n) .. ")", 3)
  end
end

--- Read one line; the `\n` or `\r\n` that ends it is removed.
--- Returns nil, "line too long", partial when more than the line limit (64 KiB) arrives without a
--- newline: the unread bytes are dropped with it, so answer and close.
---@async
---@return string? line
---@return string? err
---@return string? partial
function Conn:readline()
  local from = self._pos
  while true do
    local buf, pos = self._buf, self._pos
    local i = find(buf, "\n", from, true)
    if i then
      -- (the limit is looked up only for lines longer than any limit can be smaller than)
      if i - pos > MIN_LINE_LIMIT and i - pos > self._lim.line then
        self._pos = i + 1
        return nil, "line too long", sub(buf, pos, i - 1)
      end
      self._pos = i + 1
      if i > pos and byte(buf, i - 1) == 13 then return sub(buf, pos, i - 2) end
      return sub(buf, pos, i - 1)
    end
    local have = #buf - pos + 1
    if have > self._lim.line then return nil, "line too long", drain(self) end
    local ok, err = fill(self)
    if not ok then return nil, err, drain(self) end
    from = have + 1
  end
end

--- Read until `delim` (a plain string, not a pattern); the delimiter is consumed and not returned.
---@async
---@param delim string
---@return string? data
---@return string? err
---@return string? partial
function Conn:readuntil(delim)
  if type(delim) ~= "string" or delim == "" then
    error("bad argument #1 to 'readuntil' (non-empty string expected)", 2)
  end
  local dlen = #delim
  local from = self._pos
  while true do
    local buf, pos = self._buf, self._pos
    local i = find(buf, delim, from, true)
    if i then
      self._pos = i + dlen
      return sub(buf, pos, i - 1)
    end
    local have = #buf - pos + 1
    if have > self._lim.line then return nil, "too large", drain(self) end
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
  check_count(n, "readn")
  if n > self._lim.read then return nil, "too large" end
  local buf, pos = self._buf, self._pos
  local have = #buf - pos + 1
  if have >= n then
    self._pos = pos + n
    return sub(buf, pos, pos + n - 1)
  end
  -- collect the missing bytes in parts and join them once
  local parts, count, got = { drain(self) }, 1, have
  if have == 0 then count = 0 end
  while got < n do
    local data, err = request(RECV, self._py, take(self))
    if not data then return nil, err, concat(parts, "", 1, count) end
    count = count + 1
    parts[count] = data
    got = got + #data
  end
  local all = concat(parts, "", 1, count)
  if got == n then return all end
  self._buf, self._pos = all, n + 1
  return sub(all, 1, n)
end

--- Read whatever has arrived: at least one byte, at most `max` (all that is buffered if omitted).
---@async
---@param max? integer
---@return string? data
---@return string? err
function Conn:read(max)
  if max ~= nil then
    check_count(max, "read")
    if max == 0 then return "" end
  end
  if self._pos > #self._buf then
    local ok, err = fill(self)
    if not ok then return nil, err end
  end
  local buf, pos = self._buf, self._pos
  if max == nil or #buf - pos + 1 <= max then
    self._buf, self._pos = "", 1
    return pos == 1 and buf or sub(buf, pos)
  end
  self._pos = pos + max
  return sub(buf, pos, pos + max - 1)
end

--- Buffer data to send: strings, numbers, or arrays of them. Does not wait unless more than the
--- high-water mark (64 KiB) is unsent, in which case it waits for the peer to drain (backpressure).
---@param ... string|number|(string|number)[]
---@return true? ok
---@return string? err
function Conn:write(...)
  if self._closed then return nil, "closed" end
  local out, n, size = self._out, self._outn, self._outb
  if n == 0 then mark_dirty(self) end
  local s, nargs = ..., select("#", ...)
  if nargs == 1 and type(s) == "string" then -- the common case, kept short
    n = n + 1
    out[n] = s
    size = size + #s
    self._outn, self._outb = n, size
    if size >= HIGH_WATER then return self:flush() end
    return true
  end
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
          self._outn, self._outb = n, size
          error("bad argument #" .. i .. " to 'write' (element " .. j .. " is a " .. type(part) .. ")", 2)
        end
        n = n + 1; out[n] = part; size = size + #part
      end
    else
      self._outn, self._outb = n, size
      error("bad argument #" .. i .. " to 'write' (string, number or array expected, got " .. tv .. ")", 2)
    end
  end
  self._outn, self._outb = n, size
  if size >= HIGH_WATER then return self:flush() end
  return true
end

--- Hand buffered output to the host now; waits only while more than the high-water mark is unsent.
---@async
---@return true? ok
---@return string? err
function Conn:flush()
  if self._closed then return nil, "closed" end
  return request(SEND, self._py, take(self))
end

--- Write, then wait until every byte has been handed to the operating system.
---@async
---@param ... string|number|(string|number)[]
---@return true? ok
---@return string? err
function Conn:writen(...)
  if select("#", ...) > 0 then
    local ok, err = self:write(...)
    if not ok then return nil, err end
  end
  if self._closed then return nil, "closed" end
  return request(SENDALL, self._py, take(self))
end

--- Send what is buffered, then close. Other coroutines waiting on this connection get nil, "closed".
---@return true? ok
---@return string? err
function Conn:close()
  if self._closed then return nil, "closed" end
  self._closed = true
  call(CLOSE, self._py, take(self))
  return true
end

local function check_timeout(v, i, what)
  if v == nil then return nil end
  if v == false then return huge end
  if type(v) ~= "number" or v ~= v or v <= 0 then
    error("bad argument #" .. i .. " to '" .. what .. "' (seconds > 0, math.huge or false expected)", 3)
  end
  return v
end

--- Set the send and read timeouts (seconds; `false` or `math.huge` for none). Defaults: 60 s each.
---@param seconds number|false
function Conn:settimeout(seconds)
  local s = check_timeout(seconds, 1, "settimeout")
  self._connect_timeout = s
  call(OP.SETTIMEOUTS, self._py, s, s)
end

--- Set the connect, send and read timeouts separately; nil leaves one unchanged.
---@param connect number|false|nil
---@param send number|false|nil
---@param read number|false|nil
function Conn:settimeouts(connect, send, read)
  self._connect_timeout = check_timeout(connect, 1, "settimeouts")
  call(OP.SETTIMEOUTS, self._py, check_timeout(send, 2, "settimeouts"), check_timeout(read, 3, "settimeouts"))
end

--- The peer's address: host and port, or the socket path for a Unix socket (nil, "closed" once closed).
---@return string? host
---@return integer|string|nil port
function Conn:peer()
  return call(OP.PEER, self._py)
end

--- Bytes received but not yet read, and bytes written but not yet sent.
---@return integer unread
---@return integer unsent
function Conn:buffered()
  local pending, unsent = call(OP.BUFFERED, self._py)
  return #self._buf - self._pos + 1 + pending, self._outb + unsent
end

--- Change this connection's line limit (readline, readuntil) and read limit (readn).
---@param limits {line?: integer, read?: integer}
function Conn:setlimits(limits)
  if type(limits) ~= "table" then error("bad argument #1 to 'setlimits' (table expected)", 2) end
  local line, read = limits.line or self._lim.line, limits.read or self._lim.read
  check_count(line, "setlimits"); check_count(read, "setlimits")
  if line < MIN_LINE_LIMIT then error("setlimits: the line limit must be at least " .. MIN_LINE_LIMIT, 2) end
  self._lim = { line = line, read = read }
end

---@class moonlet.Listener
---@field host string
---@field port integer?
---@field path string?
local Listener = {}
Listener.__index = Listener

--- Stop accepting new connections; connections already accepted are served on.
function Listener:close()
  call(OP.UNLISTEN, self._py)
end

--- Serve TCP (host, port) or a Unix socket (path). `handler(conn)` runs in its own coroutine for each
--- accepted connection; the connection is closed when it returns, and a Lua error in it ends only that
--- connection (logged with its traceback). Returns a listener, or nil, err if the address cannot be bound.
--- `port = 0` picks a free port (see `listener.port`).
---@async
---@param opts {host?: string, port?: integer, path?: string, handler: fun(conn: moonlet.Conn),
---             max_line?: integer, max_read?: integer}
---@return moonlet.Listener? listener
---@return string? err
function M.listen(opts)
  if type(opts) ~= "table" then error("bad argument #1 to 'listen' (table expected)", 2) end
  local handler = opts.handler
  if type(handler) ~= "function" then error("listen: 'handler' must be a function", 2) end
  local lim = { line = opts.max_line or host.limits.max_line, read = opts.max_read or host.limits.max_read }
  check_count(lim.line, "listen"); check_count(lim.read, "listen")
  if lim.line < MIN_LINE_LIMIT then error("listen: 'max_line' must be at least " .. MIN_LINE_LIMIT, 2) end
  local where, port
  if opts.path ~= nil then
    if type(opts.path) ~= "string" then error("listen: 'path' must be a string", 2) end
    where = opts.path
  else
    where, port = opts.host or "127.0.0.1", opts.port
    if type(where) ~= "string" then error("listen: 'host' must be a string", 2) end
    if type(port) ~= "number" or port < 0 or port > 65535 or floor(port) ~= port then
      error("listen: 'port' must be an integer from 0 to 65535", 2)
    end
  end
  local function entry(py)
    local conn = new_conn(py, lim)
    handler(conn)
    if not conn._closed then conn:close() end
  end
  local py, bound = request(OP.LISTEN, where, port, entry)
  if not py then return nil, bound end
  return setmetatable({ _py = py, host = port and where or nil, port = bound, path = not port and where or nil },
    Listener)
end

return M
