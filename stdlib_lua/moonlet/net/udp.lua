--- UDP sockets behind `moonlet.net` (net.udp): a server that runs a handler per datagram, or a client socket.
-- @module moonlet.net.udp
local host = require "moonlet._host"
local new_peer = require("moonlet._peer").new
local request, call, OP, argerror = host.request, host.call, host.OP, host.argerror
local type, setmetatable = type, setmetatable

local M = {}

local UDP_OPTIONS = { host = true, port = true, handler = true }

local function check_opts(opts)
  if opts ~= nil and type(opts) ~= "table" then host.argerror(1, "udp", "options table", opts, nil, 1) end
  if opts ~= nil then host.check_options(opts, 1, "udp", UDP_OPTIONS, nil, 1) end
  return opts or {}
end

---@class moonlet.Udp
---@field port integer
local Udp = {}
Udp.__index = Udp

--- Send one datagram to `host` (an IP address; see net.resolve) and `port`.
---@param data string
---@param addr string  an IP address (see net.resolve)
---@param port integer
function Udp:sendto(data, addr, port)
  if type(data) ~= "string" then host.argerror(1, "sendto", "string", data) end
  if type(addr) ~= "string" then host.argerror(2, "sendto", "string (an IP address)", addr) end
  if math.type(port) ~= "integer" or port < 1 or port > 65535 then
    host.argerror(3, "sendto", "integer from 1 to 65535", port)
  end
  return call(OP.UDP_SEND, self._py, data, addr, port)
end

--- Wait for the next datagram: returns data, host, port; or nil, "timeout" / "closed".
---@async
---@param timeout? number
function Udp:recvfrom(timeout)
  return request(OP.UDP_RECV, self._py, timeout)
end

--- Close the socket.
--- Example: `sock:close()`
function Udp:close()
  return call(OP.UDP_CLOSE, self._py)
end

--- A UDP socket. With `handler`, it serves datagrams: `handler(data, peer, sock)` runs in its own coroutine
--- for each one (`peer` is {host =, port =}, written "host:port"; answer with `sock:sendto(reply,
--- peer.host, peer.port)`, or `sock:sendto(reply, peer())`).
--- Without, it is a client socket (`:sendto`, `:recvfrom`, `:close`). `host` defaults to 127.0.0.1, `port`
--- to 0 (any free port; see `sock.port`). Returns the socket, or nil, err.
---@async
---@param opts? {host?: string, port?: integer, handler?: fun(data: string, peer: table, sock: moonlet.Udp)}
---@return moonlet.Udp? sock
---@return string? err
function M.udp(opts)
  opts = check_opts(opts)
  local handler = opts.handler
  if handler ~= nil and type(handler) ~= "function" then argerror(1, "udp", "function", handler, "handler") end
  local where, port = opts.host or "127.0.0.1", opts.port or 0
  if type(where) ~= "string" then argerror(1, "udp", "string", where, "host") end
  if not host.is_port(port, 0) then argerror(1, "udp", "integer from 0 to 65535", port, "port") end
  local sock = setmetatable({}, Udp)
  local entry = handler and function(_, data, peer_host, peer_port)
    handler(data, new_peer(peer_host, peer_port), sock)
  end
  local py, bound = request(OP.UDP_OPEN, where, port, entry)
  if not py then return nil, bound end
  sock._py, sock.port = py, bound
  return sock
end

return M
