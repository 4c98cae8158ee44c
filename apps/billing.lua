-- The conversation of apps/conversation.lua with its accounts and receipts kept in SQLite: every CHARGE is
-- one atomic transaction (the balance and its receipt are written together, or not at all), and
-- `HISTORY <account>` runs a deliberately heavy query. Queries run in the database's own threads, so a slow
-- HISTORY never stops the other clients.
--
-- Run:   moonlet run [--db billing.db | --db postgresql://...] apps/billing.lua [--port 7002] [--heavy 200000]
-- Session (C: client, S: server):
--   S: HELLO moonlet-billing 1
--   C: LOGIN alice
--   S: CHALLENGE 5f3a9c01d2e4b687
--   C: PROOF 786b4e2d10c9a3f5
--   S: WELCOME alice
--   C: CHARGE acct-1 25
--   S: RECEIPT 1 25
--   C: HISTORY acct-1
--   S: HISTORY acct-1 1 receipts, total 25, score 83791
--   S: 1 25 alice
--   S: END
--   C: QUIT
--   S: BYE
local net = require "moonlet.net"
local log = require "moonlet.log"
local db = require "moonlet.db"
local dialog = require "dialog" -- apps/lib/dialog.lua
local opts = require("moonlet.args").parse(arg,
  { port = 7002, host = "127.0.0.1", timeout = 300, heavy = 200000 })

-- The same statements run on SQLite and PostgreSQL (`--db postgresql://...`); only the id column differs.
local id_column = db.dialect() == "postgresql" and "id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
  or "id INTEGER PRIMARY KEY"
assert(db.exec [[CREATE TABLE IF NOT EXISTS accounts (
  name TEXT PRIMARY KEY, balance INTEGER NOT NULL)]])
assert(db.exec([[CREATE TABLE IF NOT EXISTS receipts (
  ]] .. id_column .. [[, account TEXT NOT NULL, amount INTEGER NOT NULL, "user" TEXT NOT NULL)]]))

local function charge(user)
  return function(conn, c)
    local receipt, balance = db.transaction(function(tx)
      assert(tx:exec([[INSERT INTO accounts (name, balance) VALUES (?, ?)
        ON CONFLICT (name) DO UPDATE SET balance = accounts.balance + excluded.balance]], c.account, c.amount))
      local row = assert(tx:query("SELECT balance FROM accounts WHERE name = ?", c.account))[1]
      local r = assert(tx:exec([[INSERT INTO receipts (account, amount, "user") VALUES (?, ?, ?) RETURNING id]],
        c.account, c.amount, user))
      return r.last_id, row.balance
    end)
    if not receipt then
      log.warn("charge failed: " .. tostring(balance))
      return conn:write("ERR charge failed, nothing was charged\n")
    end
    conn:write("RECEIPT ", receipt, " ", balance, "\n")
  end
end

local function parse_account(rest)
  if rest:match("^%S+$") then return rest end
  return nil, "usage: HISTORY <account>"
end

-- The receipts of an account, with a deliberately heavy "score" (a recursive query of opts.heavy steps).
local function history(conn, account)
  local rows, err = db.query([[
    WITH RECURSIVE steps(i, h) AS (SELECT 1, 7 UNION ALL SELECT i + 1, (h * 31 + i) % 1000003
                                   FROM steps WHERE i < :heavy)
    SELECT r.id, r.amount, r."user",
           (SELECT count(*) FROM receipts WHERE account = :account) AS n,
           (SELECT coalesce(sum(amount), 0) FROM receipts WHERE account = :account) AS total,
           (SELECT h FROM steps ORDER BY i DESC LIMIT 1) AS score
    FROM (SELECT 1 AS one) AS one LEFT JOIN receipts r ON r.account = :account ORDER BY r.id]],
    { account = account, heavy = opts.heavy })
  if not rows then return conn:write("ERR history failed: ", err, "\n") end
  local first = rows[1]
  conn:write("HISTORY ", account, " ", first.n, " receipts, total ", first.total, ", score ", first.score, "\n")
  for _, r in ipairs(rows) do
    if r.id then conn:write(r.id, " ", r.amount, " ", r.user, "\n") end
  end
  conn:write("END\n")
end

local server = assert(net.listen {
  host = opts.host, port = opts.port,
  handler = function(conn)
    conn:settimeouts(nil, nil, opts.timeout)
    local user = dialog.login(conn, "HELLO moonlet-billing 1")
    if user then
      dialog.serve(conn, {
        CHARGE = { parse = dialog.parse_charge, run = charge(user) },
        HISTORY = { parse = parse_account, run = history },
      })
    end
  end,
})
log.info("billing ready on " .. server.host .. ":" .. server.port)
