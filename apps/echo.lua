-- Line echo: every line a client sends comes back, until it sends QUIT or closes.
--
-- Run:   moonlet run apps/echo.lua [--port 7000] [--host 127.0.0.1]
-- Try:   printf 'hello\nworld\nQUIT\n' | nc 127.0.0.1 7000
--        hello
--        world
--        BYE
local net = require "moonlet.net"
local log = require "moonlet.log"
local opts = require("moonlet.args").parse(arg, { port = 7000, host = "127.0.0.1" })

local function handler(conn)
  while true do
    local line, err = conn:readline()
    if not line then
      if err == "line too long" then conn:write("ERR line too long\n") end
      return
    end
    if line == "QUIT" then
      conn:write("BYE\n")
      return
    end
    conn:write(line, "\n")
  end
end

local server = assert(net.listen { host = opts.host, port = opts.port, handler = handler })
log.info("echo ready on " .. server.host .. ":" .. server.port)
