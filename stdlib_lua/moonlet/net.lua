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
local mark_dirty, unmark, recv = host.mark_dirty, host.unmark, host.recv
local find, sub, byte, concat = string.find, string.sub, string.byte, table.concat
local type, error, setmetatable, tostring, select, floor = type, error, setmetatable, tostring, select, math.floor
local huge = math.huge

local SEND, SENDALL, WRITE, CLOSE = OP.SEND, OP.SENDALL, OP.WRITE, OP.CLOSE
local HIGH_WATER = host.limits.write_high_water
local host_limits = host.limits
local MIN_LINE_LIMIT = 256 -- setlimits refuses a smaller line limit

local M = {}

-- Connection pools of the client side (see net.connect): per destination key, the idle connections kept
-- by setkeepalive, and with `pool_size` the count of open ones and the tasks waiting for one.
local idle = {}      -- key -> stack of {conn =, expires =}
local open = {}      -- key -> open connections (idle or in use), when bounded by pool_size
local waiting = {}   -- key -> tasks waiting for a connection
local handoff = {}   -- key -> sync.queue passing a connection (or `true`: room to open one) to a waiter

-- A bounded pool loses one open connection: give its room to a waiter, or free it.
local function release_slot(key)
  if (waiting[key] or 0) > 0 then
    handoff[key]:put(true)
  else
    open[key] = open[key] - 1
  end
end

---@class moonlet.Conn
local Conn = {}
Conn.__index = Conn
M.Conn = Conn

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

-- The buffered output as one string, leaving the buffer empty (the caller knows there is some).
local function take_out(self, n)
  local out = self[OUT]
  local s
  if n == 1 then
    s = out[1]
    out[1] = nil
  else
    s = concat(out, "", 1, n)
    for i = 1, n do out[i] = nil end
  end
  self[OUTN], self[OUTB] = 0, 0
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

-- Wait for more bytes and append them to the buffer (sending the buffered output on the way).
local function fill(self)
  local n, out = self[OUTN], nil
  if n > 0 then out = take_out(self, n) end
  local data, err = recv(self, self[PY], out)
  if not data then return nil, err end
  local buf, pos = self[BUF], self[POS]
  if pos > #buf then
    self[BUF] = data
  else
    self[BUF] = sub(buf, pos) .. data
  end
  self[POS] = 1
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
  local from = self[POS]
  while true do
    local buf, pos = self[BUF], self[POS]
    local i = from <= #buf and find(buf, "\n", from, true) -- (an empty buffer is the common case unpipelined)
    if i then
      -- (the limit is looked up only for lines longer than any limit can be smaller than)
      if i - pos > MIN_LINE_LIMIT and i - pos > self[LIM].line then
        self[POS] = i + 1
        return nil, "line too long", sub(buf, pos, i - 1)
      end
      self[POS] = i + 1
      if i > pos and byte(buf, i - 1) == 13 then return sub(buf, pos, i - 2) end
      return sub(buf, pos, i - 1)
    end
    local have = #buf - pos + 1
    if have > self[LIM].line then return nil, "line too long", drain(self) end
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
---@async
---@param max? integer
---@return string? data
---@return string? err
function Conn:read(max)
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

--- Buffer data to send: strings, numbers, or arrays of them. Does not wait unless more than the
--- high-water mark (64 KiB) is unsent, in which case it waits for the peer to drain (backpressure).
---@param ... string|number|(string|number)[]
---@return true? ok
---@return string? err
function Conn:write(...)
  if self[CLOSED] then return nil, "closed" end
  local out, n, size = self[OUT], self[OUTN], self[OUTB]
  if n == 0 then mark_dirty(self) end
  local s, nargs = ..., select("#", ...)
  if nargs == 1 and type(s) == "string" then -- the common case, kept short
    n = n + 1
    out[n] = s
    size = size + #s
    self[OUTN], self[OUTB] = n, size
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
          self[OUTN], self[OUTB] = n, size
          error("bad argument #" .. i .. " to 'write' (element " .. j .. " is a " .. type(part) .. ")", 2)
        end
        n = n + 1; out[n] = part; size = size + #part
      end
    else
      self[OUTN], self[OUTB] = n, size
      error("bad argument #" .. i .. " to 'write' (string, number or array expected, got " .. tv .. ")", 2)
    end
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
  if self[CLOSED] then return nil, "closed" end
  return request(SEND, self[PY], take(self))
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
  if self[CLOSED] then return nil, "closed" end
  return request(SENDALL, self[PY], take(self))
end

--- Send what is buffered, then close. Other coroutines waiting on this connection get nil, "closed".
---@return true? ok
---@return string? err
function Conn:close()
  if self[CLOSED] then return nil, "closed" end
  self[CLOSED] = true
  call(CLOSE, self[PY], take(self))
  if self._counted then
    self._counted = false
    release_slot(self._key)
  end
  return true
end

--- Send what is buffered, then end the sending direction (half-close): the peer reads end-of-stream while
--- this side can still read its answer.
---@return true? ok
---@return string? err
function Conn:shutdown()
  if self[CLOSED] then return nil, "closed" end
  return call(OP.SHUTDOWN, self[PY], take(self))
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
  call(OP.SETTIMEOUTS, self[PY], s, s)
end

--- Set the connect, send and read timeouts separately; nil leaves one unchanged.
---@param connect number|false|nil
---@param send number|false|nil
---@param read number|false|nil
function Conn:settimeouts(connect, send, read)
  self._connect_timeout = check_timeout(connect, 1, "settimeouts")
  call(OP.SETTIMEOUTS, self[PY], check_timeout(send, 2, "settimeouts"), check_timeout(read, 3, "settimeouts"))
end

--- The peer's address: host and port, or the socket path for a Unix socket (nil, "closed" once closed).
---@return string? host
---@return integer|string|nil port
function Conn:peer()
  return call(OP.PEER, self[PY])
end

--- Bytes received but not yet read, and bytes written but not yet sent.
---@return integer unread
---@return integer unsent
function Conn:buffered()
  local pending, unsent = call(OP.BUFFERED, self[PY])
  return #self[BUF] - self[POS] + 1 + pending, self[OUTB] + unsent
end

--- Change this connection's line limit (readline, readuntil) and read limit (readn).
---@param limits {line?: integer, read?: integer}
function Conn:setlimits(limits)
  if type(limits) ~= "table" then error("bad argument #1 to 'setlimits' (table expected)", 2) end
  local line, read = limits.line or self[LIM].line, limits.read or self[LIM].read
  check_count(line, "setlimits"); check_count(read, "setlimits")
  if line < MIN_LINE_LIMIT then error("setlimits: the line limit must be at least " .. MIN_LINE_LIMIT, 2) end
  self[LIM] = { line = line, read = read }
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
    if not conn[CLOSED] then conn:close() end
  end
  local py, bound = request(OP.LISTEN, where, port, entry)
  if not py then return nil, bound end
  return setmetatable({ _py = py, host = port and where or nil, port = bound, path = not port and where or nil },
    Listener)
end

---------------------------------------------------------------------------------------------------------
-- the client side

local DEFAULT_IDLE_TIMEOUT, DEFAULT_IDLE_SIZE = 60, 30

local function check_opts(opts, what)
  if opts ~= nil and type(opts) ~= "table" then
    error("bad argument to '" .. what .. "' (options table expected)", 3)
  end
  return opts or {}
end

-- An idle pooled connection to `key` that is still usable, or nil (expired or broken ones are closed).
local function take_idle(key)
  local stack = idle[key]
  local now = call(OP.MONOTONIC)
  while stack and #stack > 0 do
    local entry = stack[#stack]
    stack[#stack] = nil
    local conn = entry.conn
    if entry.expires > now and call(OP.REUSABLE, conn[PY]) then
      conn._idle = false
      return conn
    end
    conn:close()
  end
  return nil
end

--- Connect to `host`, `port` (TCP) or to a Unix socket `path` (`net.connect(path)`); the connection has the
--- same API as an accepted one. A healthy connection kept by `setkeepalive` for the same destination is
--- reused first. Options: `timeout` (seconds for connecting and the TLS handshake, default 10), `tls`
--- (`true`: TLS verified against the system's CAs; or {verify = false, cafile = , server_name = }),
--- `pool_size` (at most that many open connections to this destination; more connects wait, up to
--- `pool_timeout` seconds, then nil, "busy"), `pool` (a name for the destination's pool instead of host:port).
--- Errors: "connection refused", "timeout", "resolve: ...", "tls: certificate verify failed: ...".
---@async
---@param dest string  host name or address, or a Unix socket path
---@param port? integer
---@param opts? {timeout?: number, tls?: boolean|table, pool_size?: integer, pool_timeout?: number, pool?: string}
---@return moonlet.Conn? conn
---@return string? err
function M.connect(dest, port, opts)
  if type(port) == "table" then port, opts = nil, port end
  opts = check_opts(opts, "connect")
  if type(dest) ~= "string" then error("bad argument #1 to 'connect' (host or socket path expected)", 2) end
  if port ~= nil and (type(port) ~= "number" or port < 1 or port > 65535 or floor(port) ~= port) then
    error("bad argument #2 to 'connect' (port from 1 to 65535 expected)", 2)
  end
  local key = opts.pool or (dest .. ":" .. tostring(port) .. (opts.tls and ":tls" or ""))
  local conn = take_idle(key)
  if conn then return conn end
  local size = opts.pool_size
  if size then
    if (open[key] or 0) >= size then -- full: wait for a connection to come back, or for room
      local q = handoff[key]
      if q == nil then
        q = require("moonlet.sync").queue()
        handoff[key] = q
      end
      waiting[key] = (waiting[key] or 0) + 1
      local got = q:get(opts.pool_timeout or opts.timeout or 10)
      waiting[key] = waiting[key] - 1
      if got == nil then
        got = q:get(0) -- (handed over just as we timed out)
        if got == nil then return nil, "busy" end
      end
      if got ~= true then return got end -- a connection, handed over by setkeepalive
    else
      open[key] = (open[key] or 0) + 1
    end
  end
  local py, err = request(OP.CONNECT, dest, port, opts)
  if not py then
    if size then release_slot(key) end
    return nil, err
  end
  conn = new_conn(py, { line = host_limits.max_line, read = host_limits.max_read })
  conn._key, conn._counted = key, size ~= nil
  return conn
end

--- Upgrade this connection to TLS (for protocols that start in the clear: STARTTLS). Options as for
--- `net.connect`'s `tls` (plus `timeout`). Returns true, or nil, err (the connection is then closed).
---@async
---@param opts? {verify?: boolean, cafile?: string, server_name?: string, timeout?: number}
function Conn:starttls(opts)
  opts = check_opts(opts, "starttls")
  if self[CLOSED] then return nil, "closed" end
  if self[POS] <= #self[BUF] then return nil, "unread data before the TLS handshake" end
  local out = take(self)
  if out then call(WRITE, self[PY], out) end
  return request(OP.STARTTLS, self[PY], { tls = opts, timeout = opts.timeout })
end

--- Put this outgoing connection in its destination's pool for reuse by a later `net.connect`, for at most
--- `idle_timeout` seconds (default 60); at most `size` idle connections are kept per destination (default
--- 30). The connection must not be used afterwards. Buffered output is sent first; a connection with
--- unread bytes, or closed by the peer, is closed instead (nil, err).
---@param idle_timeout? number
---@param size? integer
---@return true? ok
---@return string? err
function Conn:setkeepalive(idle_timeout, size)
  if self._key == nil then error("setkeepalive: only connections made with net.connect can be pooled", 2) end
  if self[CLOSED] then return nil, "closed" end
  local out = take(self)
  if out then call(WRITE, self[PY], out) end
  if self[POS] <= #self[BUF] then
    self:close()
    return nil, "unread data"
  end
  if not call(OP.REUSABLE, self[PY]) then
    self:close()
    return nil, "closed"
  end
  if self._counted and (waiting[self._key] or 0) > 0 then -- somebody waits for this destination: hand it over
    handoff[self._key]:put(self)
    return true
  end
  local stack = idle[self._key]
  if stack == nil then
    stack = {}
    idle[self._key] = stack
  end
  if #stack >= (size or DEFAULT_IDLE_SIZE) then
    self:close()
    return true
  end
  self._idle = true
  stack[#stack + 1] = { conn = self, expires = call(OP.MONOTONIC) + (idle_timeout or DEFAULT_IDLE_TIMEOUT) }
  return true
end

--- The addresses of a host name, without blocking the server. Returns an array of address strings, or
--- nil, "resolve: ..." / "timeout" (default 10 s).
---@async
---@param name string
---@param timeout? number
---@return string[]? addresses
---@return string? err
function M.resolve(name, timeout)
  if type(name) ~= "string" then error("bad argument #1 to 'resolve' (string expected)", 2) end
  return request(OP.RESOLVE, name, timeout or 10)
end

---@class moonlet.Udp
---@field port integer
local Udp = {}
Udp.__index = Udp

--- Send one datagram to `host` (an IP address; see net.resolve) and `port`.
---@param data string
---@param dest string  host name or address, or a Unix socket path
---@param port integer
function Udp:sendto(data, host_, port)
  if type(data) ~= "string" or type(host_) ~= "string" or type(port) ~= "number" then
    error("bad arguments to 'sendto' (data, host, port expected)", 2)
  end
  return call(OP.UDP_SEND, self._py, data, host_, port)
end

--- Wait for the next datagram: returns data, host, port; or nil, "timeout" / "closed".
---@async
---@param timeout? number
function Udp:recvfrom(timeout)
  return request(OP.UDP_RECV, self._py, timeout)
end

--- Close the socket.
function Udp:close()
  return call(OP.UDP_CLOSE, self._py)
end

--- A UDP socket. With `handler`, it serves datagrams: `handler(data, peer, sock)` runs in its own coroutine
--- for each one (`peer` is {host =, port =}; answer with `sock:sendto(reply, peer.host, peer.port)`).
--- Without, it is a client socket (`:sendto`, `:recvfrom`, `:close`). `host` defaults to 127.0.0.1, `port`
--- to 0 (any free port; see `sock.port`). Returns the socket, or nil, err.
---@async
---@param opts? {host?: string, port?: integer, handler?: fun(data: string, peer: table, sock: moonlet.Udp)}
---@return moonlet.Udp? sock
---@return string? err
function M.udp(opts)
  opts = check_opts(opts, "udp")
  local handler = opts.handler
  if handler ~= nil and type(handler) ~= "function" then error("udp: 'handler' must be a function", 2) end
  local sock = setmetatable({}, Udp)
  local entry = handler and function(_, data, peer_host, peer_port)
    handler(data, { host = peer_host, port = peer_port }, sock)
  end
  local py, port = request(OP.UDP_OPEN, opts.host or "127.0.0.1", opts.port or 0, entry)
  if not py then return nil, port end
  sock._py, sock.port = py, port
  return sock
end

return M
