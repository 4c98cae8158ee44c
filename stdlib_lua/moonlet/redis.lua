--- A Redis client over moonlet.net (RESP2): commands, pipelines, pub/sub; connections are pooled.
--
--     local redis = require "moonlet.redis"
--     local r = redis.new { host = "127.0.0.1", port = 6379 }
--     r:call("SET", "greeting", "hello")                    --> "OK"
--     r:call("GET", "greeting")                             --> "hello"   (a missing key: redis.null)
--     local replies = r:pipeline { { "INCR", "n" }, { "INCR", "n" } }   --> { 1, 2 }
--     local sub = r:subscribe("room")                       -- a queue of messages, filled by a task
--     r:call("PUBLISH", "room", "hi")
--     local msg = sub:get(1)                                --> { channel = "room", data = "hi" }
--     sub:close()
--
-- Errors: a reply that is a Redis error returns nil, "ERR ...", and the connection goes on; a network
-- failure returns nil, "closed" / "timeout" / "connection refused" (the connection is dropped, the next call
-- opens another).
-- @module moonlet.redis
local net = require "moonlet.net"
local door = require "moonlet._host"
local argerror = door.argerror
local sync = require "moonlet.sync"
local task = require "moonlet.task"
local type, tostring, tonumber, setmetatable, select = type, tostring, tonumber, setmetatable, select

local M = {}

M.null = setmetatable({}, { __tostring = function() return "redis.null" end })

---@class moonlet.Redis
local Client = {}
Client.__index = Client

local NEW_OPTIONS = { host = true, port = true, timeout = true, pool_size = true, password = true, db = true }

--- A client for the server at `host`:`port` (127.0.0.1:6379); options: `timeout` (seconds, default 5),
--- `pool_size` (open connections at most, default 32), `password`, `db`.
---@param opts? {host?: string, port?: integer, timeout?: number, pool_size?: integer, password?: string,
---              db?: integer}
---@return moonlet.Redis
function M.new(opts)
  opts = opts or {}
  if type(opts) ~= "table" then argerror(1, "new", "table", opts) end
  door.check_options(opts, 1, "new", NEW_OPTIONS)
  return setmetatable({ host = opts.host or "127.0.0.1", port = opts.port or 6379, timeout = opts.timeout or 5,
    pool_size = opts.pool_size or 32, password = opts.password, db = opts.db }, Client)
end

local function encode(args, parts)
  parts[#parts + 1] = "*" .. #args .. "\r\n"
  for i = 1, #args do
    local a = tostring(args[i])
    parts[#parts + 1] = "$" .. #a .. "\r\n"
    parts[#parts + 1] = a
    parts[#parts + 1] = "\r\n"
  end
end

-- One reply: a value, or nil and a Redis error ("ERR ..."), or nil, err, true for a connection failure.
local function read_reply(conn)
  local line, err = conn:readline()
  if not line then return nil, err, true end
  local kind, rest = line:sub(1, 1), line:sub(2)
  if kind == "+" then return rest
  elseif kind == "-" then return nil, rest
  elseif kind == ":" then return math.tointeger(tonumber(rest))
  elseif kind == "$" then
    local n = tonumber(rest)
    if n < 0 then return M.null end
    local data
    data, err = conn:readn(n + 2)
    if not data then return nil, err, true end
    return data:sub(1, n)
  elseif kind == "*" then
    local n = tonumber(rest)
    if n < 0 then return M.null end
    local items = {}
    for i = 1, n do
      local v, e, broken = read_reply(conn)
      if broken then return nil, e, true end
      items[i] = v == nil and { err = e } or v
    end
    return items
  end
  return nil, "protocol error: unexpected '" .. kind .. "'", true
end

local function connect(self)
  -- one pool per server, database and credentials: a pooled connection keeps the SELECT and AUTH it was set
  -- up with, so a client must never get one set up for another database or user
  local pool = self._pool
  if pool == nil then
    pool = "redis " .. self.host .. ":" .. self.port .. " db " .. tostring(self.db or 0) .. " auth "
      .. (self.password and ("%q"):format(self.password) or "-")
    self._pool = pool
  end
  local conn, err = net.connect(self.host, self.port, { timeout = self.timeout, pool_size = self.pool_size,
    pool_timeout = self.timeout, pool = pool })
  if not conn then return nil, err end
  conn:settimeout(self.timeout)
  if conn._fresh == nil then
    conn._fresh = false
    local setup = {}
    if self.password then setup[#setup + 1] = { "AUTH", self.password } end
    if self.db then setup[#setup + 1] = { "SELECT", self.db } end
    for _, cmd in ipairs(setup) do
      local parts = {}
      encode(cmd, parts)
      conn:write(parts)
      local ok, e = read_reply(conn)
      if not ok then
        conn:close()
        return nil, e
      end
    end
  end
  return conn
end

--- Send a batch of commands in one round trip; returns an array of their replies (a failed command's place
--- holds {err = "ERR ..."}), or nil, err if the connection failed.
--- Example: `local replies = r:pipeline { { "INCR", "hits" }, { "GET", "greeting" } }`
---@async
---@param commands string[][]
---@return table? replies
---@return string? err
function Client:pipeline(commands)
  local conn, err = connect(self)
  if not conn then return nil, err end
  local parts = {}
  for i = 1, #commands do encode(commands[i], parts) end
  conn:write(parts)
  local replies = {}
  for i = 1, #commands do
    local v, e, broken = read_reply(conn)
    if broken then
      conn:close()
      return nil, e
    end
    replies[i] = v == nil and { err = e } or v
  end
  conn:setkeepalive()
  return replies
end

--- Run one command: `r:call("SET", "k", "v")`. Returns its reply, or nil, err.
--- Example: `local value, err = r:call("GET", "greeting")`
---@async
---@param ... string|number
---@return any reply
---@return string? err
function Client:call(...)
  if select("#", ...) == 0 then argerror(1, "call", "a command", nil) end
  local conn, err = connect(self)
  if not conn then return nil, err end
  local parts = {}
  encode({ ... }, parts)
  conn:write(parts)
  local v, e, broken = read_reply(conn)
  if broken then
    conn:close()
    return nil, e
  end
  conn:setkeepalive()
  if v == nil then return nil, e end
  return v
end

---@class moonlet.RedisSubscription
local Subscription = {}
Subscription.__index = Subscription

--- The next message ({channel =, data =}), waiting at most `timeout` seconds: nil, "timeout" / "closed".
--- Example: `local msg, err = sub:get(30)`
---@async
function Subscription:get(timeout)
  return self._queue:get(timeout)
end

--- Unsubscribe: the connection is closed and the queue too.
--- Example: `sub:close()`
function Subscription:close()
  self._task:cancel()
  self._conn:close()
  self._queue:close()
end

--- Subscribe to `channels` on a connection of its own; a task puts each message in a queue (at most
--- `opts.max` waiting, default 1000: past it the oldest are dropped). Returns the subscription, or nil, err.
---@async
---@param channels string|string[]
---@param opts? {max?: integer}
---@return moonlet.RedisSubscription? sub
---@return string? err
function Client:subscribe(channels, opts)
  if type(channels) == "string" then channels = { channels } end
  local conn, err = net.connect(self.host, self.port, { timeout = self.timeout })
  if not conn then return nil, err end
  conn:settimeouts(nil, self.timeout, false) -- a subscriber waits for messages as long as it lives
  local cmd = { "SUBSCRIBE" }
  for i = 1, #channels do cmd[i + 1] = channels[i] end
  local parts = {}
  encode(cmd, parts)
  conn:write(parts)
  for _ = 1, #channels do
    local ack, e = read_reply(conn)
    if type(ack) ~= "table" then
      conn:close()
      return nil, e or "subscribe failed"
    end
  end
  local max = opts and opts.max or 1000
  local queue = sync.queue()
  local sub = setmetatable({ _conn = conn, _queue = queue }, Subscription)
  local reader = task.spawn(function()
    while true do
      local msg = read_reply(conn)
      if type(msg) ~= "table" then
        queue:close()
        return
      end
      if msg[1] == "message" then
        if queue:len() >= max then queue:get(0) end
        queue:put({ channel = msg[2], data = msg[3] })
      end
    end
  end)
  reader:detach()
  sub._task = reader
  conn:transfer(reader) -- the reader owns the connection: it closes when the reader ends
  return sub
end

return M
