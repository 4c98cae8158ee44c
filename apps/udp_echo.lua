-- UDP echo: every datagram is sent back to where it came from, handled in its own coroutine.
--
-- Run:   moonlet run apps/udp_echo.lua [--port 7005] [--host 127.0.0.1]
-- Try:   echo hello | nc -u -w1 127.0.0.1 7005        ->  hello
local net = require "moonlet.net"
local log = require "moonlet.log"
local opts = require("moonlet.args").parse(arg, { port = 7005, host = "127.0.0.1" })

local sock = assert(net.udp { host = opts.host, port = opts.port, handler = function(data, peer, s)
  s:sendto(data, peer.host, peer.port)
end })
log.info("udp echo on " .. opts.host .. ":" .. sock.port)
