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
local opts = require("moonlet.args").parse(arg, { port = 7001, host = "127.0.0.1", timeout = 300 })

local MAX_TRIES = 3
local MAX_AMOUNT = 1000000000

local balances = {}   -- account -> balance, shared by every connection
local receipts = 0    -- receipt numbers, increasing across connections

local function nonce()
  local digits = {}
  for i = 1, 16 do digits[i] = string.format("%x", math.random(0, 15)) end
  return table.concat(digits)
end

-- Ask until the client sends a line `verb args...` that `parse` accepts.
-- parse(args) returns the parsed value, or nil and the reason to send back.
local function expect(conn, verb, parse)
  while true do
    local line, err = conn:readline()
    if not line then return nil, err end
    local word, rest = line:match("^(%S+)%s*(.-)%s*$")
    if word == "QUIT" then return nil, "quit" end
    if word ~= verb then
      conn:write("ERR expected ", verb, "\n")
    else
      local value, reason = parse(rest)
      if value ~= nil then return value end
      conn:write("ERR ", reason, "\n")
    end
  end
end

local function parse_name(rest)
  if rest:match("^[%w_%-%.]+$") and #rest <= 64 then return rest end
  return nil, "name must be 1-64 letters, digits, '_', '-' or '.'"
end

local function parse_charge(rest)
  local account, amount = rest:match("^(%S+)%s+(%S+)$")
  if not account then return nil, "usage: CHARGE <account> <amount>" end
  local n = math.tointeger(tonumber(amount))
  if not amount:match("^%d+$") or n == nil or n <= 0 or n > MAX_AMOUNT then
    return nil, "amount must be a positive integer"
  end
  return { account = account, amount = n }
end

local function converse(conn)
  conn:write("HELLO moonlet-conversation 1\n")

  local name = expect(conn, "LOGIN", parse_name)
  if not name then return conn:write("BYE\n") end

  local challenge = nonce()
  conn:write("CHALLENGE ", challenge, "\n")
  local wanted = challenge:reverse()
  for try = 1, MAX_TRIES do
    local proof = expect(conn, "PROOF", function(rest)
      if rest == "" then return nil, "usage: PROOF <answer>" end
      return rest
    end)
    if not proof then return conn:write("BYE\n") end
    if proof == wanted then break end
    if try == MAX_TRIES then
      log.info("login failed for " .. name)
      return conn:write("BYE too many failed proofs\n")
    end
    conn:write("ERR wrong proof (", MAX_TRIES - try, " tries left)\n")
  end
  conn:write("WELCOME ", name, "\n")

  while true do
    local charge = expect(conn, "CHARGE", parse_charge)
    if not charge then return conn:write("BYE\n") end
    local balance = (balances[charge.account] or 0) + charge.amount
    balances[charge.account] = balance
    receipts = receipts + 1
    conn:write("RECEIPT ", receipts, " ", balance, "\n")
  end
end

local server = assert(net.listen {
  host = opts.host, port = opts.port,
  handler = function(conn)
    conn:settimeouts(nil, nil, opts.timeout) -- a silent client is dropped after this long
    converse(conn)
  end,
})
log.info("conversation ready on " .. server.host .. ":" .. server.port)
