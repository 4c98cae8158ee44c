-- WebSocket echo for `python bench/run.py ws`: every message comes back as it came.
local http = require "moonlet.http"
local opts = require("moonlet.args").parse(arg, { port = 8091 })

assert(http.serve { port = opts.port, handler = function(req)
  local ws, why, status = req:websocket()
  if not ws then return status, nil, why .. "\n" end
  while true do
    local data, kind = ws:receive()
    if not data or kind == "close" then return end
    if kind == "text" or kind == "binary" then ws:send(data, kind) end
  end
end })
