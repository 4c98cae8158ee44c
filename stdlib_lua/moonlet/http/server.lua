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
  send_timeout = true }
for name in pairs(httpd.DEFAULTS) do SERVE_OPTIONS[name] = true end

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
  if type(opts) ~= "table" then argerror(1, "serve", "table", opts) end
  door.check_options(opts, 1, "serve", SERVE_OPTIONS, require("moonlet.net")._NOT_ON_LISTENERS)
  local handler = opts.handler
  if type(handler) ~= "function" and not (type(handler) == "table" and getmetatable(handler)
    and getmetatable(handler).__call) then
    argerror(1, "serve", "function or router", handler, "handler")
  end
  local lim = {}
  for name, default in pairs(httpd.DEFAULTS) do lim[name] = check_limit(opts, name, default) end
  local spec = { httpd.worker(handler, lim), keepalive_timeout = check_limit(opts, "keepalive_timeout"),
    max_requests = check_limit(opts, "max_requests"), send_timeout = check_limit(opts, "send_timeout") }
  local where = opts.host or "127.0.0.1"
  if type(where) ~= "string" then argerror(1, "serve", "string", where, "host") end
  local port = opts.port or 0
  if not door.is_port(port, 0) then argerror(1, "serve", "integer from 0 to 65535", port, "port") end
  local py, bound = request(OP.HTTP_LISTEN, where, port, spec)
  if not py then return nil, bound end
  return setmetatable({ host = where, port = bound, _py = py }, Server)
end

return M
