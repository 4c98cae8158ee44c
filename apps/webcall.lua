-- Calls an HTTP service for every request and answers with part of the result: a line `GET <path>` is
-- answered `<status> <bytes> <first line of the body>`, the call made with keep-alive to --url.
--
-- Run:   moonlet run apps/webcall.lua --url http://127.0.0.1:8000 [--port 7006] [--host 127.0.0.1]
-- Session:
--   C: GET /index.html
--   S: 200 5120 <!DOCTYPE html>
--   C: GET /missing
--   S: 404 469 <!DOCTYPE HTML>
local net = require "moonlet.net"
local http = require "moonlet.http"
local log = require "moonlet.log"
local opts = require("moonlet.args").parse(arg, { port = 7006, host = "127.0.0.1", url = "http://127.0.0.1:8000",
  timeout = 5 })

local server = assert(net.listen { host = opts.host, port = opts.port, handler = function(conn)
  while true do
    local line = conn:readline()
    if not line then return end
    local path = line:match("^GET (/%S*)$")
    if not path then
      conn:write("ERR usage: GET /path\n")
    else
      local res, err = http.request { url = opts.url .. path, timeout = opts.timeout }
      if res then
        conn:write(res.status, " ", #res.body, " ", res.body:match("^[^\r\n]*"), "\n")
      else
        conn:write("ERR ", err, "\n")
      end
    end
  end
end })
log.info("webcall on " .. server.host .. ":" .. server.port .. " calling " .. opts.url)
