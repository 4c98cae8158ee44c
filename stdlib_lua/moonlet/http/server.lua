--- The HTTP/1.1 server behind `moonlet.http` (http.serve): requests are parsed in Lua from the
--- connection's buffer (moonlet._httpd) and served by a few reused worker tasks.
-- @module moonlet.http.server
local httpd = require "moonlet._httpd"
local door = require "moonlet._host"
local request, call, OP, argerror = door.request, door.call, door.OP, door.argerror
local type, pairs, setmetatable, getmetatable = type, pairs, setmetatable, getmetatable

local M = {}

-- the server (requests are parsed and answered in moonlet._httpd)

M.STATUS = httpd.STATUS
M.unescape = httpd.unescape

--- The cookies of a `Cookie` header value as a table (`req.cookies` is this of the request's header).
--- Example: `local session = http.cookies(req.headers.cookie).session`
---@param header string?
---@return table<string, string>
function M.cookies(header)
  if header ~= nil and type(header) ~= "string" then argerror(1, "cookies", "string or nil", header) end
  return httpd.cookies(header)
end

local COOKIE_OPTIONS = { path = true, domain = true, max_age = true, expires = true, secure = true,
  http_only = true, same_site = true }
local SAME_SITE = { Strict = "Strict", Lax = "Lax", None = "None", strict = "Strict", lax = "Lax", none = "None" }
local TOKEN = "^[%w!#$%%&'*+%-.^_`|~]+$"
local NOT_COOKIE_OCTET = '[%c ",;\\\128-\255]' -- RFC 6265: no control, space, DQUOTE, comma, ; or \, ASCII

local function attribute(opts, key)
  local v = opts[key]
  if v ~= nil and (type(v) ~= "string" or v:find("[%c;]")) then
    argerror(3, "setcookie", "string without ; or control bytes", v, key)
  end
  return v
end

--- A `Set-Cookie` header value (RFC 6265 4.1): `name=value` and the attributes `opts` asks for: `path`,
--- `domain`, `max_age` (seconds; 0 deletes the cookie), `expires` (a Unix time), `secure`, `http_only`,
--- `same_site` ("Strict", "Lax" or "None", which needs `secure`). A value with bytes a cookie cannot hold
--- (space, `"`, `,`, `;`, `\`, control bytes) is an error: encode it first (`codec.uri.encode`,
--- `codec.base64url.encode`). Several cookies go as a list: `res:header("set-cookie", { a, b })`.
--- Example: `res:header("set-cookie", http.setcookie("session", id, { http_only = true, same_site = "Lax" }))`
---@param name string
---@param value string
---@param opts? table  {path=, domain=, max_age=, expires=, secure=, http_only=, same_site=}
---@return string
function M.setcookie(name, value, opts)
  if type(name) ~= "string" or not name:find(TOKEN) then argerror(1, "setcookie", "cookie name (a token)", name) end
  if type(value) ~= "string" or value:find(NOT_COOKIE_OCTET) then
    argerror(2, "setcookie", "cookie value (no space, quote, comma, ; or \\)", value)
  end
  opts = opts or {}
  if type(opts) ~= "table" then argerror(3, "setcookie", "table", opts) end
  door.check_options(opts, 3, "setcookie", COOKIE_OPTIONS)
  local parts = { name .. "=" .. value }
  local path, domain = attribute(opts, "path"), attribute(opts, "domain")
  if path then parts[#parts + 1] = "Path=" .. path end
  if domain then parts[#parts + 1] = "Domain=" .. domain end
  local max_age, expires = opts.max_age, opts.expires
  if max_age ~= nil then
    if math.type(max_age) ~= "integer" then argerror(3, "setcookie", "integer", max_age, "max_age") end
    parts[#parts + 1] = "Max-Age=" .. max_age
  end
  if expires ~= nil then
    if type(expires) ~= "number" or expires < 0 then argerror(3, "setcookie", "Unix time", expires, "expires") end
    parts[#parts + 1] = "Expires=" .. os.date("!%a, %d %b %Y %H:%M:%S GMT", math.floor(expires))
  end
  if opts.secure then parts[#parts + 1] = "Secure" end
  if opts.http_only then parts[#parts + 1] = "HttpOnly" end
  local same_site = opts.same_site
  if same_site ~= nil then
    local canonical = SAME_SITE[same_site]
    if canonical == nil then argerror(3, "setcookie", "'Strict', 'Lax' or 'None'", same_site, "same_site") end
    if canonical == "None" and not opts.secure then
      argerror(3, "setcookie", "secure = true with it (browsers refuse SameSite=None without)", same_site,
        "same_site")
    end
    parts[#parts + 1] = "SameSite=" .. canonical
  end
  return table.concat(parts, "; ")
end

---@class moonlet.HttpServer
---@field host string
---@field port integer
local Server = {}
Server.__index = Server

--- Stop accepting new connections (those already accepted are served on); a script whose work is done then
--- ends.
--- Example: `server:close()`
function Server:close()
  call(OP.UNLISTEN, self._py)
end

local function check_limit(opts, name, fallback)
  local v = opts[name]
  if v == nil then return fallback end
  if type(v) ~= "number" or v ~= v or v <= 0 then
    argerror(1, "serve", "number > 0", v, name, 1)
  end
  return v
end

local SERVE_OPTIONS = { handler = true, host = true, port = true, keepalive_timeout = true, max_requests = true,
  send_timeout = true, tls = true, access_log = true }
local ACCESS_FORMATS = { common = true, combined = true, json = true }
for name in pairs(httpd.DEFAULTS) do SERVE_OPTIONS[name] = true end

--- Serve HTTP on host:port. `handler(req, res)` runs for each request (in a worker task; tasks it spawns end
--- with the request unless detached); it answers with `return status, headers, body`, or through `res`
--- (`res:status`, `res:header`, `res:write`, `res:finish`). An error in it answers 500 (if nothing was sent
--- yet) and is logged with its traceback.
--- Limits (with their defaults): max_request_line (8 KiB, 414), max_header_bytes (16 KiB, 431), max_headers
--- (100, 431), max_body (1 MiB, 413), header_timeout (30 s, 408), body_timeout (60 s between two pieces of a
--- body), keepalive_timeout (75 s), max_requests (1000 per connection), send_timeout (60 s: how long a
--- response write may wait for a peer that takes no data before the connection is closed). HTTPS: `tls =
--- {cert=, key=, ...}` as `net.listen` takes it (ALPN offers http/1.1). Access log: `access_log = "path"`
--- (or "-" for the log; `{path=, format=}` with format "combined" (default), "common" or "json").
---@async
---@param opts {host?: string, port: integer, handler: fun(req: moonlet.HttpRequest, res: moonlet.HttpReply)}
---@return moonlet.HttpServer? server
---@return string? err
function M.serve(opts)
  if type(opts) ~= "table" then argerror(1, "serve", "table", opts) end
  door.check_options(opts, 1, "serve", SERVE_OPTIONS)
  local handler = opts.handler
  if type(handler) ~= "function" and not (type(handler) == "table" and getmetatable(handler)
    and getmetatable(handler).__call) then
    argerror(1, "serve", "function or router", handler, "handler")
  end
  local lim = { counts = { bytes = 0 } } -- (counts: read by the host for the runtime's metrics)
  for name, default in pairs(httpd.DEFAULTS) do lim[name] = check_limit(opts, name, default) end
  local access = opts.access_log -- a path ("-": the log), or {path=, format=}
  if type(access) == "string" then access = { path = access } end
  if access ~= nil then
    if type(access) ~= "table" then argerror(1, "serve", "path or {path=, format=}", access, "access_log") end
    door.check_options(access, 1, "serve", { path = true, format = true })
    if type(access.path) ~= "string" or access.path == "" then
      argerror(1, "serve", "file path, or \"-\" for the log", access.path, "access_log.path")
    end
    if access.format ~= nil and not ACCESS_FORMATS[access.format] then
      argerror(1, "serve", "'combined', 'common' or 'json'", access.format, "access_log.format")
    end
    lim.access_format = access.format or "combined"
  end
  local spec = { httpd.worker(handler, lim), keepalive_timeout = check_limit(opts, "keepalive_timeout"),
    max_requests = check_limit(opts, "max_requests"), send_timeout = check_limit(opts, "send_timeout"),
    tls = opts.tls ~= nil and require("moonlet.net")._tls_options(opts.tls, "serve", { "http/1.1" }) or nil,
    access_log = access and access.path, access_format = access and lim.access_format, counts = lim.counts }
  local where = opts.host or "127.0.0.1"
  if type(where) ~= "string" then argerror(1, "serve", "string", where, "host") end
  local port = opts.port or 0
  if not door.is_port(port, 0) then argerror(1, "serve", "integer from 0 to 65535", port, "port") end
  local py, bound = request(OP.HTTP_LISTEN, where, port, spec)
  if not py then return nil, bound end
  if access then lim.access = spec.access_id end -- (its requests' lines go to that log: moonlet._httpd)
  return setmetatable({ host = where, port = bound, _py = py }, Server)
end

return M
