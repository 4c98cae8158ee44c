-- A stateless Redis-protocol pong server for benchmarks that need several workers (apps/kv.lua keeps its
-- store in one process, so it runs as one): answers inline PING with +PONG, anything else with an error.
--   moonlet run --workers 2 bench/lua/pong_server.lua --port 6390
local net = require "moonlet.net"
local opts = require("moonlet.args").parse(arg, { port = 6390, host = "127.0.0.1" })

net.listen { host = opts.host, port = opts.port, handler = function(conn)
  while true do
    local line = conn:readline()
    if not line then return end
    if line == "PING" then conn:write("+PONG\r\n") else conn:write("-ERR only PING here\r\n") end
  end
end }
