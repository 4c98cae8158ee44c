-- The dialog shared by apps/conversation.lua and apps/billing.lua: greeting, LOGIN, CHALLENGE/PROOF, and a
-- loop of requests. Written as straight-line code over one connection; a malformed message gets
-- `ERR <reason>` and the dialog waits for the corrected one.
local log = require "moonlet.log"

local M = {}

M.MAX_TRIES = 3
M.MAX_AMOUNT = 1000000000

local function nonce()
  local digits = {}
  for i = 1, 16 do digits[i] = string.format("%x", math.random(0, 15)) end
  return table.concat(digits)
end

-- The verb and the rest of a line, whitespace around the rest trimmed. Written with plain searches: a
-- pattern like "^(%S+)%s*(.-)%s*$" backtracks over every run of spaces (a 64 KB line of them took 21 s
-- inside one C call, where the stall budget cannot stop it).
local function split(line)
  local stop = line:find("%s")
  if stop == 1 or line == "" then return nil, "" end
  if not stop then return line, "" end
  local first = line:find("%S", stop)
  if not first then return line:sub(1, stop - 1), "" end
  local last = #line
  local b = line:byte(last)
  while b == 32 or (b >= 9 and b <= 13) do
    last = last - 1
    b = line:byte(last)
  end
  return line:sub(1, stop - 1), line:sub(first, last)
end
M.split = split

--- Ask until the client sends `VERB args...` for one of `verbs` ({VERB = parse}) that its parse accepts.
--- parse(rest) returns the parsed value, or nil and the reason to send back. Returns verb, value; or nil
--- and why the dialog ends: "quit", or the connection's error ("closed", "timeout", "line too long").
--- Check the verb, never the value, for the end: the reason is a string too.
function M.expect(conn, verbs)
  while true do
    local line, err = conn:readline()
    if not line then return nil, err end
    local word, rest = split(line)
    if word == "QUIT" then return nil, "quit" end
    local parse = verbs[word]
    if parse == nil then
      local names = {}
      for verb in pairs(verbs) do names[#names + 1] = verb end
      table.sort(names)
      conn:write("ERR expected ", table.concat(names, " or "), "\n")
    else
      local value, reason = parse(rest)
      if value ~= nil then return word, value end
      conn:write("ERR ", reason, "\n")
    end
  end
end

--- A user name: 1 to 64 ASCII letters, digits, '_', '-' or '.'.
function M.parse_name(rest)
  if #rest <= 64 and rest:match("^[A-Za-z0-9_.-]+$") then return rest end
  return nil, "name must be 1-64 letters, digits, '_', '-' or '.'"
end

function M.parse_charge(rest)
  local account, amount = rest:match("^(%S+)%s+(%S+)$")
  if not account then return nil, "usage: CHARGE <account> <amount>" end
  local n = math.tointeger(tonumber(amount))
  if not amount:match("^%d+$") or n == nil or n <= 0 or n > M.MAX_AMOUNT then
    return nil, "amount must be a positive integer"
  end
  return { account = account, amount = n }
end

local function parse_proof(rest)
  if rest == "" then return nil, "usage: PROOF <answer>" end
  return rest
end

-- The end of a dialog: a line past the limit has lost its unread bytes, so it is answered, then BYE.
local function goodbye(conn, why)
  if why == "line too long" then conn:write("ERR line too long\n") end
  conn:write("BYE\n")
end

--- Greeting, LOGIN, CHALLENGE and up to three PROOFs. Returns the user's name, or nil after saying BYE.
function M.login(conn, greeting)
  conn:write(greeting, "\n")
  local verb, name = M.expect(conn, { LOGIN = M.parse_name })
  if not verb then return goodbye(conn, name) end -- (name is the reason: "quit", "closed", ...)
  local challenge = nonce()
  conn:write("CHALLENGE ", challenge, "\n")
  local wanted = challenge:reverse()
  for try = 1, M.MAX_TRIES do
    local got, proof = M.expect(conn, { PROOF = parse_proof })
    if not got then return goodbye(conn, proof) end
    if proof == wanted then break end
    if try == M.MAX_TRIES then
      log.info("login failed for " .. name)
      conn:write("BYE too many failed proofs\n")
      return nil
    end
    conn:write("ERR wrong proof (", M.MAX_TRIES - try, " tries left)\n")
  end
  conn:write("WELCOME ", name, "\n")
  return name
end

--- Serve requests until QUIT or the connection ends: handlers is {VERB = {parse = f, run = g}} and
--- run(conn, value) writes the answer.
function M.serve(conn, handlers)
  local verbs = {}
  for verb, h in pairs(handlers) do verbs[verb] = h.parse end
  while true do
    local verb, value = M.expect(conn, verbs)
    if not verb then return goodbye(conn, value) end
    handlers[verb].run(conn, value)
  end
end

return M
