-- A small JSON CRUD API over HTTP, kept in SQLite (moonlet.db).
--
-- Run:   moonlet run [--db notes.db] apps/json_api.lua [--port 8081] [--host 127.0.0.1]
-- Try:   curl -s -X POST localhost:8081/notes -d '{"title":"milk"}'   ->  {"done":false,"id":1,"title":"milk"}
--        curl -s localhost:8081/notes                               ->  [{"done":false,"id":1,"title":"milk"}]
--        curl -s -X PUT localhost:8081/notes/1 -d '{"done":true}'   ->  {"done":true,"id":1,"title":"milk"}
--        curl -s -X DELETE localhost:8081/notes/1                   ->  (204, no body)
local http = require "moonlet.http"
local json = require "moonlet.json"
local db = require "moonlet.db"
local log = require "moonlet.log"
local opts = require("moonlet.args").parse(arg, { port = 8081, host = "127.0.0.1" })

assert(db.exec [[CREATE TABLE IF NOT EXISTS notes (
  id INTEGER PRIMARY KEY, title TEXT NOT NULL, done INTEGER NOT NULL DEFAULT 0)]])

local JSON = { ["content-type"] = "application/json" }

local function reply(status, value)
  return status, JSON, json.encode(value) .. "\n"
end

local function note(row)
  return { id = row.id, title = row.title, done = row.done == 1 }
end

local function find(id)
  local rows = assert(db.query("SELECT * FROM notes WHERE id = ?", math.tointeger(tonumber(id))))
  return rows[1]
end

-- the request body as a JSON object, or nil and a 400/413 reply
local function body_object(req)
  local text, err = req:body(64 * 1024)
  if not text then return nil, reply(err == "too large" and 413 or 400, { error = err }) end
  local v, jerr = json.decode(text)
  if type(v) ~= "table" or v[1] ~= nil then return nil, reply(400, { error = jerr or "a JSON object expected" }) end
  return v
end

local api = http.router()

api:get("/notes", function()
  local out = {}
  for i, row in ipairs(assert(db.query("SELECT * FROM notes ORDER BY id"))) do out[i] = note(row) end
  return reply(200, out)
end)

api:get("/notes/:id", function(req)
  local row = find(req.params.id)
  if not row then return reply(404, { error = "no such note" }) end
  return reply(200, note(row))
end)

api:post("/notes", function(req)
  local v, status, headers, body = body_object(req)
  if not v then return status, headers, body end
  if type(v.title) ~= "string" or v.title == "" then return reply(422, { error = "'title' must be a string" }) end
  local r = assert(db.exec("INSERT INTO notes (title, done) VALUES (?, ?)", v.title, v.done and 1 or 0))
  return reply(201, note(find(r.last_id)))
end)

api:put("/notes/:id", function(req)
  local v, status, headers, body = body_object(req)
  if not v then return status, headers, body end
  local row = find(req.params.id)
  if not row then return reply(404, { error = "no such note" }) end
  local title = v.title == nil and row.title or v.title
  if type(title) ~= "string" or title == "" then return reply(422, { error = "'title' must be a string" }) end
  local done = (v.done == nil and row.done == 1) or v.done == true
  assert(db.exec("UPDATE notes SET title = ?, done = ? WHERE id = ?", title, done and 1 or 0, row.id))
  return reply(200, note(find(row.id)))
end)

api:delete("/notes/:id", function(req)
  local r = assert(db.exec("DELETE FROM notes WHERE id = ?", math.tointeger(tonumber(req.params.id))))
  if r.changes == 0 then return reply(404, { error = "no such note" }) end
  return 204, nil, ""
end)

local server = assert(http.serve { host = opts.host, port = opts.port, handler = api })
log.info("json_api on http://" .. server.host .. ":" .. server.port .. "/notes")
