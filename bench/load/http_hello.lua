-- Load script for `moonlet bench`: GET / over HTTP/1.1 keep-alive (apps/hello_http.lua, nginx, ...).
--   moonlet bench -c 50 -d 10 bench/load/http_hello.lua [--port 8080] [--path /]
local opts = require("moonlet.args").parse(arg, { host = "127.0.0.1", port = 8080, path = "/" })
local request = "GET " .. opts.path .. " HTTP/1.1\r\nHost: " .. opts.host .. "\r\n\r\n"

return {
  target = { host = opts.host, port = opts.port },
  session = function(conn)
    conn:write(request)
    local status = conn:readline()
    if not status then return nil, "closed" end
    local length
    while true do
      local line, err = conn:readline()
      if not line then return nil, err end
      if line == "" then break end
      local n = line:match("^[Cc]ontent%-[Ll]ength:%s*(%d+)")
      if n then length = tonumber(n) end
    end
    if not length then return nil, "no content-length" end
    local body, err = conn:readn(length)
    if not body then return nil, err end
    if not status:find(" 200 ", 1, true) then return nil, status end
    return true
  end,
}
