--- Dictionaries shared by every worker process of a server (`moonlet run --workers N`), like OpenResty's
--- ngx.shared.DICT. Each operation is atomic across workers; none yields.
--
--     local shared = require "moonlet.shared"
--     local hits = shared.dict("hits")
--     hits:incr("total", 1, 0)              -- atomic across workers; starts from 0
--     hits:set("motd", "hello", 60)         -- expires in 60 s
--     print(hits:get("motd"), hits:get("total"))
--
-- Values are strings, numbers and booleans. Backed by LMDB (runtime/services/shared.py).
-- @module moonlet.shared
local host = require "moonlet._host"
local call, OP = host.call, host.OP
local type, setmetatable = type, setmetatable

local M = {}

---@class moonlet.SharedDict
local Dict = {}
Dict.__index = Dict

-- (the stdlib's message, at the caller of the method: "bad argument #1 to 'set' (... expected, got ...)")
local function check_key(key, what)
  if type(key) ~= "string" or key == "" then host.argerror(1, what, "non-empty string", key, nil, 1) end
end

local function check_value(v, what)
  local tv = type(v)
  if tv ~= "string" and tv ~= "number" and tv ~= "boolean" then
    host.argerror(2, what, "string, number or boolean", v, nil, 1)
  end
end

--- The dictionary `name` (created on first use).
--- Example: `local counters = shared.dict("counters")`
---@param name string
---@return moonlet.SharedDict
function M.dict(name)
  if type(name) ~= "string" or name == "" then host.argerror(1, "dict", "name", name) end
  return setmetatable({ _name = name }, Dict)
end

--- The value of `key`, or nil (absent or expired).
--- Example: `local hits = counters:get("hits")`
function Dict:get(key)
  check_key(key, "get")
  return call(OP.SHARED_GET, self._name, key)
end

-- (called in tail position by set/add/replace, so its checks point at their caller)
local function store(self, key, value, ttl, mode)
  check_key(key, mode)
  check_value(value, mode)
  ttl = host.check_seconds(ttl, 3, mode, true)
  return call(OP.SHARED_SET, self._name, key, value, { mode = mode, ttl = ttl or 0 })
end

--- Set `key` to `value`, expiring after `ttl` seconds if given. Returns true.
--- Example: `sessions:set(token, user, 3600)`
function Dict:set(key, value, ttl) return store(self, key, value, ttl, "set") end

--- Set `key` only if it is absent: true, or false, "exists".
--- Example: `local ok, err = locks:add("report", workers.id(), 30)`
function Dict:add(key, value, ttl) return store(self, key, value, ttl, "add") end

--- Set `key` only if it is present: true, or false, "not found".
--- Example: `local ok, err = sessions:replace(token, user, 3600)`
function Dict:replace(key, value, ttl) return store(self, key, value, ttl, "replace") end

--- Add `by` (default 1) to the number at `key` atomically; an absent key starts from `init` (or the call
--- returns nil, "not found"). Returns the new value.
--- Example: `local n = counters:incr("hits", 1, 0)`
function Dict:incr(key, by, init)
  check_key(key, "incr")
  return call(OP.SHARED_INCR, self._name, key, by or 1, init)
end

--- Remove `key`.
--- Example: `sessions:delete(token)`
function Dict:delete(key)
  check_key(key, "delete")
  return call(OP.SHARED_DELETE, self._name, key)
end

--- The live keys (at most `max`, default 1024).
--- Example: `for _, key in ipairs(sessions:keys(100)) do ... end`
function Dict:keys(max)
  return call(OP.SHARED_KEYS, self._name, max or 1024)
end

return M
