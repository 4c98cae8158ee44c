-- Plain-text hello over HTTP/1.1 (keep-alive, pipelining): the smallest HTTP service.
--
-- Run:   moonlet run apps/hello_http.lua [--port 8080] [--host 127.0.0.1]
-- Try:   curl -i http://127.0.0.1:8080/            ->  200, "hello world"
--        curl http://127.0.0.1:8080/?name=moon     ->  hello moon
--        wrk -t1 -c50 -d10s http://127.0.0.1:8080/
-- HTTPS: moonlet run apps/hello_http.lua --cert fullchain.pem --key privkey.pem   (--access-log PATH: one line
--        a request, in the combined format)
local http = require "moonlet.http"
local log = require "moonlet.log"
local opts = require("moonlet.args").parse(arg, { port = 8080, host = "127.0.0.1", cert = "", key = "",
  access_log = "" })

local HEADERS = { ["content-type"] = "text/plain" }

local tls = opts.cert ~= "" and { cert = opts.cert, key = opts.key ~= "" and opts.key or nil } or nil -- (HTTPS)
local access_log = opts.access_log ~= "" and opts.access_log or nil -- (a path, or "-": the log)
local function hello(req)
  local name = req.query.name
  if name then return 200, HEADERS, "hello " .. name .. "\n" end
  return 200, HEADERS, "hello world\n"
end

local server = assert(http.serve { host = opts.host, port = opts.port, tls = tls, access_log = access_log,
  handler = hello })
log.info("hello_http on " .. (tls and "https" or "http") .. "://" .. server.host .. ":" .. server.port .. "/")
