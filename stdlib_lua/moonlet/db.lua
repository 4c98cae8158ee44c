--- The embedded SQL database (SQLite): queries run in their own threads, never stopping the server.
--
--     local db = require "moonlet.db"
--     db.exec("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT)")
--     local r = db.exec("INSERT INTO notes (body) VALUES (?)", "hello")    -- {changes = 1, last_id = 1}
--     local rows = db.query("SELECT * FROM notes WHERE id = :id", { id = r.last_id })
--     print(rows[1].body)                                                  -- hello
--     db.transaction(function(tx)
--       assert(tx:exec("UPDATE accounts SET balance = balance - ? WHERE name = ?", 5, "ann"))
--       assert(tx:exec("INSERT INTO receipts (account, amount) VALUES (?, ?)", "ann", 5))
--     end)                                      -- committed; any error inside rolls it back
--
-- Parameters: positional `?` (the values after the SQL) or named `:name` (one table). A string that is valid
-- UTF-8 is bound as TEXT, any other as a BLOB; `db.blob(s)` forces a BLOB. Results keep SQLite's types:
-- integers and reals are numbers, text and blobs strings, NULL is nil (absent from the row table).
-- Failures return nil, err: "timeout" (the query was interrupted after the per-query timeout, 30 s by
-- default), or "database error: ..." (e.g. "database is locked" after the busy timeout, 5 s).
-- @module moonlet.db
local host = require "moonlet._host"
local request, OP = host.request, host.OP
local type, error, select, setmetatable, pack, unpack, pcall = type, error, select, setmetatable, table.pack,
  table.unpack, pcall

local DB_QUERY, DB_EXEC = OP.DB_QUERY, OP.DB_EXEC

local M = {}

local BLOB = "__moonlet_blob"

--- Mark `s` to be bound as a BLOB even if it is valid UTF-8.
---@param s string
function M.blob(s)
  if type(s) ~= "string" then error("bad argument #1 to 'blob' (string expected)", 2) end
  return { [BLOB] = s }
end

-- Positional values travel as {[1] = ..., ["#"] = count} ("#" cannot be a parameter name, unlike "n").
local function params(...)
  local first = ...
  if select("#", ...) == 1 and type(first) == "table" and first[BLOB] == nil then return first end
  local t = { ... }
  t["#"] = select("#", ...)
  return t
end

local function check_sql(sql, what)
  if type(sql) ~= "string" then error("bad argument #1 to '" .. what .. "' (SQL string expected)", 3) end
end

--- Run a query; returns an array of rows, each a table keyed by column name; or nil, err.
---@async
---@param sql string
---@return table[]? rows
---@return string? err
function M.query(sql, ...)
  check_sql(sql, "query")
  return request(DB_QUERY, nil, sql, params(...))
end

--- Run a statement that changes data; returns {changes = n, last_id = rowid}; or nil, err.
---@async
---@param sql string
---@return {changes: integer, last_id: integer?}? result
---@return string? err
function M.exec(sql, ...)
  check_sql(sql, "exec")
  return request(DB_EXEC, nil, sql, params(...))
end

---@class moonlet.Tx
local Tx = {}
Tx.__index = Tx

--- Like db.query, inside the transaction.
---@async
function Tx:query(sql, ...)
  check_sql(sql, "query")
  return request(DB_QUERY, self._py, sql, params(...))
end

--- Like db.exec, inside the transaction.
---@async
function Tx:exec(sql, ...)
  check_sql(sql, "exec")
  return request(DB_EXEC, self._py, sql, params(...))
end

--- Run fn(tx, ...) in a transaction holding the writer: committed when fn returns, rolled back if it
--- raises. Returns what fn returns (true if nothing), or nil, err (the error fn raised, or the commit's).
---@async
---@param fn async fun(tx: moonlet.Tx, ...): ...
function M.transaction(fn, ...)
  if type(fn) ~= "function" then error("bad argument #1 to 'transaction' (function expected)", 2) end
  local py, err = request(OP.DB_BEGIN)
  if not py then return nil, err end
  local r = pack(pcall(fn, setmetatable({ _py = py }, Tx), ...))
  if not r[1] then
    request(OP.DB_END, py, false)
    return nil, r[2]
  end
  local ok, cerr = request(OP.DB_END, py, true)
  if not ok then return nil, cerr end
  if r.n == 1 then return true end
  return unpack(r, 2, r.n)
end

return M
