--- The engine of `moonlet bench`: connections are coroutines, so a load script may speak any protocol and
--- any multi-step conversation.
--
-- A load script returns a table:
--
--     return {
--       target = "127.0.0.1:6380",                 -- or { host = , port = } or { path = } (Unix socket)
--       setup = function(conn) end,                -- optional, once per connection, not measured
--       session = function(conn)                   -- one measured transaction; called again and again
--         conn:write("PING\r\n")
--         local reply = conn:readline()
--         if reply ~= "+PONG" then return nil, "bad reply" end   -- an error of kind "bad reply"
--       end,
--     }
--
-- A session fails when it raises or returns nil/false and an error; the connection is then closed and
-- opened again. Latency is measured from the moment a transaction should start: with --rate that is its
-- scheduled time (open loop), so a slow server cannot hide its queueing (no coordinated omission).
-- @module moonlet.loadgen
local net = require "moonlet.net"
local host = require "moonlet._host"
local call, OP = host.call, host.OP
local sleep = require("moonlet.time").sleep
local spawn = require("moonlet.task").spawn
local type, error, pcall, tostring, floor, pairs = type, error, pcall, tostring, math.floor, pairs

local M = {}

local function target_of(spec)
  local t = spec.target
  if type(t) == "string" then
    local h, p = t:match("^(.+):(%d+)$")
    if not h then return t, nil end -- a Unix socket path
    return h, math.tointeger(tonumber(p))
  elseif type(t) == "table" then
    if t.path then return t.path, nil end
    return t.host or "127.0.0.1", t.port
  end
  error("the load script must return a table with a 'target' (\"host:port\", {host=, port=} or {path=})", 0)
end

local function kind_of(err)
  if err == nil then return "error" end
  local text = tostring(err)
  text = text:gsub("^[^:]*:%d+: ", "") -- drop the position of a raised error
  return text:sub(1, 80)
end

--- Run the load described by the script's table; reports progress and the result through REPORT lines.
--- opts: connections, duration (seconds or nil), requests (total or nil), rate (per second or nil), warmup.
--- Example: `moonlet bench bench/load/pong.lua (the engine of moonlet bench, not called by scripts)`
function M.run(spec, opts)
  if type(spec) ~= "table" or type(spec.session) ~= "function" then
    error("the load script must return a table with a 'session' function", 0)
  end
  local dest, port = target_of(spec)
  local now = function() return call(OP.MONOTONIC) end
  local connections = opts.connections
  local counts, errors = {}, {}
  local done, failed, started_count = 0, 0, 0
  local start = now()
  local deadline = opts.duration and start + opts.duration or math.huge
  local limit = opts.requests or math.huge
  local interval = opts.rate and connections / opts.rate or nil -- per connection, open loop
  local finished = false

  local function record(latency)
    local us = floor(latency * 1e6 + 0.5)
    counts[us] = (counts[us] or 0) + 1
    done = done + 1
  end

  local function fail(err)
    local kind = kind_of(err)
    errors[kind] = (errors[kind] or 0) + 1
    failed = failed + 1
  end

  local function open()
    local conn, err = net.connect(dest, port, { timeout = opts.timeout })
    if conn and spec.setup then
      local ok, serr = pcall(spec.setup, conn)
      if not ok then
        conn:close()
        return nil, serr
      end
    end
    return conn, err
  end

  local function worker(i)
    local conn, err = open()
    local k = 0
    while true do
      if started_count >= limit then return end
      local intended
      if interval then
        intended = start + (i - 1) * interval / connections + k * interval
        local wait = intended - now()
        if wait > 0 then sleep(wait) end
      end
      if now() >= deadline then return end
      started_count = started_count + 1
      k = k + 1
      if not conn then
        fail(err)
        sleep(0.1) -- do not spin on a refused connection
        conn, err = open()
      else
        local t0 = intended or now()
        local ok, r1, r2 = pcall(spec.session, conn)
        if ok and (r1 ~= nil and r1 ~= false or r2 == nil) then
          record(now() - t0)
        else
          fail(ok and r2 or r1)
          conn:close()
          conn, err = open()
        end
      end
    end
  end

  local progress = spawn(function()
    while not finished do
      sleep(0.5)
      call(OP.REPORT, "progress", { done = done, failed = failed, elapsed = now() - start })
    end
  end)
  local tasks = {}
  for i = 1, connections do tasks[i] = spawn(worker, i) end
  for i = 1, connections do
    local ok, err = tasks[i]:wait()
    if not ok then fail(err) end
  end
  finished = true
  progress:cancel()
  local latencies, tallies = {}, {} -- (two arrays: a table keyed by microseconds could look like a list)
  for us, n in pairs(counts) do
    latencies[#latencies + 1] = us
    tallies[#tallies + 1] = n
  end
  call(OP.REPORT, "result", { done = done, failed = failed, elapsed = now() - start, latencies = latencies,
    counts = tallies, errors = errors })
end

--- Entry point used by the host: run the script's main chunk for its table, then the load.
function M._main(script_main, opts, ...)
  local spec = script_main(...)
  M.run(spec, opts)
end

return M
