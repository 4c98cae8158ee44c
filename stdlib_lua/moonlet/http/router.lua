--- The request router behind `moonlet.http` (http.router).
-- @module moonlet.http.router
local argerror = require("moonlet._host").argerror
local type, setmetatable, ipairs, gsub, upper, sub =
  type, setmetatable, ipairs, string.gsub, string.upper, string.sub

local M = {}

---@class moonlet.Router
local Router = {}
Router.__index = Router

--- A router: `r:get("/users/:id", fn)`, `r:post(...)`, ...; `:name` captures one path segment into
--- `req.params.name`, a trailing `*` captures the rest into `req.params.rest`. Unknown paths get 404, known
--- paths with another method 405. Pass the router as the server's handler.
---@return moonlet.Router
function M.router()
  return setmetatable({ _routes = {} }, Router)
end

--- Add a route for `method` ("GET", ... or "*" for any) and `pattern`.
--- Example: `r:route("*", "/health", function() return 200, nil, "ok" end)`
function Router:route(method, pattern, fn)
  if type(pattern) ~= "string" or sub(pattern, 1, 1) ~= "/" then
    argerror(2, "route", "a path pattern starting with '/'", pattern)
  end
  local names = {}
  local lua_pattern = "^" .. gsub(gsub(pattern, "[%-%.%+%[%]%(%)%$%^%%%?]", "%%%0"), ":([%w_]+)", function(name)
    names[#names + 1] = name
    return "([^/]+)"
  end)
  if sub(lua_pattern, -1) == "*" then
    names[#names + 1] = "rest"
    lua_pattern = sub(lua_pattern, 1, -2) .. "(.*)"
  end
  self._routes[#self._routes + 1] = { method = upper(method), pattern = lua_pattern .. "$", names = names, fn = fn }
  return self
end

for _, m in ipairs { "get", "post", "put", "delete", "patch" } do
  Router[m] = function(self, pattern, fn) return self:route(m, pattern, fn) end
end

Router.__call = function(self, req, res)
  local allowed = false
  for _, r in ipairs(self._routes) do
    local caps = { req.path:match(r.pattern) }
    if caps[1] ~= nil or req.path:match(r.pattern) then
      if r.method == "*" or r.method == req.method or (r.method == "GET" and req.method == "HEAD") then
        for i, name in ipairs(r.names) do req.params[name] = caps[i] end
        return r.fn(req, res)
      end
      allowed = true
    end
  end
  if allowed then return 405, nil, "405 Method Not Allowed\n" end
  return 404, nil, "404 Not Found\n"
end

return M
