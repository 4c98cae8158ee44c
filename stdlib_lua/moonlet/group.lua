--- Sending to many connections at once (a chat room, a feed, a pub/sub fan-out) without letting one slow
--- member stall the others or grow memory: every member has a bounded outbox, and `group:send` never waits.
--
--     local group = require "moonlet.group"
--     local room = group.new { outbox = 256 * 1024, slow = "close" }
--     net.listen { port = 7010, handler = function(conn)
--       room:add(conn)
--       while true do
--         local line = conn:readline()
--         if not line then break end
--         room:send(line, "\n")          -- to every member, this one included; returns at once
--       end
--       room:remove(conn)
--     end }
--
-- A member whose unsent output would pass `outbox` bytes with the next message is *slow* (unsent: what the
-- operating system has not taken yet; its socket buffer, often a few MiB, fills first). With
-- `slow = "close"` (the default) its connection is closed at once (what it had not taken is dropped) with
-- one log line, and its handler's next read returns nil, "closed"; with `slow = "drop"` the message is not
-- sent to it (the others get it) and it stays a member, receiving again once it has caught up. A member
-- whose connection has closed leaves the group by itself at the next send.
-- @module moonlet.group
local log = require "moonlet.log"
local argerror = require("moonlet._host").argerror
local type, pairs, select, concat, tostring = type, pairs, select, table.concat, tostring

local M = {}

---@class moonlet.Group
---@field outbox integer bytes a member may have waiting to be sent
---@field slow "close"|"drop" what happens to a slow member
local Group = {}
Group.__index = Group

--- A new group. `opts.outbox`: bytes each member may have waiting (default 256 KiB); `opts.slow`: `"close"`
--- (default) or `"drop"`.
---@param opts? {outbox?: integer, slow?: "close"|"drop"}
---@return moonlet.Group
function M.new(opts)
  if opts ~= nil and type(opts) ~= "table" then
    argerror(1, "new", "table or nil", opts)
  end
  opts = opts or {}
  local outbox, slow = opts.outbox or 256 * 1024, opts.slow or "close"
  if math.type(outbox) ~= "integer" or outbox < 1 then
    argerror(1, "new", "positive integer", outbox, "outbox")
  end
  if slow ~= "close" and slow ~= "drop" then
    argerror(1, "new", '"close" or "drop"', slow, "slow")
  end
  return setmetatable({ outbox = outbox, slow = slow, members = {}, count = 0, dropped = 0, closed = 0 }, Group)
end

--- Add a connection (adding one twice is adding it once).
--- Example: `room:add(conn)`
---@param conn moonlet.Conn
function Group:add(conn)
  if type(conn) ~= "table" or type(conn._offer) ~= "function" then
    argerror(1, "add", "connection", conn)
  end
  if not self.members[conn] then
    self.members[conn] = true
    self.count = self.count + 1
  end
end

--- Remove a connection (nothing if it is not a member).
---@param conn moonlet.Conn
function Group:remove(conn)
  if self.members[conn] then
    self.members[conn] = nil
    self.count = self.count - 1
  end
end

--- How many members.
---@return integer
function Group:size()
  return self.count
end

--- Whether `conn` is a member.
--- Example: `if not room:has(conn) then room:add(conn) end`
---@param conn moonlet.Conn
---@return boolean
function Group:has(conn)
  return self.members[conn] == true
end

--- The members, for a generic for: `for conn in room:each() do ... end`.
--- Example: `for member in room:each() do member:write("* server restarting\n") end`
---@return fun(): moonlet.Conn?
function Group:each()
  local members, key = self.members, nil
  return function()
    key = next(members, key)
    return key
  end
end

--- Send the strings (or numbers) given, concatenated, to every member. Never waits. Returns how many
--- members it was handed to, how many were skipped as slow (`slow = "drop"`), and how many were closed as
--- slow (`slow = "close"`).
---@param ... string|number
---@return integer sent
---@return integer dropped
---@return integer closed
function Group:send(...)
  local data = select("#", ...) == 1 and ... or concat({ ... })
  if type(data) == "number" then data = tostring(data) end
  if type(data) ~= "string" then
    argerror(1, "send", "string or number", data)
  end
  local limit, close_slow = self.outbox, self.slow == "close"
  local sent, dropped, closed = 0, 0, 0
  for conn in pairs(self.members) do
    local ok, waiting = conn:_offer(data, limit)
    if ok then
      sent = sent + 1
    elseif ok == nil then -- its connection has closed
      self:remove(conn)
    elseif close_slow then
      local host, port = conn:peer()
      log.info("group: closing a slow member " .. tostring(host) .. (port and ":" .. port or "")
        .. " (" .. waiting .. " bytes not taken by its peer; outbox " .. limit .. ")")
      conn:_abort()
      self:remove(conn)
      closed = closed + 1
    else
      dropped = dropped + 1
    end
  end
  self.dropped, self.closed = self.dropped + dropped, self.closed + closed
  return sent, dropped, closed
end

return M
