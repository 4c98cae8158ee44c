-- Load script for `moonlet bench`: inline PING against a Redis-protocol server (apps/kv.lua, redis-server).
--   moonlet bench -c 50 -d 10 bench/load/pong.lua [--port 6380] [--pipeline 1]
local opts = require("moonlet.args").parse(arg, { host = "127.0.0.1", port = 6380, pipeline = 1 })
local request = string.rep("PING\r\n", opts.pipeline)

return {
  target = { host = opts.host, port = opts.port },
  session = function(conn)
    conn:write(request)
    for _ = 1, opts.pipeline do
      local reply, err = conn:readline()
      if reply ~= "+PONG" then return nil, err or ("unexpected reply " .. reply) end
    end
    return true
  end,
}
