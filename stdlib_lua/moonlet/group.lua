--- Sending to many connections at once (a chat room, a feed, a pub/sub fan-out) without letting one slow
--- member stall the others or grow memory: every member has a bounded outbox, and `group:send` never waits
--- for a member.
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
-- whose connection has closed leaves the group by itself at the next send. A big group's send yields
-- between slices of members (see Group:send), so no send holds the event loop for long.
--
-- A group may hold WebSockets instead (`room:add(ws)`, from `req:websocket()`): each message then goes as
-- one text frame, framed once for all of them, with the same outbox and the same slow rule.
-- @module moonlet.group
local log = require "moonlet.log"
local task = require "moonlet.task"
local sync = require "moonlet.sync"
local argerror = require("moonlet._host").argerror
local offer_many = require("moonlet._conn").offer_many
local type, pairs, select, concat, tostring, pcall, error = type, pairs, select, table.concat, tostring, pcall,
  error
local min, max, floor = math.min, math.max, math.floor

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
  return setmetatable({ outbox = outbox, slow = slow, members = {}, count = 0, dropped = 0, closed = 0,
    sockets = {}, framed = false, _turn_over = sync.event() }, Group)
end

-- A server-side WebSocket's connection (and the WebSocket), or the connection given
local function member(m)
  if type(m) == "table" and m._conn ~= nil and getmetatable(m) == require("moonlet.http.websocket")._WebSocket
    and not m._client then
    return m._conn, m
  end
  return m, nil
end

--- Add a connection, or a server's WebSocket (adding one twice is adding it once); a group holds one kind.
--- Example: `room:add(conn)`
---@param conn moonlet.Conn|moonlet.WebSocket
function Group:add(conn)
  local c, ws = member(conn)
  if type(c) ~= "table" or type(c._offer) ~= "function" then
    argerror(1, "add", "connection or WebSocket", conn)
  end
  if self.count > 0 and self.framed ~= (ws ~= nil) then
    argerror(1, "add", self.framed and "WebSocket (the group holds WebSockets)"
      or "connection (the group holds connections)", conn)
  end
  self.framed = ws ~= nil
  if not self.members[c] then
    self.members[c] = true
    self.sockets[c] = ws
    self.count = self.count + 1
    self._list = nil
  end
end

--- Remove a connection or WebSocket (nothing if it is not a member).
---@param conn moonlet.Conn|moonlet.WebSocket
function Group:remove(conn)
  conn = member(conn)
  if self.members[conn] then
    self.members[conn] = nil
    self.sockets[conn] = nil
    self.count = self.count - 1
    self._list = nil
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
  return self.members[(member(conn))] == true
end

--- The members, for a generic for: `for conn in room:each() do ... end`.
--- Example: `for member in room:each() do member:write("* server restarting\n") end`
---@return fun(): moonlet.Conn?
function Group:each()
  local members, sockets, key = self.members, self.sockets, nil
  return function()
    key = next(members, key)
    return key and sockets[key] or key
  end
end

-- A fan-out gives the loop a turn after each slice of members: at most SLICE members, and at most
-- SLICE_BYTES of message copied into sockets (so a 64 KiB message goes to 16 members a turn).
local SLICE, SLICE_BYTES = 256, 1024 * 1024

-- The members as an array, rebuilt after the membership changed (a fan-out in progress keeps its own).
local function list_of(self)
  local list = self._list
  if list == nil then
    list = {}
    for conn in pairs(self.members) do list[#list + 1] = conn end
    self._list = list
  end
  return list
end

-- Hand one slice (list[first..last], those still members) to conn.offer_many and settle the slow and the
-- closed. Returns the counts of this slice.
local function fan_out(self, list, first, last, data)
  local members, slice, n = self.members, {}, 0
  for i = first, last do
    local c = list[i]
    if members[c] then
      n = n + 1
      slice[n] = c
    end
  end
  local sent, closed_members, slow = offer_many(slice, 1, n, data, self.outbox)
  for k = 1, #closed_members do self:remove(closed_members[k]) end
  local dropped, closed = 0, 0
  for k = 1, #slow, 2 do
    local conn, waiting = slow[k], slow[k + 1]
    if self.slow == "close" then
      local host, port = conn:peer()
      log.info("group: closing a slow member " .. tostring(host) .. (port and ":" .. port or "")
        .. " (" .. waiting .. " bytes not taken by its peer; outbox " .. self.outbox .. ")")
      conn:_abort()
      self:remove(conn)
      closed = closed + 1
    else
      dropped = dropped + 1
    end
  end
  return sent, dropped, closed
end

-- One fan-out at a time, so that every member receives the group's messages in the same order. A task
-- that holds the turn and was cancelled mid-way gives it up by ending.
local function take_turn(self)
  local holder = self._turn
  while holder ~= nil and holder:status() == "running" do
    self._turn_over:wait(0.1)
    holder = self._turn
  end
  self._turn = task.current()
end

local function end_turn(self)
  self._turn = nil
  local over = self._turn_over
  over:set()
  over:clear()
end

--- Send the strings (or numbers) given, concatenated, to every member. Returns how many members it was
--- handed to, how many were skipped as slow (`slow = "drop"`), and how many were closed as slow
--- (`slow = "close"`). The message crosses to the host once per slice of members and is shared by every
--- member's unsent output, so it costs its size once however many members have not taken it yet. Never
--- waits for a member; a group of more than one slice (256 members, or 1 MiB of message × members) yields
--- between slices, so other connections are served meanwhile, and a send waits for the turn of a fan-out
--- in progress (every member receives the messages in the same order).
--- Example: `room:send("<", name, "> ", line, "\n")`
---@async
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
  if self.framed then -- (WebSockets: one text frame, the same bytes for all)
    if not utf8.len(data) then argerror(1, "send", "UTF-8 text", data) end
    data = require("moonlet.http.websocket")._text_frame(data)
  end
  local list = list_of(self)
  local per_turn = #data == 0 and SLICE or max(1, min(SLICE, floor(SLICE_BYTES / #data)))
  local sent, dropped, closed
  if #list <= per_turn and self._turn == nil then -- (one slice: at once)
    sent, dropped, closed = fan_out(self, list, 1, #list, data)
  else
    take_turn(self)
    list = list_of(self)
    sent, dropped, closed = 0, 0, 0
    local ok, err = pcall(function()
      for first = 1, #list, per_turn do
        if first > 1 then task.yield() end
        local s, d, c = fan_out(self, list, first, min(first + per_turn - 1, #list), data)
        sent, dropped, closed = sent + s, dropped + d, closed + c
      end
    end)
    end_turn(self)
    if not ok then error(err, 0) end
  end
  self.dropped, self.closed = self.dropped + dropped, self.closed + closed
  return sent, dropped, closed
end

return M
