--- HTTP/1.1: a server (`http.serve`, a small router) and a client (`http.request`).
--
-- Server: requests are parsed in Lua from the connection's buffer (RFC 9112, strictly: see moonlet._httpd) and
-- served by a few reused worker tasks, so an idle keep-alive connection holds no coroutine. Keep-alive,
-- pipelining, 100-continue, chunked bodies both ways, backpressure on res:write.
--
--     http.serve { port = 8080, handler = function(req, res)
--       return 200, { ["content-type"] = "text/plain" }, "hello " .. (req.query.name or "world") .. "\n"
--     end }
--
-- Client: keep-alive through the connection pool, chunked bodies, redirects on request, HTTPS, and
-- streaming of large bodies.
--
--     local http = require "moonlet.http"
--     local res, err = http.request { url = "http://127.0.0.1:8080/users?id=7", timeout = 5 }
--     if res then print(res.status, res.headers["content-type"], #res.body) end
--     local up = http.request { method = "POST", url = url, headers = { ["content-type"] = "application/json" },
--                               body = '{"name":"ann"}' }
--     local big = http.request { url = url, stream = true }      -- read the body piece by piece
--     while true do local piece = big:read() if not piece then break end handle(piece) end
--
-- Failures return nil, err: "timeout", "closed" (the server closed mid-response), "connection refused",
-- "resolve: ...", "tls: certificate verify failed: ...", "http: bad status line", "http: body too large", ...
-- @module moonlet.http
local net = require "moonlet.net"
local httpd = require "moonlet._httpd"
local door = require "moonlet._host"
local request, call, OP = door.request, door.call, door.OP
local type, error, tonumber, tostring, pairs, setmetatable = type, error, tonumber, tostring, pairs, setmetatable
local getmetatable, ipairs, gsub, upper = getmetatable, ipairs, string.gsub, string.upper
local concat, lower, find, sub, format = table.concat, string.lower, string.find, string.sub, string.format

local M = {}

M.MAX_BODY = 64 * 1024 * 1024 -- default limit on a buffered (not streamed) body
local PIECE = 64 * 1024

local DEFAULT_PORTS = { http = 80, https = 443 }

--- Split a URL into scheme, host, port and path (with the query).
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
local function length_reader(conn, left)
  return function()
    if left == 0 then return nil end
    local n = left < PIECE and left or PIECE
    local data, err = conn:readn(n)
    if not data then return nil, err end
    left = left - n
    return data
  end
end

local function chunked_reader(conn)
  local done = false
  return function()
    if done then return nil end
    local line, err = conn:readline()
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
    local data
    data, err = conn:readn(size)
    if not data then return nil, err end
    line, err = conn:readline()
    if line ~= "" then return nil, err or "http: bad chunk end" end
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
---@async
---@return string? piece
---@return string? err
function Response:read()
  local reader = self._reader
  if reader == nil then return nil end
  local piece, err = reader()
  if piece == nil then
    self._reader = nil
    if err == nil and self._reusable then self._conn:setkeepalive() else self._conn:close() end
  end
  return piece, err
end

local function read_head(conn)
  local line, err = conn:readline()
  if not line then return nil, err end
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

local function once(opts, method, url, body)
  local scheme, host, port, path = M.parse_url(url)
  if not scheme then return nil, "http: bad url '" .. url .. "'" end
  local timeout = opts.timeout or 30
  local tls = scheme == "https" and (opts.tls or true) or nil
  local conn, err = net.connect(host, port, { timeout = timeout, tls = tls, pool_size = opts.pool_size })
  if not conn then return nil, err end
  conn:settimeout(timeout)
  local max_body = opts.max_body or M.MAX_BODY
  conn:setlimits { line = 64 * 1024, read = max_body > PIECE and max_body or PIECE }
  local ok
  ok, err = send_request(conn, method, host, port, scheme, path, opts.headers or {}, body)
  if not ok then
    conn:close()
    return nil, err
  end
  local res
  res, err = read_head(conn)
  if not res then
    conn:close()
    return nil, err
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
  res._conn, res._reader = conn, reader
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

--- Make an HTTP request. Options: `url` (required), `method` ("GET"), `headers` (a table of name = value),
--- `body` (a string), `timeout` (seconds for connecting and for each read or write, default 30),
--- `redirects` (how many redirects to follow, default 0), `stream` (true: `res.body` is nil and
--- `res:read()` returns the body piece by piece), `max_body` (limit on a buffered body, default 64 MiB),
--- `tls` (for https: {verify = false, cafile = , server_name = }).
--- Returns the response ({status, reason, headers, body}), or nil, err.
---@async
---@param opts {url: string, method?: string, headers?: table, body?: string, timeout?: number,
---             redirects?: integer, stream?: boolean, max_body?: integer, tls?: table}
---@return moonlet.HttpResponse? res
---@return string? err
function M.request(opts)
  if type(opts) ~= "table" or type(opts.url) ~= "string" then
    error("bad argument #1 to 'request' (table with a 'url' expected)", 2)
  end
  if opts.body ~= nil and type(opts.body) ~= "string" then error("request: 'body' must be a string", 2) end
  local method, url, body = (opts.method or "GET"):upper(), opts.url, opts.body
  local left = opts.redirects or 0
  while true do
    local res, err = once(opts, method, url, body)
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
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  o.url = url
  return M.request(o)
end

---------------------------------------------------------------------------------------------------------
-- the server (requests are parsed and answered in moonlet._httpd)

M.STATUS = httpd.STATUS
M.unescape = httpd.unescape

---@class moonlet.HttpServer
---@field host string
---@field port integer
local Server = {}
Server.__index = Server

--- Stop accepting new connections (those already accepted are served on); a script whose work is done then
--- ends.
function Server:close()
  call(OP.UNLISTEN, self._py)
end

local function check_limit(opts, name, fallback)
  local v = opts[name]
  if v == nil then return fallback end
  if type(v) ~= "number" or v ~= v or v <= 0 then
    error("serve: '" .. name .. "' must be a number > 0", 3)
  end
  return v
end

--- Serve HTTP on host:port. `handler(req, res)` runs for each request (in a worker task; tasks it spawns end
--- with the request unless detached); it answers with `return status, headers, body`, or through `res`
--- (`res:status`, `res:header`, `res:write`, `res:finish`). An error in it answers 500 (if nothing was sent
--- yet) and is logged with its traceback.
--- Limits (with their defaults): max_request_line (8 KiB, 414), max_header_bytes (16 KiB, 431), max_headers
--- (100, 431), max_body (1 MiB, 413), header_timeout (30 s, 408), body_timeout (60 s between two pieces of a
--- body), keepalive_timeout (75 s), max_requests (1000 per connection), send_timeout (60 s: how long a
--- response write may wait for a peer that takes no data before the connection is closed).
---@async
---@param opts {host?: string, port: integer, handler: fun(req: moonlet.HttpRequest, res: moonlet.HttpReply)}
---@return moonlet.HttpServer? server
---@return string? err
function M.serve(opts)
  if type(opts) ~= "table" then error("bad argument #1 to 'serve' (table expected)", 2) end
  local handler = opts.handler
  if type(handler) ~= "function" and not (type(handler) == "table" and getmetatable(handler)
    and getmetatable(handler).__call) then
    error("serve: 'handler' must be a function or a router", 2)
  end
  local lim = {}
  for name, default in pairs(httpd.DEFAULTS) do lim[name] = check_limit(opts, name, default) end
  local spec = { httpd.worker(handler, lim), keepalive_timeout = check_limit(opts, "keepalive_timeout"),
    max_requests = check_limit(opts, "max_requests"), send_timeout = check_limit(opts, "send_timeout") }
  local where = opts.host or "127.0.0.1"
  if type(where) ~= "string" then error("serve: 'host' must be a string", 2) end
  local port = opts.port or 0
  if type(port) ~= "number" or port < 0 or port > 65535 or port % 1 ~= 0 then
    error("serve: 'port' must be an integer from 0 to 65535", 2)
  end
  local py, bound = request(OP.HTTP_LISTEN, where, port, spec)
  if not py then return nil, bound end
  return setmetatable({ host = where, port = bound, _py = py }, Server)
end

---@class moonlet.Router
local Router = {}
Router.__index = Router

--- A router: `r:get("/users/:id", fn)`, `r:post(...)`, ...; `:name` captures one path segment into
--- `req.params.name`, a trailing `*` captures the rest into `req.params.rest`. Unknown paths get 404, known
--- paths with another method 405. Pass the router as the server's handler.
---@return moonlet.Router
function M.router()
  return setmetatable({ _routes = {} }, Router)
end

--- Add a route for `method` ("GET", ... or "*" for any) and `pattern`.
function Router:route(method, pattern, fn)
  if type(pattern) ~= "string" or sub(pattern, 1, 1) ~= "/" then
    error("bad argument #2 to 'route' (a path pattern starting with '/' expected)", 2)
  end
  local names = {}
  local lua_pattern = "^" .. gsub(gsub(pattern, "[%-%.%+%[%]%(%)%$%^%%%?]", "%%%0"), ":([%w_]+)", function(name)
    names[#names + 1] = name
    return "([^/]+)"
  end)
  if sub(lua_pattern, -1) == "*" then
    names[#names + 1] = "rest"
    lua_pattern = sub(lua_pattern, 1, -2) .. "(.*)"
  end
  self._routes[#self._routes + 1] = { method = upper(method), pattern = lua_pattern .. "$", names = names, fn = fn }
  return self
end

for _, m in ipairs { "get", "post", "put", "delete", "patch" } do
  Router[m] = function(self, pattern, fn) return self:route(m, pattern, fn) end
end

Router.__call = function(self, req, res)
  local allowed = false
  for _, r in ipairs(self._routes) do
    local caps = { req.path:match(r.pattern) }
    if caps[1] ~= nil or req.path:match(r.pattern) then
      if r.method == "*" or r.method == req.method or (r.method == "GET" and req.method == "HEAD") then
        for i, name in ipairs(r.names) do req.params[name] = caps[i] end
        return r.fn(req, res)
      end
      allowed = true
    end
  end
  if allowed then return 405, nil, "405 Method Not Allowed\n" end
  return 404, nil, "404 Not Found\n"
end

return M
