-- A peer's address as one value, the shape every API that hands a peer over uses (an HTTP request's
-- `req.peer`, a UDP handler's `peer`): a table {host =, port =} (a Unix socket: {host = its path}) that
-- prints as "host:port" ("[::1]:port" for IPv6), and that, called as a method, gives the two parts as
-- `conn:peer()` does: `local host, port = req:peer()`.
local host = require "moonlet._host"

local find, tostring = string.find, tostring

local M = {}

local Peer = { __name = "moonlet.Peer" }

function Peer.__call(peer)
  return peer.host, peer.port
end

function Peer.__tostring(peer)
  local h, port = peer.host, peer.port
  if port == nil then return h end
  if find(h, ":", 1, true) then return "[" .. h .. "]:" .. port end
  return h .. ":" .. port
end

local said = false
-- `req.peer` was the string "host:port" in 0.1: code that joins it into a string keeps working for a release
function Peer.__concat(a, b)
  if not said then
    said = true
    host.call(host.OP.LOG, "warn", "a peer joined with .. as if it were a string is deprecated: use tostring(peer), "
      .. "or peer.host and peer.port (the string form goes in the next release)")
  end
  return tostring(a) .. tostring(b)
end

--- A peer value for `host` and `port` (nil for a Unix socket).
function M.new(h, port)
  return setmetatable({ host = h, port = port }, Peer)
end

return M
