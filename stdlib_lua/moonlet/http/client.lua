--- The HTTP/1.1 client behind `moonlet.http` (http.request, http.get, http.parse_url): keep-alive through
--- the connection pool, chunked bodies, redirects on request, HTTPS, and streaming of large bodies.
-- @module moonlet.http.client
local net = require "moonlet.net"
local door = require "moonlet._host"
local argerror = door.argerror
local type, tonumber, tostring, pairs, setmetatable = type, tonumber, tostring, pairs, setmetatable
local concat, lower, find, sub, format = table.concat, string.lower, string.find, string.sub, string.format

local M = {}

M.MAX_BODY = 64 * 1024 * 1024 -- default limit on a buffered (not streamed) body
local PIECE = 64 * 1024

local DEFAULT_PORTS = { http = 80, https = 443 }

--- Split a URL into scheme, host, port and path (with the query).
--- Example: `local scheme, host, port, path = http.parse_url("http://127.0.0.1:8080/items?page=2")`
---@param url string
---@return string? scheme
---@return string? host
---@return integer? port
---@return string? path
function M.parse_url(url)
  local scheme, rest = url:match("^(%a[%w+.-]*)://(.*)$")
  if not scheme then return nil end
  scheme = lower(scheme)
  if not DEFAULT_PORTS[scheme] then return nil end
  local authority, path = rest:match("^([^/?#]*)(.*)$")
  path = path:gsub("#.*$", "")
  if path == "" or sub(path, 1, 1) == "?" then path = "/" .. path end
  local host, port = authority:match("^%[([^%]]+)%]:?(%d*)$") -- [IPv6]:port
  if not host then host, port = authority:match("^([^:]+):?(%d*)$") end
  if not host or host == "" then return nil end
  return scheme, host, tonumber(port) or DEFAULT_PORTS[scheme], path
end

---@class moonlet.HttpResponse
---@field status integer
---@field reason string
---@field headers table<string, string>  lower-case names; repeated headers joined with ", "
---@field body string?  nil when streaming
local Response = {}
Response.__index = Response

-- Body readers: each returns the next piece, or nil at the end, or nil, err.
-- (the readers hand on what has arrived, at most PIECE bytes at a time, so that a request's deadline is
-- checked between arrivals: Response:read)
local function length_reader(conn, left)
  return function()
    if left == 0 then return nil end
    local data, err = conn:read(left < PIECE and left or PIECE)
    if not data then return nil, err end
    left = left - #data
    return data
  end
end

local function chunked_reader(conn)
  local done, in_chunk = false, 0 -- (bytes of the current chunk still to come)
  return function()
    if done then return nil end
    local line, err
    if in_chunk == 0 then
      line, err = conn:readline()
      if not line then return nil, err end
      local size = tonumber(line:match("^%s*(%x+)"), 16)
      if size == nil then return nil, "http: bad chunk size" end
      if size == 0 then
        repeat -- trailers, up to the empty line
          line, err = conn:readline()
          if not line then return nil, err end
        until line == ""
        done = true
        return nil
      end
      in_chunk = size
    end
    local data
    data, err = conn:read(in_chunk < PIECE and in_chunk or PIECE)
    if not data then return nil, err end
    in_chunk = in_chunk - #data
    if in_chunk == 0 then
      line, err = conn:readline()
      if line ~= "" then return nil, err or "http: bad chunk end" end
    end
    return data
  end
end

local function close_reader(conn)
  local done = false
  return function()
    if done then return nil end
    local data, err = conn:read(PIECE)
    if data then return data end
    if err == "closed" then
      done = true
      return nil
    end
    return nil, err
  end
end

--- The next piece of a streamed body; nil at the end (the connection then goes back to the pool), or
--- nil, err.
--- Example: `local piece, err = res:read()`
---@async
---@return string? piece
---@return string? err
function Response:read()
  local reader = self._reader
  if reader == nil then return nil end
  local stop = self._stop
  if stop then -- (the request's deadline: each read gets what is left of it, at most the per-read timeout)
    local left = stop - door.call(door.OP.MONOTONIC)
    if left <= 0 then
      self._reader = nil
      self._conn:close()
      return nil, "timeout"
    end
    self._conn:settimeout(left < self._timeout and left or self._timeout)
  end
  local piece, err = reader()
  if piece == nil then
    self._reader = nil
    if err == nil and self._reusable then self._conn:setkeepalive() else self._conn:close() end
  end
  return piece, err
end

-- The response's status line and headers; or nil, err, and whether not one byte of them came.
local function read_head(conn)
  local line, err, partial = conn:readline()
  if not line then return nil, err, partial == nil or partial == "" end
  local version, status, reason = line:match("^HTTP/(%d%.%d) (%d%d%d) ?(.*)$")
  if not version then return nil, "http: bad status line" end
  local headers = {}
  while true do
    line, err = conn:readline()
    if not line then return nil, err end
    if line == "" then break end
    local name, value = line:match("^([^:]+):%s*(.-)%s*$")
    if not name then return nil, "http: bad header line" end
    name = lower(name)
    headers[name] = headers[name] and (headers[name] .. ", " .. value) or value
  end
  return setmetatable({ status = tonumber(status), reason = reason, headers = headers, _version = version },
    Response)
end

local function send_request(conn, method, host, port, scheme, path, headers, body)
  local lines = { method, " ", path, " HTTP/1.1\r\n" }
  local has = {}
  for name, value in pairs(headers) do
    has[lower(name)] = true
    lines[#lines + 1] = name .. ": " .. tostring(value) .. "\r\n"
  end
  if not has.host then
    local default = DEFAULT_PORTS[scheme] == port
    lines[#lines + 1] = "Host: " .. (default and host or (host .. ":" .. port)) .. "\r\n"
  end
  if not has["user-agent"] then lines[#lines + 1] = "User-Agent: moonlet\r\n" end
  if body and not has["content-length"] and not has["transfer-encoding"] then
    lines[#lines + 1] = "Content-Length: " .. #body .. "\r\n"
  end
  lines[#lines + 1] = "\r\n"
  conn:write(concat(lines))
  if body then conn:write(body) end
  return conn:flush()
end

-- One request on one connection: the response (its body still to read); or nil, err, and whether the
-- connection was a pooled one the server had closed before answering a byte (worth one more try).
local function once(opts, method, url, body, stop, fresh)
  local scheme, host, port, path = M.parse_url(url)
  if not scheme then return nil, "http: bad url '" .. url .. "'" end
  local timeout = opts.timeout or 30
  if stop then
    local left = stop - door.call(door.OP.MONOTONIC)
    if left <= 0 then return nil, "timeout" end
    if left < timeout then timeout = left end
  end
  local tls = scheme == "https" and (opts.tls or true) or nil
  local conn, err = net.connect(host, port, { timeout = timeout, tls = tls, pool_size = opts.pool_size,
    reuse = not fresh })
  if not conn then return nil, err end
  local reused = conn._reused
  conn:settimeout(timeout)
  local max_body = opts.max_body or M.MAX_BODY
  conn:setlimits { max_line = 64 * 1024, max_read = max_body > PIECE and max_body or PIECE }
  local ok
  ok, err = send_request(conn, method, host, port, scheme, path, opts.headers or {}, body)
  if not ok then
    conn:close()
    return nil, err, reused and err == "closed"
  end
  local res, nothing
  res, err, nothing = read_head(conn)
  if not res then
    conn:close()
    return nil, err, reused and nothing and err == "closed"
  end
  local h = res.headers
  local reader, framed_by_close
  if method == "HEAD" or res.status < 200 or res.status == 204 or res.status == 304 then
    reader = function() return nil end
  elseif h["transfer-encoding"] and find(lower(h["transfer-encoding"]), "chunked", 1, true) then
    reader = chunked_reader(conn)
  elseif h["content-length"] then
    local n = tonumber(h["content-length"])
    if n == nil or n < 0 then
      conn:close()
      return nil, "http: bad content-length"
    end
    reader = length_reader(conn, n)
  else
    reader, framed_by_close = close_reader(conn), true
  end
  local connection = lower(h.connection or "")
  res._conn, res._reader, res._stop, res._timeout = conn, reader, stop, opts.timeout or 30
  res._reusable = res._version == "1.1" and connection ~= "close" and not framed_by_close
  return res
end

-- Resolve a Location header against the URL it answered.
local function resolve_location(base, location)
  if location:match("^%a[%w+.-]*://") then return location end
  local scheme, host, port = M.parse_url(base)
  local authority = format("%s://%s:%d", scheme, host, port)
  if sub(location, 1, 1) == "/" then return authority .. location end
  local dir = base:match("^%a[%w+.-]*://[^/]*(.*/)") or "/"
  return authority .. dir .. location
end

local REQUEST_OPTIONS = { url = true, method = true, headers = true, body = true, timeout = true, tls = true,
  pool_size = true, max_body = true, redirects = true, stream = true, deadline = true }

-- Methods a client may send twice (RFC 9110 9.2.2): retried once when a pooled connection was stale.
local IDEMPOTENT = { GET = true, HEAD = true, PUT = true, DELETE = true, OPTIONS = true, TRACE = true }

--- Make an HTTP request. Options: `url` (required), `method` ("GET"), `headers` (a table of name = value),
--- `body` (a string), `timeout` (seconds for connecting and for each read or write, default 30),
--- `deadline` (seconds for the whole request, redirects and body included: past it nil, "timeout"),
--- `redirects` (how many redirects to follow, default 0), `stream` (true: `res.body` is nil and
--- `res:read()` returns the body piece by piece), `max_body` (limit on a buffered body, default 64 MiB),
--- `tls` (for https: {verify = false, cafile = , server_name = }).
--- Returns the response ({status, reason, headers, body}), or nil, err. A keep-alive connection the server
--- closed while it sat in the pool fails before a byte of the answer: an idempotent request (GET, HEAD,
--- PUT, DELETE, OPTIONS, TRACE) is then sent once more on a new connection, as browsers and curl do.
---@async
---@param opts {url: string, method?: string, headers?: table, body?: string, timeout?: number,
---             redirects?: integer, stream?: boolean, max_body?: integer, tls?: table}
---@return moonlet.HttpResponse? res
---@return string? err
function M.request(opts)
  if type(opts) ~= "table" then argerror(1, "request", "table", opts) end
  if type(opts.url) ~= "string" then argerror(1, "request", "string", opts.url, "url") end
  door.check_options(opts, 1, "request", REQUEST_OPTIONS)
  if opts.body ~= nil and type(opts.body) ~= "string" then argerror(1, "request", "string", opts.body, "body") end
  local method, url, body = (opts.method or "GET"):upper(), opts.url, opts.body
  local left = opts.redirects or 0
  local deadline = opts.deadline
  if deadline ~= nil and (type(deadline) ~= "number" or deadline ~= deadline or deadline <= 0) then
    argerror(1, "request", "number > 0", deadline, "deadline")
  end
  local stop = deadline and door.call(door.OP.MONOTONIC) + deadline
  while true do
    local res, err, stale = once(opts, method, url, body, stop)
    if not res and stale and IDEMPOTENT[method] then
      res, err = once(opts, method, url, body, stop, true)
    end
    if not res then return nil, err end
    local location = res.headers.location
    local redirect = location and (res.status == 301 or res.status == 302 or res.status == 303
      or res.status == 307 or res.status == 308)
    if redirect and left > 0 then
      res:read_all() -- drain, so the connection can be reused
      left = left - 1
      url = resolve_location(url, location)
      if res.status == 303 or ((res.status == 301 or res.status == 302) and method == "POST") then
        method, body = "GET", nil
      end
    else
      if opts.stream then return res end
      local all
      all, err = res:read_all(opts.max_body or M.MAX_BODY)
      if not all then return nil, err end
      res.body = all
      return res
    end
  end
end

--- Read the rest of the body at once (at most `max` bytes: past it nil, "http: body too large").
--- Example: `local body, err = res:read_all(1024 * 1024)`
---@async
---@param max? integer
---@return string? body
---@return string? err
function Response:read_all(max)
  local parts, size = {}, 0
  max = max or M.MAX_BODY
  while true do
    local piece, err = self:read()
    if not piece then
      if err then return nil, err end
      return concat(parts)
    end
    size = size + #piece
    if size > max then
      self._reader = nil
      self._conn:close()
      return nil, "http: body too large"
    end
    parts[#parts + 1] = piece
  end
end

--- `http.request{url = url}` with other options from `opts`.
---@async
function M.get(url, opts)
  if opts ~= nil then
    if type(opts) ~= "table" then argerror(2, "get", "table", opts) end
    door.check_options(opts, 2, "get", REQUEST_OPTIONS)
  end
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  o.url = url
  return M.request(o)
end

return M
