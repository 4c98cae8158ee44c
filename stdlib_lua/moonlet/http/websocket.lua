--- WebSockets (RFC 6455), server and client: `req:websocket()` upgrades an HTTP request into a message
--- connection, `http.websocket(url)` opens one to a server. Frames are read and written on the connection's
--- own buffer; masking and hashing are the host's (`moonlet.codec`, `moonlet.crypto`); text is checked to be
--- UTF-8 as each fragment arrives. Strict as the RFC says: a peer that breaks a rule gets the close code for it (1002
--- protocol error, 1007 bad UTF-8, 1009 too big) and the connection ends. Not done: permessage-deflate
--- (RFC 7692) is not negotiated, so messages travel uncompressed.
--
--     api:get("/chat", function(req)
--       local ws = assert(req:websocket())
--       while true do
--         local data, kind = ws:receive()
--         if not data then return end            -- nil, err: "closed", "timeout", ...
--         if kind == "text" then ws:send("echo " .. data) end
--       end
--     end)
-- @module moonlet.http.websocket
local host = require "moonlet._host"
local codec = require "moonlet.codec"
local crypto = require "moonlet.crypto"

local call, OP, argerror = host.call, host.OP, host.argerror
local byte, char, sub, find, lower, pack, unpack = string.byte, string.char, string.sub, string.find, string.lower,
  string.pack, string.unpack
local concat, type, tostring, setmetatable = table.concat, type, tostring, setmetatable
local utf8len = utf8.len

local M = {}

local GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
local MAX_MESSAGE = 1024 * 1024 -- default max_message: bytes of one message, its fragments together
local CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0, 1, 2, 8, 9, 10
local KINDS = { text = TEXT, binary = BINARY }
local NAMES = { [TEXT] = "text", [BINARY] = "binary", [PING] = "ping", [PONG] = "pong", [CLOSE] = "close" }

-- The `Sec-WebSocket-Accept` value for a `Sec-WebSocket-Key` (RFC 6455 4.2.2).
local function accept_key(key)
  return codec.base64.encode(crypto.sha1(key .. GUID))
end

---@class moonlet.WebSocket
local WebSocket = {}
WebSocket.__index = WebSocket

-- (the connection's frames: the server's unmasked, the client's masked with 4 fresh random bytes each)
local function frame(self, opcode, payload)
  local n = #payload
  local head
  local mask = self._client and 0x80 or 0 -- (bits set with +: opcode < 16, lengths < 128)
  if n < 126 then
    head = char(0x80 + opcode, mask + n)
  elseif n < 65536 then
    head = char(0x80 + opcode, mask + 126) .. pack(">I2", n)
  else
    head = char(0x80 + opcode, mask + 127) .. pack(">I8", n)
  end
  if self._client then
    local key = crypto.random(4)
    return head .. key .. call(OP.MASK, payload, key)
  end
  return head .. payload
end

-- End the connection after a protocol failure: the close frame with its code, then the close.
local function fail(self, code, why)
  if not self._closed then
    self._closed = true
    self._conn:write(frame(self, CLOSE, pack(">I2", code) .. sub(why, 1, 120)))
    self._conn:close()
  end
  return nil, why, code
end

local CLOSE_CODES = { [1000] = true, [1001] = true, [1002] = true, [1003] = true, [1007] = true, [1008] = true,
  [1009] = true, [1010] = true, [1011] = true, [1012] = true, [1013] = true, [1014] = true }

-- `s` checked as the start of UTF-8 text (a fragment may end inside a character): the bytes of an unfinished
-- character at its end ("" for none), or nil when `s` cannot begin valid text.
local function utf8_start(s)
  local n, bad = utf8len(s)
  if n then return "" end
  if bad < #s - 2 then return nil end
  local lead = byte(s, bad)
  local need = lead >= 0xF0 and lead <= 0xF4 and 4 or lead >= 0xE0 and lead < 0xF0 and 3
    or lead >= 0xC2 and lead < 0xE0 and 2 or nil
  if need == nil or bad + need - 1 <= #s then return nil end -- (not a lead byte, or whole and still bad)
  for i = bad + 1, #s do
    local c = byte(s, i)
    if c < 0x80 or c > 0xBF then return nil end
  end
  return sub(s, bad)
end

-- The rest of a frame whose head has come: a failure now (a timeout too) ends the connection, which could
-- not tell where the next frame starts.
local function more(self, n)
  local s, err = self._conn:readn(n)
  if not s then
    self._closed = true
    self._conn:close()
  end
  return s, err
end

-- One frame: fin, opcode, payload (unmasked); or nil, err[, code]: the connection has ended, except after a
-- "timeout" before a frame began.
local function read_frame(self)
  local conn = self._conn
  local h, err = conn:readn(2)
  if not h then return nil, err end
  local b1, b2 = byte(h, 1, 2)
  -- (bits read arithmetically, which both engines parse: b1 is FIN, RSV1-3, opcode; b2 is MASK, length)
  local fin, opcode, masked, n = b1 >= 0x80, b1 % 16, b2 >= 0x80, b2 % 128
  if b1 % 128 >= 16 then return fail(self, 1002, "reserved bits set (no extension was agreed)") end
  if masked == self._client then
    return fail(self, 1002, self._client and "a masked frame from the server" or "an unmasked frame from the client")
  end
  if opcode >= CLOSE then
    if not fin then return fail(self, 1002, "a fragmented control frame") end
    if n > 125 then return fail(self, 1002, "a control frame over 125 bytes") end
    if not NAMES[opcode] then return fail(self, 1002, "unknown opcode " .. opcode) end
  elseif opcode > BINARY then
    return fail(self, 1002, "unknown opcode " .. opcode)
  end
  if n == 126 then
    local ext = more(self, 2)
    if not ext then return nil, "closed" end
    n = unpack(">I2", ext)
    if n < 126 then return fail(self, 1002, "a length not in its shortest form") end
  elseif n == 127 then
    local ext = more(self, 8)
    if not ext then return nil, "closed" end
    n = unpack(">i8", ext)
    if n < 65536 then return fail(self, 1002, "a length not in its shortest form") end -- (and the top bit)
  end
  if n + self._size > self._max then return fail(self, 1009, "a message over " .. self._max .. " bytes") end
  local key
  if masked then
    key = more(self, 4)
    if not key then return nil, "closed" end
  end
  local payload = ""
  if n > 0 then
    payload, err = more(self, n)
    if not payload then return nil, err end
    if key then payload = call(OP.MASK, payload, key) end
  end
  return fin, opcode, payload
end

--- The next message: data and its kind ("text" or "binary"); a ping (answered with a pong first) or a pong
--- as data, "ping" / "pong"; the peer's close as reason, "close", code (answered, and the connection ends).
--- nil, err[, code] when the connection ends otherwise: "closed", "timeout", or the rule the peer broke
--- (answered with its close code: 1002, 1007, 1009).
--- Example: `local data, kind = ws:receive()`
---@async
---@return string? data
---@return string? kind
---@return integer? code
function WebSocket:receive()
  if self._closed then return nil, "closed" end
  -- (a message in fragments may have a control frame between two: its parts wait here for the next call)
  local parts, kind = self._parts, self._kind
  while true do
    local fin, opcode, payload = read_frame(self)
    if fin == nil then
      if opcode == "timeout" and not self._closed then -- (between frames)
        if self._ping_every == nil then return nil, "timeout" end -- (receive's own timeout: it goes on)
        if self._pinged then return fail(self, 1001, "no answer to a ping") end -- (the peer is gone)
        self._pinged = true -- (quiet for ping_interval: is the peer still there?)
        self._conn:write(frame(self, PING, ""))
        goto next_frame
      end
      if not self._closed then
        self._closed = true
        self._conn:close()
      end
      return nil, opcode, payload
    end
    self._pinged = false -- (it is there)
    if opcode == PING then
      self._conn:write(frame(self, PONG, payload))
      return payload, "ping"
    elseif opcode == PONG then
      return payload, "pong"
    elseif opcode == CLOSE then
      local code, reason = 1005, ""
      if #payload == 1 then return fail(self, 1002, "a close frame of one byte") end
      if #payload >= 2 then
        code, reason = unpack(">I2", payload), sub(payload, 3)
        if not (CLOSE_CODES[code] or (code >= 3000 and code <= 4999)) then
          return fail(self, 1002, "close code " .. code .. " is not one a peer may send")
        end
        if not utf8len(reason) then return fail(self, 1007, "a close reason that is not UTF-8") end
      end
      if not self._closed then
        self._closed = true
        self._conn:write(frame(self, CLOSE, #payload >= 2 and pack(">I2", code) or ""))
        self._conn:close()
      end
      return reason, "close", code
    elseif opcode == CONTINUATION then
      if parts == nil then return fail(self, 1002, "a continuation with no message to continue") end
      parts[#parts + 1] = payload
    else
      if parts ~= nil then return fail(self, 1002, "a new message inside a fragmented one") end
      parts, kind = { payload }, opcode
    end
    self._size = self._size + #payload
    if not fin then
      if kind == TEXT then -- fail fast: a fragment that cannot be text ends it now, not at the message's end
        local carry = utf8_start((self._carry or "") .. payload)
        if carry == nil then return fail(self, 1007, "a text message that is not UTF-8") end
        self._carry = carry
      end
      self._parts, self._kind = parts, kind
    else
      self._parts, self._kind, self._size, self._carry = nil, nil, 0, nil
      local data = #parts == 1 and parts[1] or concat(parts)
      if kind == TEXT and not utf8len(data) then return fail(self, 1007, "a text message that is not UTF-8") end
      return data, NAMES[kind]
    end
    ::next_frame::
  end
end

--- Send a message: `kind` "text" (the default: `data` must be UTF-8) or "binary". Waits while more than the
--- high-water mark is unsent, as `conn:write` does. true, or nil, err.
--- Example: `ws:send(json.encode(event))`
---@async
---@param data string
---@param kind? "text"|"binary"
---@return true? ok
---@return string? err
function WebSocket:send(data, kind)
  if type(data) ~= "string" then argerror(1, "send", "string", data) end
  local opcode = KINDS[kind or "text"]
  if opcode == nil then argerror(2, "send", "'text' or 'binary'", kind) end
  if opcode == TEXT and not utf8len(data) then argerror(1, "send", "UTF-8 text (send it as 'binary')", data) end
  if self._closed then return nil, "closed" end
  return self._conn:write(frame(self, opcode, data))
end

--- Send a ping (`data` up to 125 bytes); the peer's pong comes back through `receive`.
--- Example: `ws:ping()`
---@param data? string
function WebSocket:ping(data)
  data = data or ""
  if type(data) ~= "string" or #data > 125 then argerror(1, "ping", "string of at most 125 bytes", data) end
  if self._closed then return nil, "closed" end
  return self._conn:write(frame(self, PING, data))
end

--- Close: send the close frame (`code` default 1000, `reason` up to 123 bytes of UTF-8), wait a moment for
--- the peer's, and end the connection.
--- Example: `ws:close(1001, "going away")`
---@async
---@param code? integer
---@param reason? string
function WebSocket:close(code, reason)
  code, reason = code or 1000, reason or ""
  if math.type(code) ~= "integer" or not (CLOSE_CODES[code] or (code >= 3000 and code <= 4999)) then
    argerror(1, "close", "close code (1000-1003, 1007-1014, 3000-4999)", code)
  end
  if type(reason) ~= "string" or #reason > 123 or not utf8len(reason) then
    argerror(2, "close", "UTF-8 string of at most 123 bytes", reason)
  end
  if self._closed then return nil, "closed" end
  self._closed = true
  local conn = self._conn
  conn:write(frame(self, CLOSE, pack(">I2", code) .. reason))
  conn:flush()
  conn:settimeouts(nil, nil, 1) -- (the peer's close, for a moment; then the connection ends anyway)
  repeat until not conn:read()
  conn:close()
  return true
end

-- (moonlet.group) a server's text frame of `data`: the same bytes for every member of a fan-out
M._WebSocket = WebSocket
function M._text_frame(data)
  return frame({ _client = false }, TEXT, data)
end

-- (the options checked by the caller: ping_interval makes each read wait that long; a quiet peer is then
-- pinged, and one that stays quiet is gone; without it `timeout` bounds receive, if given)
local function new(conn, opts, client)
  local every = opts.ping_interval
  conn:settimeouts(nil, nil, every or (not client and opts.timeout) or false)
  return setmetatable({ _conn = conn, _client = client, _closed = false, _size = 0, _pinged = false,
    _ping_every = every, _max = opts.max_message or MAX_MESSAGE }, WebSocket)
end

local SERVER_OPTIONS = { max_message = true, protocols = true, timeout = true, ping_interval = true }

-- A token list header value holds `token` (case-insensitive)
local function has_token(value, token)
  if value == nil then return false end
  for part in value:gmatch("[^,]+") do
    if lower(part:match("^%s*(.-)%s*$")) == token then return true end
  end
  return false
end

-- A time option checked, raised at the app's line (`between`: stdlib frames between it and this one's caller)
local function check_seconds(opts, i, name, between)
  local v = opts[name]
  if v ~= nil and (type(v) ~= "number" or v ~= v or v <= 0) then
    argerror(i, "websocket", "number > 0", v, name, between + 1)
  end
end

-- (req:websocket, in moonlet._httpd) The upgrade of request `req` on connection `conn`: the 101 answer
-- written, and the WebSocket; or nil, status, why for a request that is not a valid upgrade.
function M._upgrade(req, conn, opts)
  opts = opts or {}
  if type(opts) ~= "table" then argerror(1, "websocket", "table", opts, nil, 1) end
  host.check_options(opts, 1, "websocket", SERVER_OPTIONS, nil, 1)
  check_seconds(opts, 1, "ping_interval", 1)
  check_seconds(opts, 1, "timeout", 1)
  local h = req.headers
  if req.method ~= "GET" then return nil, 405, "a WebSocket upgrade is a GET" end
  if not has_token(h.upgrade, "websocket") or not has_token(h.connection, "upgrade") then
    return nil, 426, "not a WebSocket upgrade (Upgrade: websocket, Connection: Upgrade)"
  end
  if h["sec-websocket-version"] ~= "13" then return nil, 426, "WebSocket version 13 only" end
  local key = h["sec-websocket-key"]
  local raw = key and codec.base64.decode(key)
  if raw == nil or #raw ~= 16 then return nil, 400, "a Sec-WebSocket-Key of 16 bytes in base64 is needed" end
  local chosen
  if opts.protocols and h["sec-websocket-protocol"] then
    for _, p in ipairs(opts.protocols) do
      if has_token(h["sec-websocket-protocol"], lower(p)) then chosen = p break end
    end
  end
  conn:write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
    "Sec-WebSocket-Accept: ", accept_key(key), "\r\n",
    chosen and ("Sec-WebSocket-Protocol: " .. chosen .. "\r\n") or "", "\r\n")
  local max = opts.max_message or MAX_MESSAGE
  if max > 1024 * 1024 then conn:setlimits { max_read = max } end -- (a frame's payload is one readn)
  local ws = new(conn, opts, false)
  ws.protocol = chosen
  return ws
end

local CLIENT_OPTIONS = { max_message = true, protocols = true, timeout = true, headers = true, tls = true,
  ping_interval = true }

--- Open a WebSocket to `url` (ws:// or wss://): the handshake (its `Sec-WebSocket-Accept` checked), then the
--- same object `req:websocket()` gives, its frames masked as a client's must be. `opts`: `timeout` (connect
--- and handshake, default 10 s), `protocols` (offered, in order; `ws.protocol` is the one the server chose),
--- `headers` (more request headers), `tls` (as `net.connect`'s), `max_message` (1 MiB). nil, err on failure.
--- Example: `local ws = assert(http.websocket("ws://127.0.0.1:8080/chat"))`
---@async
---@param url string
---@param opts? table
---@return moonlet.WebSocket? ws
---@return string? err
function M.connect(url, opts)
  if type(url) ~= "string" then argerror(1, "websocket", "string", url) end
  opts = opts or {}
  if type(opts) ~= "table" then argerror(2, "websocket", "table", opts) end
  host.check_options(opts, 2, "websocket", CLIENT_OPTIONS)
  check_seconds(opts, 2, "ping_interval", 0)
  local scheme, rest = url:match("^([wW][sS][sS]?)://(.*)$")
  if not scheme then return nil, "websocket: bad url '" .. url .. "' (ws:// or wss://)" end
  local secure = lower(scheme) == "wss"
  local http_client = require "moonlet.http.client"
  local _, where, port, path = http_client.parse_url((secure and "https://" or "http://") .. rest)
  if not where then return nil, "websocket: bad url '" .. url .. "'" end
  local timeout = opts.timeout or 10
  local conn, err = require("moonlet.net").connect(where, port,
    { timeout = timeout, tls = secure and (opts.tls or true) or nil })
  if not conn then return nil, err end
  conn:settimeout(timeout)
  local key = codec.base64.encode(crypto.random(16))
  local lines = { "GET " .. path .. " HTTP/1.1", "Host: " .. (find(where, ":", 1, true) and "[" .. where .. "]"
    or where) .. ":" .. port, "Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Key: " .. key,
    "Sec-WebSocket-Version: 13" }
  if opts.protocols then lines[#lines + 1] = "Sec-WebSocket-Protocol: " .. concat(opts.protocols, ", ") end
  for name, value in pairs(opts.headers or {}) do lines[#lines + 1] = name .. ": " .. tostring(value) end
  conn:write(concat(lines, "\r\n"), "\r\n\r\n")
  local status
  status, err = conn:readline()
  if not status then
    conn:close()
    return nil, err
  end
  local h = {}
  while true do
    local line
    line, err = conn:readline()
    if not line then
      conn:close()
      return nil, err
    end
    if line == "" then break end
    local name, value = line:match("^([^:]+):%s*(.-)%s*$")
    if name then h[lower(name)] = value end
  end
  if not status:match("^HTTP/1%.1 101") then
    conn:close()
    return nil, "websocket: the server answered " .. sub(status, 10, 60)
  end
  if h["sec-websocket-accept"] ~= accept_key(key) or not has_token(h.upgrade, "websocket") then
    conn:close()
    return nil, "websocket: the server's handshake is wrong (Sec-WebSocket-Accept or Upgrade)"
  end
  local max = opts.max_message or MAX_MESSAGE
  if max > 1024 * 1024 then conn:setlimits { max_read = max } end
  local ws = new(conn, opts, true)
  ws.protocol = h["sec-websocket-protocol"]
  return ws
end

return M
