-- A peer for the pong workload: Tarantool (a fiber per connection, LuaJIT) answering inline PING with
-- +PONG, batching the replies of one read like bench/raw_pong.py and bench/node_pong.js.
-- Run: tarantool bench/tarantool_pong.lua PORT
-- (The straight-line form, `s:read("\n")` then `s:write` per line, gave 18 k req/s unpipelined here and
-- closed pipelined connections, so the peer table uses this one.)
local socket = require "socket"
local port = tonumber(arg[1])
assert(socket.tcp_server("127.0.0.1", port, function(s)
  while true do
    local data = s:sysread(65536)
    if data == nil then
      if s:errno() == 11 or s:errno() == 4 then s:readable() else return end
    elseif data == "" then return
    else
      local _, n = data:gsub("\n", "")
      if n > 0 then s:write(string.rep("+PONG\r\n", n)) end
    end
  end
end))
