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
local connection = require "moonlet._conn"
local request, call, OP, argerror = host.request, host.call, host.OP, host.argerror
local start_task = host.start_task
local type, error, setmetatable, tostring = type, error, setmetatable, tostring

local host_limits = host.limits
local Conn, new_conn, check_count = connection.Conn, connection.new, connection.check_count
local MIN_LINE_LIMIT = connection.MIN_LINE_LIMIT
local slots = connection.slots
local PY <const>, BUF <const>, POS <const>, CLOSED <const> = 1, 2, 3, 8
assert(slots.PY == PY and slots.BUF == BUF and slots.POS == POS and slots.CLOSED == CLOSED)
local take, bad_self = connection.take, connection.bad_self

local M = { Conn = Conn }

-- The keep-alive pools of the client side live in moonlet/net/_keepalive.lua.
local keepalive = require "moonlet.net._keepalive"

---@class moonlet.Listener
---@field host string
---@field port integer?
---@field path string?
local Listener = {}
Listener.__index = Listener

--- Stop accepting new connections; connections already accepted are served on.
--- Example: `listener:close()`
function Listener:close()
  call(OP.UNLISTEN, self._py)
end

local LISTEN_OPTIONS = { handler = true, host = true, port = true, path = true, max_line = true,
  max_read = true, tls = true }

local SERVER_TLS_OPTIONS = { cert = true, key = true, sni = true, alpn = true, client_ca = true, client_cert = true,
  min_version = true, ciphers = true, handshake_timeout = true }
local TLS_CHOICES = { client_cert = { none = true, optional = true, required = true },
  min_version = { ["1.2"] = true, ["1.3"] = true } }

-- A listener's `tls` table checked (at the API's caller: `fn` names it) and copied plain for the host
-- (runtime/tls.py builds the context); `alpn`: what to offer when the table names none.
function M._tls_options(tls, fn, alpn)
  if type(tls) ~= "table" then argerror(1, fn, "table", tls, "tls", 1) end
  host.check_options(tls, 1, fn, SERVER_TLS_OPTIONS, nil, 1)
  local plain = {}
  for _, name in ipairs { "cert", "key", "client_ca", "ciphers" } do
    local v = tls[name]
    if v ~= nil and type(v) ~= "string" then argerror(1, fn, "string", v, "tls." .. name, 1) end
    plain[name] = v
  end
  if plain.cert == nil then argerror(1, fn, "certificate file", nil, "tls.cert", 1) end
  for name, allowed in pairs(TLS_CHOICES) do
    local v = tls[name]
    if v ~= nil and not allowed[v] then
      local names = {}
      for choice in pairs(allowed) do names[#names + 1] = "'" .. choice .. "'" end
      table.sort(names)
      argerror(1, fn, table.concat(names, " or "), v, "tls." .. name, 1)
    end
    plain[name] = v
  end
  local t = tls.handshake_timeout
  if t ~= nil and (type(t) ~= "number" or t ~= t or t <= 0) then
    argerror(1, fn, "number > 0", t, "tls.handshake_timeout", 1)
  end
  plain.handshake_timeout = t
  local offered = tls.alpn or alpn
  if offered ~= nil then
    if type(offered) ~= "table" then argerror(1, fn, "list of strings", offered, "tls.alpn", 1) end
    plain.alpn = {}
    for i, v in ipairs(offered) do
      if type(v) ~= "string" then argerror(1, fn, "list of strings", v, "tls.alpn", 1) end
      plain.alpn[i] = v
    end
  end
  if tls.sni ~= nil then
    if type(tls.sni) ~= "table" then argerror(1, fn, "table of server names", tls.sni, "tls.sni", 1) end
    plain.sni = {}
    for name, pair in pairs(tls.sni) do
      if type(name) ~= "string" or type(pair) ~= "table" or type(pair.cert) ~= "string"
        or (pair.key ~= nil and type(pair.key) ~= "string") then
        argerror(1, fn, "{cert=, key=} by server name", pair, "tls.sni", 1)
      end
      plain.sni[name] = { cert = pair.cert, key = pair.key }
    end
  end
  return plain
end

--- Serve TCP (host, port) or a Unix socket (path). `handler(conn)` runs in its own coroutine for each
--- accepted connection; the connection is closed when it returns, and a Lua error in it ends only that
--- connection (logged with its traceback). Returns a listener, or nil, err if the address cannot be bound.
--- `port = 0` picks a free port (see `listener.port`).
---@async
--- With `tls = {cert=, key=, ...}` (docs/reference.md lists the options) every connection is TLS: its
--- handshake comes first (a failed one is a log line and a closed connection), then the handler.
---@param opts {host?: string, port?: integer, path?: string, handler: fun(conn: moonlet.Conn),
---             max_line?: integer, max_read?: integer, tls?: table}
---@return moonlet.Listener? listener
---@return string? err
function M.listen(opts)
  if type(opts) ~= "table" then argerror(1, "listen", "table", opts) end
  host.check_options(opts, 1, "listen", LISTEN_OPTIONS)
  local handler = opts.handler
  if type(handler) ~= "function" then argerror(1, "listen", "function", handler, "handler") end
  local lim = { line = opts.max_line or host.limits.max_line, read = opts.max_read or host.limits.max_read }
  check_count(lim.line, "listen"); check_count(lim.read, "listen")
  if lim.line < MIN_LINE_LIMIT then argerror(1, "listen", "integer >= " .. MIN_LINE_LIMIT, lim.line, "max_line") end
  local where, port
  if opts.path ~= nil then
    if type(opts.path) ~= "string" then argerror(1, "listen", "string", opts.path, "path") end
    where = opts.path
  else
    where, port = opts.host or "127.0.0.1", opts.port
    if type(where) ~= "string" then argerror(1, "listen", "string", where, "host") end
    if not host.is_port(port, 0) then argerror(1, "listen", "integer from 0 to 65535", port, "port") end
  end
  -- (the coroutine's own function, the handler tail-called in its place: see host.start_task; the host
  -- closes the connection when the handler returns)
  local function entry(py)
    start_task()
    return handler(new_conn(py, lim))
  end
  local tls = opts.tls ~= nil and M._tls_options(opts.tls, "listen") or nil
  local py, bound = request(OP.LISTEN, where, port, { entry, tls = tls })
  if not py then return nil, bound end
  return setmetatable({ _py = py, host = port and where or nil, port = bound, path = not port and where or nil },
    Listener)
end

---------------------------------------------------------------------------------------------------------
-- the client side

local TLS_OPTIONS = { verify = true, cafile = true, server_name = true }
local CONNECT_OPTIONS = { timeout = true, tls = true, pool = true, pool_size = true, pool_timeout = true,
  reuse = true }
local STARTTLS_OPTIONS = { verify = true, cafile = true, server_name = true, timeout = true }

local function check_opts(opts, what, known)
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    host.argerror(what == "connect" and 3 or 1, what, "options table", opts, nil, 1)
  end
  host.check_options(opts, what == "connect" and 3 or 1, what, known, nil, 1)
  if type(opts.tls) == "table" then host.check_options(opts.tls, 3, what, TLS_OPTIONS, nil, 1) end
  return opts
end

--- Connect to `host`, `port` (TCP) or to a Unix socket `path` (`net.connect(path)`); the connection has the
--- same API as an accepted one. A healthy connection kept by `setkeepalive` for the same destination is
--- reused first. Options: `timeout` (seconds for connecting and the TLS handshake, default 10), `tls`
--- (`true`: TLS verified against the system's CAs; or {verify = false, cafile = , server_name = }),
--- `pool_size` (at most that many open connections to this destination; more connects wait, up to
--- `pool_timeout` seconds, then nil, "busy"), `pool` (a name for the destination's pool instead of host:port),
--- `reuse` (false: a new connection even when an idle one is kept).
--- Errors: "connection refused", "timeout", "resolve: ...", "tls: certificate verify failed: ...".
---@async
---@param dest string  host name or address, or a Unix socket path
---@param port? integer
---@param opts? {timeout?: number, tls?: boolean|table, pool_size?: integer, pool_timeout?: number, pool?: string,
---             reuse?: boolean}
---@return moonlet.Conn? conn
---@return string? err
function M.connect(dest, port, opts)
  if type(port) == "table" then port, opts = nil, port end
  opts = check_opts(opts, "connect", CONNECT_OPTIONS)
  if type(dest) ~= "string" then argerror(1, "connect", "host or socket path", dest) end
  if port ~= nil and not host.is_port(port, 1) then argerror(2, "connect", "port from 1 to 65535", port) end
  local key = opts.pool or (dest .. ":" .. tostring(port) .. (opts.tls and ":tls" or ""))
  local conn = opts.reuse ~= false and keepalive.take_idle(key)
  if conn then
    conn._reused = true
    return conn
  end
  local size = opts.pool_size
  if size then
    local got = keepalive.reserve(key, size, opts.pool_timeout or opts.timeout or 10)
    if got == nil then return nil, "busy" end
    if got ~= true then -- a connection, handed over by setkeepalive
      got._reused = true
      return got
    end
  end
  local py, err = request(OP.CONNECT, dest, port, opts)
  if not py then
    if size then keepalive.release_slot(key) end
    return nil, err
  end
  conn = new_conn(py, { line = host_limits.max_line, read = host_limits.max_read })
  conn._key, conn._counted, conn._reused = key, size ~= nil, false
  if size then keepalive.count(key, conn) end
  return conn
end

--- Upgrade this connection to TLS (for protocols that start in the clear: STARTTLS). Options as for
--- `net.connect`'s `tls` (plus `timeout`: by default the connect timeout set with `conn:settimeouts`, else
--- 10 s). Returns true, or nil, err (the connection is then closed).
--- Example: `local ok, err = conn:starttls { server_name = "mail.example.com" }`
---@async
---@param opts? {verify?: boolean, cafile?: string, server_name?: string, timeout?: number}
function Conn:starttls(opts)
  if type(self) ~= "table" or not self[POS] then bad_self("starttls", self) end
  opts = check_opts(opts, "starttls", STARTTLS_OPTIONS)
  if self[CLOSED] then return nil, "closed" end
  if self[POS] <= #self[BUF] then return nil, "unread data before the TLS handshake" end
  local out = take(self)
  if out then call(OP.WRITE, self[PY], out) end
  return request(OP.STARTTLS, self[PY], { tls = opts, timeout = opts.timeout or self._connect_timeout })
end

--- Put this outgoing connection in its destination's pool for reuse by a later `net.connect`, for at most
--- `idle_timeout` seconds (default 60); at most `size` idle connections are kept per destination (default
--- 30). The connection must not be used afterwards. Buffered output is sent first; a connection with
--- unread bytes, or closed by the peer, is closed instead (nil, err).
--- Example: `upstream:setkeepalive(60, 16)`
---@param idle_timeout? number
---@param size? integer
---@return true? ok
---@return string? err
function Conn:setkeepalive(idle_timeout, size)
  if type(self) ~= "table" or not self[POS] then bad_self("setkeepalive", self) end
  if self._key == nil then error("setkeepalive: only connections made with net.connect can be pooled", 2) end
  if self[CLOSED] then return nil, "closed" end
  local out = take(self)
  if out then call(OP.WRITE, self[PY], out) end
  if self[POS] <= #self[BUF] then
    self:close()
    return nil, "unread data"
  end
  if not call(OP.REUSABLE, self[PY]) then
    self:close()
    return nil, "closed"
  end
  return keepalive.keep(self, idle_timeout, size)
end

--- Hand this connection to another task: it then closes when `task` ends instead of when the task that
--- opened it does (connections opened with `net.connect` belong to the task that opened them, or took them
--- from a keep-alive pool).
--- Example: `conn:transfer(worker)`
---@param task moonlet.Task
function Conn:transfer(task)
  if type(self) ~= "table" or not self[POS] then bad_self("transfer", self) end
  if type(task) ~= "table" or task._py == nil then argerror(1, "transfer", "task", task) end
  if self[CLOSED] then return nil, "closed" end
  return call(OP.OWN, self[PY], task._py)
end

--- The addresses of a host name, without blocking the server. Returns an array of address strings, or
--- nil, "resolve: ..." / "timeout" (default 10 s).
--- Example: `local addresses, err = net.resolve("localhost", 2)`
---@async
---@param name string
---@param timeout? number
---@return string[]? addresses
---@return string? err
function M.resolve(name, timeout)
  if type(name) ~= "string" then argerror(1, "resolve", "string", name) end
  return request(OP.RESOLVE, name, timeout or 10)
end

-- UDP lives in moonlet/net/udp.lua (one module per idea); net.udp is its constructor.
M.udp = require("moonlet.net.udp").udp

return M
