-- A multi-step conversation, written as straight-line code: log in, prove who you are, then charge
-- accounts until you quit. A malformed message gets `ERR <reason>` and the server waits for the corrected
-- one on the same connection. Balances live in memory (apps/billing.lua keeps them in SQLite).
--
-- Run:   moonlet run apps/conversation.lua [--port 7001] [--host 127.0.0.1]
-- Session (C: client, S: server):
--   S: HELLO moonlet-conversation 1
--   C: LOGIN alice
--   S: CHALLENGE 5f3a9c01d2e4b687
--   C: PROOF 786b4e2d10c9a3f5          (the nonce reversed; three tries, then the server says goodbye)
--   S: WELCOME alice
--   C: CHARGE acct-1 25
--   S: RECEIPT 1 25
--   C: CHARGE acct-1 ten
--   S: ERR amount must be a positive integer
--   C: CHARGE acct-1 10
--   S: RECEIPT 2 35
--   C: QUIT
--   S: BYE
local net = require "moonlet.net"
local log = require "moonlet.log"
local dialog = require "dialog" -- apps/lib/dialog.lua
local opts = require("moonlet.args").parse(arg, { port = 7001, host = "127.0.0.1", timeout = 300 })
require("moonlet.workers").single("balances and receipt numbers are Lua tables in this process")

local balances = {}   -- account -> balance, shared by every connection
local receipts = 0    -- receipt numbers, increasing across connections

local function charge(conn, c)
  local balance = (balances[c.account] or 0) + c.amount
  balances[c.account] = balance
  receipts = receipts + 1
  conn:write("RECEIPT ", receipts, " ", balance, "\n")
end

local server = assert(net.listen {
  host = opts.host, port = opts.port,
  handler = function(conn)
    conn:settimeouts(nil, nil, opts.timeout) -- a silent client is dropped after this long
    if dialog.login(conn, "HELLO moonlet-conversation 1") then
      dialog.serve(conn, { CHARGE = { parse = dialog.parse_charge, run = charge } })
    end
  end,
})
log.info("conversation ready on " .. server.host .. ":" .. server.port)
