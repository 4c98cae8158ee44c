-- The app the HTTP fuzz target serves: routes that read the body, stream a response, fail, and echo.
local http = require "moonlet.http"
local json = require "moonlet.json"
local api = http.router()
api:get("/", function() return 200, nil, "hello" end)
api:post("/echo", function(req) return 200, { ["content-type"] = "text/plain" }, req:body(4096) or "" end)
api:get("/items/:id", function(req) return 200, nil, json.encode { id = req.params.id, q = req.query } end)
api:get("/stream", function(_, res)
  res:status(200)
  for i = 1, 3 do res:write("part ", i, "\n") end
  res:finish()
end)
api:get("/fail", function() error("handler failed on purpose") end)
http.serve { host = "127.0.0.1", port = 0, handler = api, max_body = 8192, max_header_bytes = 4096,
  header_timeout = 5, body_timeout = 5 }
