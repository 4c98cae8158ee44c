-- A chat room in the browser: a small page and a WebSocket endpoint, over HTTPS when given a certificate.
-- Every message goes to everyone in the room through moonlet.group (one frame for all; a member whose
-- browser stops reading is closed, never waited for).
--
-- Run:   moonlet run apps/ws_chat.lua [--port 8090] [--cert fullchain.pem --key privkey.pem]
-- Try:   open http://127.0.0.1:8090/ in two tabs (https://... with a certificate), and type
--        python -m websockets ws://127.0.0.1:8090/ws        (the websockets library's own client)
local http = require "moonlet.http"
local group = require "moonlet.group"
local log = require "moonlet.log"
local opts = require("moonlet.args").parse(arg, { port = 8090, host = "127.0.0.1", cert = "", key = "" })

local PAGE = [[<!doctype html>
<html><head><meta charset="utf-8"><title>moonlet chat</title>
<style>body{font:15px system-ui;margin:2em auto;max-width:40em}
#log{height:20em;overflow:auto;border:1px solid #ccc;padding:.5em}</style>
</head><body>
<h1>moonlet chat</h1>
<div id="log"></div>
<form id="say"><input id="text" autocomplete="off" autofocus size="50"> <button>send</button></form>
<script>
const log = document.getElementById("log");
const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
ws.onmessage = (e) => { const p = document.createElement("div"); p.textContent = e.data; log.append(p);
  log.scrollTop = log.scrollHeight; };
ws.onclose = () => { const p = document.createElement("div"); p.textContent = "(disconnected)"; log.append(p); };
document.getElementById("say").onsubmit = (e) => { e.preventDefault(); const t = document.getElementById("text");
  if (t.value) ws.send(t.value); t.value = ""; };
</script></body></html>
]]

local MAX_MESSAGE = 4096 -- bytes a browser may send in one message
local room = group.new { outbox = 256 * 1024, slow = "close" }
local guests = 0

local api = http.router()

api:get("/", function()
  return 200, { ["content-type"] = "text/html; charset=utf-8" }, PAGE
end)

api:get("/ws", function(req)
  local ws, why, status = req:websocket { max_message = MAX_MESSAGE }
  if not ws then return status, nil, why .. "\n" end
  guests = guests + 1
  local name = "guest" .. guests
  room:add(ws)
  ws:send("welcome, " .. name .. " (" .. room:size() .. " here)")
  room:send(name .. " joined")
  while true do
    local data, kind = ws:receive()
    if not data or kind == "close" then break end
    if kind == "text" then room:send(name .. ": " .. data) end
  end
  room:remove(ws)
  room:send(name .. " left")
end)

local tls = opts.cert ~= "" and { cert = opts.cert, key = opts.key ~= "" and opts.key or nil } or nil
local server = assert(http.serve { host = opts.host, port = opts.port, handler = api, tls = tls })
log.info("ws_chat on " .. (tls and "https" or "http") .. "://" .. server.host .. ":" .. server.port .. "/")
