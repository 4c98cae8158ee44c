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
local type, error, setmetatable, tostring = type, error, setmetatable, tostring

local M = {}

---@class moonlet.SharedDict
local Dict = {}
Dict.__index = Dict

local function check_key(key)
  if type(key) ~= "string" or key == "" then error("bad key (non-empty string expected)", 3) end
end

local function check_value(v)
  local tv = type(v)
  if tv ~= "string" and tv ~= "number" and tv ~= "boolean" then
    error("bad value (string, number or boolean expected, got " .. tv .. ")", 3)
  end
end

--- The dictionary `name` (created on first use).
---@param name string
---@return moonlet.SharedDict
function M.dict(name)
  if type(name) ~= "string" or name == "" then error("bad argument #1 to 'dict' (name expected)", 2) end
  return setmetatable({ _name = name }, Dict)
end

--- The value of `key`, or nil (absent or expired).
function Dict:get(key)
  check_key(key)
  return call(OP.SHARED_GET, self._name, key)
end

local function store(self, key, value, ttl, mode)
  check_key(key)
  check_value(value)
  if ttl ~= nil and (type(ttl) ~= "number" or ttl < 0) then error("bad ttl (seconds >= 0 expected)", 3) end
  return call(OP.SHARED_SET, self._name, key, value, mode .. ":" .. tostring(ttl or 0))
end

--- Set `key` to `value`, expiring after `ttl` seconds if given. Returns true.
function Dict:set(key, value, ttl) return store(self, key, value, ttl, "set") end

--- Set `key` only if it is absent: true, or false, "exists".
function Dict:add(key, value, ttl) return store(self, key, value, ttl, "add") end

--- Set `key` only if it is present: true, or false, "not found".
function Dict:replace(key, value, ttl) return store(self, key, value, ttl, "replace") end

--- Add `by` (default 1) to the number at `key` atomically; an absent key starts from `init` (or the call
--- returns nil, "not found"). Returns the new value.
function Dict:incr(key, by, init)
  check_key(key)
  return call(OP.SHARED_INCR, self._name, key, by or 1, init)
end

--- Remove `key`.
function Dict:delete(key)
  check_key(key)
  return call(OP.SHARED_DELETE, self._name, key)
end

--- The live keys (at most `max`, default 1024).
function Dict:keys(max)
  return call(OP.SHARED_KEYS, self._name, max or 1024)
end

return M
