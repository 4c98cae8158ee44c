--- HTTP/1.1: a server (`http.serve`, a small router) and a client (`http.request`).
--
-- Server: requests are parsed in Lua from the connection's buffer (RFC 9112, strictly: see moonlet._httpd) and
-- served by a few reused worker tasks, so an idle keep-alive connection holds no coroutine. Keep-alive,
-- pipelining, 100-continue, chunked bodies both ways, backpressure on res:write.
--
--     http.serve { port = 8080, handler = function(req, res)
--       return 200, { ["content-type"] = "text/plain" }, "hello " .. (req.query.name or "world") .. "\n"
--     end }
--
-- Client: keep-alive through the connection pool, chunked bodies, redirects on request, HTTPS, and
-- streaming of large bodies.
--
--     local http = require "moonlet.http"
--     local res, err = http.request { url = "http://127.0.0.1:8080/users?id=7", timeout = 5 }
--     if res then print(res.status, res.headers["content-type"], #res.body) end
--     local up = http.request { method = "POST", url = url, headers = { ["content-type"] = "application/json" },
--                               body = '{"name":"ann"}' }
--     local big = http.request { url = url, stream = true }      -- read the body piece by piece
--     while true do local piece = big:read() if not piece then break end handle(piece) end
--
-- Failures return nil, err: "timeout", "closed" (the server closed mid-response), "connection refused",
-- "resolve: ...", "tls: certificate verify failed: ...", "http: bad status line", "http: body too large", ...
-- @module moonlet.http
-- One module per idea: the client (moonlet.http.client), the server (moonlet.http.server) and the router
-- (moonlet.http.router); this module is all three.
local M = {}
for _, part in ipairs { "moonlet.http.client", "moonlet.http.server", "moonlet.http.router" } do
  for name, value in pairs(require(part)) do M[name] = value end
end
M.websocket = require("moonlet.http.websocket").connect -- (the client; a server's is req:websocket())

return M
