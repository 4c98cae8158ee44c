-- A line-based chat room across several moonlet nodes: a message typed on any node reaches every client
-- of every node through Redis pub/sub. The history lives in the SQL database that all nodes share
-- (PostgreSQL: `--db postgresql://...`); a joining client is shown the last messages of the room.
--
-- Run two nodes:  moonlet run --db postgresql://chat@127.0.0.1/chat apps/chat.lua --port 7010
--                 moonlet run --db postgresql://chat@127.0.0.1/chat apps/chat.lua --port 7011
-- (options: --redis-host, --redis-port 6379, --room moonlet-chat, --history 20)
-- Session:
--   S: WELCOME, your name?
--   C: ann
--   S: * ann joined (2 here before you)
--   C: hello
--   S: <ann> hello                    (and on every client of every node)
--   C: /quit
local net = require "moonlet.net"
local group = require "moonlet.group"
local redis = require "moonlet.redis"
local log = require "moonlet.log"
local db = require "moonlet.db"
local opts = require("moonlet.args").parse(arg, { port = 7010, host = "127.0.0.1", redis_host = "127.0.0.1",
  redis_port = 6379, room = "moonlet-chat", history = 20 })

local r = redis.new { host = opts.redis_host, port = opts.redis_port }
-- This node's clients: each message goes to all of them without waiting; one that stops reading is
-- disconnected once 256 KiB wait for it, instead of stalling the room (and the Redis subscription).
local room = group.new { outbox = 256 * 1024, slow = "close" }

assert(db.exec([[CREATE TABLE IF NOT EXISTS chat_messages (]]
  .. (db.dialect() == "postgresql" and "id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
    or "id INTEGER PRIMARY KEY")
  .. [[, room TEXT NOT NULL, body TEXT NOT NULL)]]))

-- Kept first, then published: a client that joins in between sees it in the history rather than not at all.
local function publish(text)
  local ok, err = db.exec("INSERT INTO chat_messages (room, body) VALUES (?, ?)", opts.room, text)
  if not ok then log.warn("chat: history not kept: " .. err) end
  r:call("PUBLISH", opts.room, text)
end

local function history()
  return db.query([[SELECT body FROM (SELECT id, body FROM chat_messages WHERE room = :room
    ORDER BY id DESC LIMIT :n) AS recent ORDER BY id]], { room = opts.room, n = opts.history })
end

-- One subscription per node: every message of the room goes to this node's clients. It ends with a drain
-- (SIGTERM, a reload), so that a node with no client left stops at once rather than at the drain timeout.
local sub = assert(r:subscribe(opts.room))
local stopping = false
require("moonlet.workers").ondrain(function()
  stopping = true
  sub:close()
end)
spawn(function()
  while true do
    local msg, err = sub:get()
    if not msg then
      if not stopping then log.error("chat: lost the Redis subscription: " .. tostring(err)) end
      return
    end
    room:send(msg.data, "\n")
  end
end):detach()

local server = assert(net.listen { host = opts.host, port = opts.port, handler = function(conn)
  conn:settimeouts(nil, nil, false)
  conn:write("WELCOME, your name?\n")
  local name = conn:readline()
  if not name or not name:match("^[%w_%-]+$") then return conn:write("BYE names are letters and digits\n") end
  for _, row in ipairs(history() or {}) do conn:write(row.body, "\n") end
  local count = room:size()
  room:add(conn)
  publish("* " .. name .. " joined (" .. count .. " here before you)")
  while true do
    local line = conn:readline()
    if not line or line == "/quit" then break end
    if line ~= "" then publish("<" .. name .. "> " .. line) end
  end
  room:remove(conn)
  publish("* " .. name .. " left")
end })
log.info("chat on " .. server.host .. ":" .. server.port .. " (room " .. opts.room .. ")")
