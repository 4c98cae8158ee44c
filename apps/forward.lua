-- A TCP forwarder: every connection to --port is joined to a new connection to --to, and bytes flow both
-- ways until both sides are done. Backpressure holds on both sides (a slow reader slows its writer), and a
-- half-close is passed on (the other side reads end-of-stream and may still answer).
--
-- Run:   moonlet run apps/forward.lua --port 7004 --to 127.0.0.1:6379 [--host 127.0.0.1]
-- Try:   redis-benchmark -p 7004 -t set,get -q          (through the forwarder to redis-server)
local net = require "moonlet.net"
local log = require "moonlet.log"
local opts = require("moonlet.args").parse(arg, { port = 7004, host = "127.0.0.1", to = "127.0.0.1:6379",
  timeout = 10 })

local to_host, to_port = opts.to:match("^(.+):(%d+)$")
if not to_host then error("--to must be host:port, got " .. opts.to) end
to_port = math.tointeger(tonumber(to_port))

-- Copy from `src` to `dst` until src ends; then half-close dst. flush() waits while dst's peer is slow.
local function pump(src, dst)
  while true do
    local data = src:read(65536)
    if not data then break end
    dst:write(data)
    if not dst:flush() then break end
  end
  dst:shutdown()
end

local server = assert(net.listen { host = opts.host, port = opts.port, handler = function(client)
  local upstream, err = net.connect(to_host, to_port, { timeout = opts.timeout })
  if not upstream then
    log.warn("forward to " .. opts.to .. " failed: " .. err)
    return
  end
  client:settimeouts(nil, false, false)   -- idle forwarded connections may stay open
  upstream:settimeouts(nil, false, false)
  local back = spawn(pump, upstream, client)
  pump(client, upstream)
  back:wait()
  upstream:close()
end })
log.info("forwarding " .. server.host .. ":" .. server.port .. " to " .. opts.to)
