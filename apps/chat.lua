-- A line-based chat room across several moonlet nodes: a message typed on any node reaches every client
-- of every node through Redis pub/sub; the last messages are kept in a Redis list and shown on joining.
--
-- Run two nodes:  moonlet run apps/chat.lua --port 7010 --redis-port 6379
--                 moonlet run apps/chat.lua --port 7011 --redis-port 6379
-- Session:
--   S: WELCOME, your name?
--   C: ann
--   S: * ann joined (2 here before you)
--   C: hello
--   S: <ann> hello                    (and on every client of every node)
--   C: /quit
local net = require "moonlet.net"
local redis = require "moonlet.redis"
local log = require "moonlet.log"
local opts = require("moonlet.args").parse(arg, { port = 7010, host = "127.0.0.1", redis_host = "127.0.0.1",
  redis_port = 6379, room = "moonlet-chat", history = 20 })

local r = redis.new { host = opts.redis_host, port = opts.redis_port }
local HISTORY = opts.room .. ":history"
local clients = {} -- conn -> name, on this node

local function publish(text)
  r:pipeline { { "PUBLISH", opts.room, text }, { "RPUSH", HISTORY, text },
    { "LTRIM", HISTORY, -opts.history, -1 } }
end

-- One subscription per node: every message of the room goes to this node's clients.
local sub = assert(r:subscribe(opts.room))
spawn(function()
  while true do
    local msg, err = sub:get()
    if not msg then
      log.error("chat: lost the Redis subscription: " .. tostring(err))
      return
    end
    for conn in pairs(clients) do conn:write(msg.data, "\n") conn:flush() end
  end
end):detach()

local server = assert(net.listen { host = opts.host, port = opts.port, handler = function(conn)
  conn:settimeouts(nil, nil, false)
  conn:write("WELCOME, your name?\n")
  local name = conn:readline()
  if not name or not name:match("^[%w_%-]+$") then return conn:write("BYE names are letters and digits\n") end
  local past = r:call("LRANGE", HISTORY, 0, -1)
  if type(past) == "table" then
    for _, line in ipairs(past) do conn:write(line, "\n") end
  end
  local count = 0
  for _ in pairs(clients) do count = count + 1 end
  clients[conn] = name
  publish("* " .. name .. " joined (" .. count .. " here before you)")
  while true do
    local line = conn:readline()
    if not line or line == "/quit" then break end
    if line ~= "" then publish("<" .. name .. "> " .. line) end
  end
  clients[conn] = nil
  publish("* " .. name .. " left")
end })
log.info("chat on " .. server.host .. ":" .. server.port .. " (room " .. opts.room .. ")")
