--- SQL databases: the embedded SQLite file, or PostgreSQL; every statement suspends only its own task.
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
--     local pg = assert(db.open("postgresql://app@127.0.0.1/app", { pool_size = 20 }))
--     local rows = pg:query("SELECT now() AS t")                           -- the same calls on a handle
--
-- The module's own functions use the app's default database: `--db PATH|URL` (default: `APP.db` beside
-- the app). `db.open(url)` opens another: `sqlite:PATH` or `postgresql://user:password@host:port/name`.
-- Parameters: positional `?` (the values after the SQL) or named `:name` (one table), on either engine
-- (PostgreSQL's own `$1` works too). A string that is valid UTF-8 is bound as text, any other as bytes;
-- `db.blob(s)` forces bytes. NULL is nil (absent from the row table).
-- Failures return nil, err: "timeout" (the statement was stopped after the per-query timeout, 30 s by
-- default), or "database error: ..." (e.g. "database is locked" after SQLite's busy timeout, a constraint
-- violated, or "unavailable (...)" while a PostgreSQL server cannot be reached: connecting is retried
-- with backoff and the pool recovers by itself once the server is back).
-- @module moonlet.db
local host = require "moonlet._host"
local finalized = require("moonlet._compat").finalized -- (setmetatable; on LuaJIT __gc needs a userdata)
local request, call, OP, argerror = host.request, host.call, host.OP, host.argerror
local type, error, select, pack, unpack, pcall, tostring = type, error, select, table.pack, table.unpack, pcall,
  tostring

local DB_QUERY, DB_EXEC, DB_EXEC_MANY, DB_BEGIN, DB_END = OP.DB_QUERY, OP.DB_EXEC, OP.DB_EXEC_MANY,
  OP.DB_BEGIN, OP.DB_END

local M = {}

local BLOB = "__moonlet_blob"

--- Mark `s` to be bound as a BLOB (bytea) even if it is valid UTF-8.
--- Example: `db.exec("INSERT INTO files (name, data) VALUES (?, ?)", name, db.blob(bytes))`
---@param s string
function M.blob(s)
  if type(s) ~= "string" then argerror(1, "blob", "string", s) end
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
  if type(sql) ~= "string" then argerror(1, what, "SQL string", sql, nil, 1) end
end

-- db.rows: a generic for's iterator over a query read in batches, and its closing value (Lua 5.4 closes it
-- when the loop ends, by its end, a break, a return or an error), which releases the query.
local BATCH = 256
local Rows = {}
Rows.__index = Rows
-- Each table below holds a host number (runtime/kernel/handles.py) and gives it back when collected.
local function release(self)
  local held = rawget(self, "_held")
  if held ~= nil then host.release(held) end
end
Rows.__gc = release
Rows.__close = function(self)
  local py = self._py
  if py then
    self._py = nil
    call(OP.DB_ROWS_CLOSE, py)
  end
end

local function rows(target, sql, ...)
  local py, err = request(OP.DB_ROWS, target, sql, params(...))
  if not py then error("db.rows: " .. tostring(err), 3) end
  local state = finalized({ _py = py, _held = py }, Rows)
  local batch, i, n = nil, 0, 0
  local function next_row()
    if i < n then
      i = i + 1
      return batch[i]
    end
    local handle = state._py
    if handle == nil then return nil end
    local got, e = request(OP.DB_FETCH, handle, BATCH)
    if not got then
      Rows.__close(state)
      error("db.rows: " .. tostring(e), 2)
    end
    if #got < BATCH then state._py = nil end -- (the host closed it at its end)
    if #got == 0 then return nil end
    batch, i, n = got, 1, #got
    return got[1]
  end
  return next_row, nil, nil, state
end

-- db.exec_many and its methods (called in tail position, so the checks point at their caller)
local function exec_many(target, sql, sets)
  check_sql(sql, "exec_many")
  if type(sets) ~= "table" then
    argerror(2, "exec_many", "table of parameter sets", sets)
  end
  return request(DB_EXEC_MANY, target, sql, sets)
end

---@class moonlet.Tx
local Tx = {}
Tx.__index = Tx
Tx.__gc = release

--- Like db.query, inside the transaction.
--- Example: `local rows = tx:query("SELECT balance FROM accounts WHERE name = ?", name)`
---@async
function Tx:query(sql, ...)
  check_sql(sql, "query")
  return request(DB_QUERY, self._py, sql, params(...))
end

--- Like db.exec, inside the transaction.
--- Example: `tx:exec("UPDATE accounts SET balance = balance - ? WHERE name = ?", amount, name)`
---@async
function Tx:exec(sql, ...)
  check_sql(sql, "exec")
  return request(DB_EXEC, self._py, sql, params(...))
end

--- Like db.exec_many, inside the transaction (which then holds the changes).
--- Example: `tx:exec_many("INSERT INTO tags (id, tag) VALUES (?, ?)", { { 1, "a" }, { 1, "b" } })`
---@async
---@param sql string
---@param sets table[]
---@return {changes: integer, last_id: integer?}? result
---@return string? err
function Tx:exec_many(sql, sets)
  return exec_many(self._py, sql, sets)
end

--- Like db.rows, inside the transaction.
--- Example: `for row in tx:rows("SELECT id FROM jobs WHERE done = 0") do ... end`
---@async
---@param sql string
---@return fun(): table?
function Tx:rows(sql, ...)
  check_sql(sql, "rows")
  return rows(self._py, sql, ...)
end

local function transaction(target, fn, ...)
  local py, err = request(DB_BEGIN, target)
  if not py then return nil, err end
  local tx = finalized({ _py = py, _held = py }, Tx)
  local r = pack(pcall(fn, tx, ...))
  if not r[1] then
    request(DB_END, tx._held, false) -- (tx, not py: the table must outlive the transaction)
    return nil, r[2]
  end
  local ok, cerr = request(DB_END, tx._held, true)
  if not ok then return nil, cerr end
  if r.n == 1 then return true end
  return unpack(r, 2, r.n)
end

---@class moonlet.Database
---@field dialect "sqlite"|"postgresql" which engine serves it
local Database = {}
Database.__index = Database
Database.__gc = release

--- Run a query on this database; returns an array of rows (tables keyed by column name), or nil, err.
--- Example: `local rows, err = reports:query("SELECT * FROM sales WHERE day = ?", day)`
---@async
---@param sql string
---@return table[]? rows
---@return string? err
function Database:query(sql, ...)
  check_sql(sql, "query")
  return request(DB_QUERY, self._py, sql, params(...))
end

--- Run a statement that changes data; returns {changes = n, last_id = id}, or nil, err. last_id is
--- SQLite's rowid, or on PostgreSQL the first column of the last row of a `RETURNING` clause.
--- Example: `local r = reports:exec("DELETE FROM sales WHERE day < ?", cutoff)`
---@async
---@param sql string
---@return {changes: integer, last_id: integer?}? result
---@return string? err
function Database:exec(sql, ...)
  check_sql(sql, "exec")
  return request(DB_EXEC, self._py, sql, params(...))
end

--- Like db.rows, on this database.
--- Example: `for row in reports:rows("SELECT * FROM sales") do conn:write(row.id, "\n") end`
---@async
---@param sql string
---@return fun(): table?
function Database:rows(sql, ...)
  check_sql(sql, "rows")
  return rows(self._py, sql, ...)
end

--- Like db.exec_many, on this database.
--- Example: `reports:exec_many("INSERT INTO sales (day, total) VALUES (?, ?)", batch)`
---@async
---@param sql string
---@param sets table[]
---@return {changes: integer, last_id: integer?}? result
---@return string? err
function Database:exec_many(sql, sets)
  return exec_many(self._py, sql, sets)
end

--- Run fn(tx, ...) in a transaction on this database: committed when fn returns, rolled back if it
--- raises. Returns what fn returns (true if nothing), or nil, err (the error fn raised, or the commit's).
--- Example: `local ok, err = reports:transaction(function(tx) tx:exec("DELETE FROM sales") end)`
---@async
---@param fn async fun(tx: moonlet.Tx, ...): ...
function Database:transaction(fn, ...)
  if type(fn) ~= "function" then argerror(1, "transaction", "function", fn) end
  return transaction(self._py, fn, ...)
end

function Database:__tostring() return "moonlet.Database (" .. self.dialect .. ")" end

local OPEN_OPTIONS = { timeout = true, pool_size = true, connect_timeout = true, busy_timeout = true,
  max_wal = true }

--- A handle on the database at `url` (`sqlite:PATH` or `postgresql://...`), with query/exec/transaction
--- and its `dialect`. Connecting happens at the first statement, so this never waits; the same URL and
--- options give handles on the same connections. Options: `timeout` (seconds per statement),
--- `pool_size` (PostgreSQL connections, 10), `connect_timeout` (5), `busy_timeout` (SQLite, 5),
--- `max_wal` (SQLite: bytes of write-ahead log that open `rows` loops may hold, 64 MiB; past it they end
--- with "snapshot too old").
---@param url string
---@param opts? {timeout: number?, pool_size: integer?, connect_timeout: number?, busy_timeout: number?,
---  max_wal: integer?}
---@return moonlet.Database? db
---@return string? err
function M.open(url, opts)
  if type(url) ~= "string" then argerror(1, "open", "URL string", url) end
  if opts ~= nil and type(opts) ~= "table" then argerror(2, "open", "table", opts) end
  if opts ~= nil then host.check_options(opts, 2, "open", OPEN_OPTIONS) end
  local py, dialect = call(OP.DB_OPEN, url, opts)
  if not py then return nil, dialect end
  return finalized({ _py = py, _held = py, dialect = tostring(dialect) }, Database)
end

local default
--- The engine of the default database: "sqlite" or "postgresql" (to choose dialect-specific DDL).
--- Example: `local now = db.dialect() == "postgresql" and "now()" or "CURRENT_TIMESTAMP"`
---@return "sqlite"|"postgresql"
function M.dialect()
  if not default then
    local py, dialect = call(OP.DB_OPEN)
    default = finalized({ _py = py, _held = py, dialect = tostring(dialect) }, Database)
  end
  return default.dialect
end

--- Run a query on the default database; returns an array of rows, each a table keyed by column name;
--- or nil, err.
---@async
---@param sql string
---@return table[]? rows
---@return string? err
function M.query(sql, ...)
  check_sql(sql, "query")
  return request(DB_QUERY, nil, sql, params(...))
end

--- Run a statement that changes data on the default database; returns {changes = n, last_id = id};
--- or nil, err.
---@async
---@param sql string
---@return {changes: integer, last_id: integer?}? result
---@return string? err
function M.exec(sql, ...)
  check_sql(sql, "exec")
  return request(DB_EXEC, nil, sql, params(...))
end

--- The rows of a query, for a generic for, fetched from the database in batches as the loop goes: memory
--- holds one batch (256 rows), whatever the result's size. Leaving the loop early (break, return, an
--- error) releases the query, as does the end of the task. Errors raise (a for loop has no place for err):
--- `db.rows: database error: ...`.
---
---     for row in db.rows("SELECT id, name FROM users WHERE active = ?", true) do conn:write(row.name, "\n") end
---@async
---@param sql string
---@return fun(): table?
function M.rows(sql, ...)
  check_sql(sql, "rows")
  return rows(nil, sql, ...)
end

--- Run one statement once per parameter set (`sets`: an array of arrays for `?`, or of tables for `:name`)
--- in one trip to the database, through one prepared statement, all or none: in a transaction of its own
--- (or the caller's `tx`). Returns {changes = n, last_id = id} (SQLite: rows changed in all and the last
--- rowid inserted; PostgreSQL: the number of sets, no id), or nil, err (nothing changed then).
---
---     db.exec_many("INSERT INTO notes (body) VALUES (?)", { { "a" }, { "b" }, { "c" } })
---@async
---@param sql string
---@param sets table[]
---@return {changes: integer, last_id: integer?}? result
---@return string? err
function M.exec_many(sql, sets)
  return exec_many(nil, sql, sets)
end

--- Run fn(tx, ...) in a transaction on the default database (on SQLite it holds the writer): committed
--- when fn returns, rolled back if it raises. Returns what fn returns (true if nothing), or nil, err.
--- Example: `local ok, err = db.transaction(function(tx) tx:exec("UPDATE t SET n = n + 1") end)`
---@async
---@param fn async fun(tx: moonlet.Tx, ...): ...
function M.transaction(fn, ...)
  if type(fn) ~= "function" then argerror(1, "transaction", "function", fn) end
  return transaction(nil, fn, ...)
end

return M
