-- What a statement costs: db.exec one by one, inside one transaction, and db.exec_many (one trip).
--   moonlet run --workers 1 bench/lua/db_batch.lua
local db = require "moonlet.db"
local time = require "moonlet.time"
db.exec("DROP TABLE IF EXISTS batch_bench")
db.exec("CREATE TABLE batch_bench (id INTEGER PRIMARY KEY, body TEXT UNIQUE, n INTEGER)")
local INSERT = "INSERT INTO batch_bench (body, n) VALUES (?, ?)"
local N = 2000
for round = 1, 2 do
  local t0 = time.monotonic()
  for i = 1, N do assert(db.exec(INSERT, "a" .. round .. "-" .. i, i)) end
  local one = time.monotonic() - t0
  t0 = time.monotonic()
  db.transaction(function(tx)
    for i = 1, N do assert(tx:exec(INSERT, "t" .. round .. "-" .. i, i)) end
  end)
  local in_tx = time.monotonic() - t0
  local sets = {}
  for i = 1, N do sets[i] = { "b" .. round .. "-" .. i, i } end
  t0 = time.monotonic()
  assert(db.exec_many(INSERT, sets))
  local many = time.monotonic() - t0
  print(("%d rows: db.exec %.1f us each; in one transaction %.1f us each; db.exec_many %.1f us a set")
    :format(N, one / N * 1e6, in_tx / N * 1e6, many / N * 1e6))
end
