--- Metrics in the Prometheus text format: counters, gauges and histograms with labels. An update is a
--- table operation in this worker; the host adds them into a `moonlet.shared` dictionary once a second
--- and before each exposition (runtime/services/metrics.py, with the runtime's own figures), so every
--- worker adds to the same series and any worker's `/metrics` answers for all of them.
--
--     local metrics = require "moonlet.metrics"
--     local requests = metrics.counter("app_requests_total", "Requests served", { "route", "status" })
--     local latency = metrics.histogram("app_request_seconds", "Time to answer", { "route" })
--     requests:inc(1, "/users", 200)
--     latency:observe(0.012, "/users")
--     api:get("/metrics", metrics.handler)         -- Prometheus scrapes this
--
-- Gauges are per worker (each has a `worker` label: a sum across workers is the scraper's to make, as the
-- value of a gauge is a process's). The series of a metric are bounded (`MAX_SERIES`): a label value made
-- per request (a user id) would otherwise grow them for good; past the bound an update is dropped and counted
-- in `moonlet_metrics_dropped_total`.
-- @module moonlet.metrics
local shared = require "moonlet.shared"
local host = require "moonlet._host"
local argerror = host.argerror
local type, tostring, select, pairs, concat, sort = type, tostring, select, pairs, table.concat, table.sort
local gsub, find, sub, format = string.gsub, string.find, string.sub, string.format

local M = {}

M.MAX_SERIES = 10000 -- series of all metrics together (a label value per request would grow them for good)
local DEFAULT_BUCKETS = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10 }
local NAME = "^[%a_:][%w_:]*$"
local LABEL = "^[%a_][%w_]*$"
local WORKER = tostring(require("moonlet.workers").id())

local store = shared.dict("moonlet.metrics")
local known = {} -- this worker's series keys, for the bound (the others count theirs)
local count = 0
-- this worker's updates since the host last took them: numbers to add to a series, values to set one to
-- (the host's tables: from now on it takes what they hold, and writes its own figures, every second)
local METRICS = host.OP.METRICS
local call = host.call
local adding, setting = call(METRICS)

local function escape(v)
  v = tostring(v)
  if find(v, '[\\"\n]') then v = gsub(gsub(gsub(v, "\\", "\\\\"), '"', '\\"'), "\n", "\\n") end
  return v
end

-- The series key of `name` with the label values given (in the metric's label order).
local function series(self, name, extra, ...)
  local names = self.labels
  local n = #names
  if select("#", ...) ~= n then
    argerror(2, self.kind == "histogram" and "observe" or "inc", n .. " label values (" .. concat(names, ", ") .. ")",
      select("#", ...) == 0 and nil or ..., nil, 1)
  end
  if n == 0 and extra == nil then return name end
  local parts = {}
  for i = 1, n do parts[i] = names[i] .. '="' .. escape((select(i, ...))) .. '"' end
  if extra then parts[#parts + 1] = extra end
  return name .. "{" .. concat(parts, ",") .. "}"
end

local function add(key, by)
  if not known[key] then
    if count >= M.MAX_SERIES then
      key = "moonlet_metrics_dropped_total"
      adding[key] = (adding[key] or 0) + 1
      return
    end
    known[key], count = true, count + 1
  end
  adding[key] = (adding[key] or 0) + by
end

---@class moonlet.Metric
local Metric = {}
Metric.__index = Metric

--- Counter: add `by` (default 1, never negative) to the series of these label values.
--- Example: `requests:inc(1, "/users", 200)`
---@param by? number
function Metric:inc(by, ...)
  by = by or 1
  if type(by) ~= "number" or by < 0 or by ~= by then argerror(1, "inc", "number >= 0", by) end
  if self.kind == "gauge" then
    add(series(self, self.name, 'worker="' .. WORKER .. '"', ...), by)
  else
    add(series(self, self.name, nil, ...), by)
  end
end

--- Gauge: set the series of these label values (this worker's) to `value`.
--- Example: `queue_depth:set(#jobs)`
---@param value number
function Metric:set(value, ...)
  if self.kind ~= "gauge" then error("set: " .. self.name .. " is a " .. self.kind .. ", not a gauge", 2) end
  if type(value) ~= "number" then argerror(1, "set", "number", value) end
  local key = series(self, self.name, 'worker="' .. WORKER .. '"', ...)
  if not known[key] then
    if count >= M.MAX_SERIES then return add(key, 0) end -- (counted as dropped)
    known[key], count = true, count + 1
  end
  setting[key] = value
end

--- Histogram: count one observation `value` (seconds, bytes, ...) in its bucket, its sum and its count.
--- Example: `latency:observe(clock() - t0, "/users")`
---@param value number
function Metric:observe(value, ...)
  if self.kind ~= "histogram" then
    error("observe: " .. self.name .. " is a " .. self.kind .. ", not a histogram", 2)
  end
  if type(value) ~= "number" or value ~= value then argerror(1, "observe", "number", value) end
  local buckets, le = self.buckets, "+Inf"
  for i = 1, #buckets do
    if value <= buckets[i] then
      le = buckets[i]
      break
    end
  end
  -- (kept per bucket, not cumulative: one update; the exposition adds them up)
  add(series(self, self.name .. "_bucket", 'le="' .. tostring(le) .. '"', ...), 1)
  add(series(self, self.name .. "_sum", nil, ...), value)
  add(series(self, self.name .. "_count", nil, ...), 1)
end

local registered = {}

local function define(kind, name, help, labels, buckets)
  if type(name) ~= "string" or not find(name, NAME) then argerror(1, kind, "metric name", name, nil, 1) end
  if type(help) ~= "string" then argerror(2, kind, "string", help, nil, 1) end
  labels = labels or {}
  if type(labels) ~= "table" then argerror(3, kind, "list of label names", labels, nil, 1) end
  for _, l in ipairs(labels) do
    if type(l) ~= "string" or not find(l, LABEL) or l == "le" or l == "worker" then
      argerror(3, kind, "label names (not le or worker)", l, nil, 1)
    end
  end
  local old = registered[name]
  if old then
    if old.kind ~= kind then error(kind .. ": " .. name .. " is already a " .. old.kind, 3) end
    return old
  end
  local m = setmetatable({ kind = kind, name = name, help = help, labels = labels, buckets = buckets }, Metric)
  registered[name] = m
  -- (what the other workers need to write it: its kind, help and buckets)
  store:set("#" .. name, kind .. "\n" .. (buckets and concat(buckets, ",") or "") .. "\n" .. help)
  return m
end

--- A counter: a number that only goes up (requests, bytes, errors). `labels`: the names of its labels.
--- Example: `local errors = metrics.counter("app_errors_total", "Errors by kind", { "kind" })`
---@param name string
---@param help string
---@param labels? string[]
---@return moonlet.Metric
function M.counter(name, help, labels)
  return define("counter", name, help, labels)
end

--- A gauge: a value that goes up and down (a queue's length, open sessions), one series per worker.
--- Example: `local depth = metrics.gauge("app_queue_depth", "Jobs waiting")`
---@param name string
---@param help string
---@param labels? string[]
---@return moonlet.Metric
function M.gauge(name, help, labels)
  return define("gauge", name, help, labels)
end

--- A histogram of observations in `buckets` (upper bounds, ascending; default 5 ms to 10 s).
--- Example: `local latency = metrics.histogram("app_seconds", "Time to answer", { "route" })`
---@param name string
---@param help string
---@param labels? string[]
---@param buckets? number[]
---@return moonlet.Metric
function M.histogram(name, help, labels, buckets)
  buckets = buckets or DEFAULT_BUCKETS
  if type(buckets) ~= "table" or #buckets == 0 then argerror(4, "histogram", "list of numbers", buckets) end
  for i, b in ipairs(buckets) do
    if type(b) ~= "number" or (i > 1 and b <= buckets[i - 1]) then
      argerror(4, "histogram", "ascending numbers", b)
    end
  end
  return define("histogram", name, help, labels, buckets)
end

-- The series of every worker, by metric name: this worker's updates and figures written first (the other
-- workers' are at most a second old)
local function collect()
  call(METRICS)
  local meta, values = {}, {}
  for _, key in ipairs(store:keys(M.MAX_SERIES * 2 + 1000)) do
    if sub(key, 1, 1) == "#" then
      meta[sub(key, 2)] = store:get(key)
    else
      values[key] = store:get(key)
    end
  end
  meta.moonlet_metrics_dropped_total = "counter\n\nMetric updates dropped: past MAX_SERIES series"
  return meta, values
end

local function number(v)
  if v == math.huge then return "+Inf" end
  if math.type(v) == "integer" or v == math.floor(v) and v > -1e15 and v < 1e15 then return format("%d", v) end
  local text = format("%.15g", v) -- (the shortest that reads back as the same number)
  if tonumber(text) ~= v then text = format("%.17g", v) end
  return text
end

--- The Prometheus text exposition (version 0.0.4) of every metric of every worker.
--- Example: `print(metrics.text())`
---@return string
function M.text()
  local meta, values = collect()
  local names = {}
  for name in pairs(meta) do names[#names + 1] = name end
  sort(names)
  local out = {}
  for _, name in ipairs(names) do
    local kind, buckets, help = meta[name]:match("^(%a+)\n([^\n]*)\n(.*)$")
    local of = {}
    for key in pairs(values) do
      local base = key:match("^([%w_:]+)")
      if base == name or (kind == "histogram" and (base == name .. "_sum" or base == name .. "_count"
        or base == name .. "_bucket")) then
        of[#of + 1] = key
      end
    end
    if #of > 0 then
      out[#out + 1] = "# HELP " .. name .. " " .. gsub(gsub(help, "\\", "\\\\"), "\n", "\\n")
      out[#out + 1] = "# TYPE " .. name .. " " .. kind
      sort(of)
      if kind == "histogram" then
        -- per label set: buckets made cumulative, every bound written, +Inf equal to the count
        local bounds = {}
        for b in buckets:gmatch("[^,]+") do bounds[#bounds + 1] = b end
        bounds[#bounds + 1] = "+Inf"
        local sets = {}
        for _, key in ipairs(of) do
          local base, labels = key:match("^([%w_:]+){?(.-)}?$")
          if base == name .. "_bucket" then
            local rest, le = labels:match('^(.-),?le="([^"]*)"$')
            sets[rest] = sets[rest] or {}
            sets[rest][le] = values[key]
          end
        end
        local keys = {}
        for rest in pairs(sets) do keys[#keys + 1] = rest end
        sort(keys)
        for _, rest in ipairs(keys) do
          local total = 0
          for _, b in ipairs(bounds) do
            total = total + (sets[rest][b] or 0)
            out[#out + 1] = name .. "_bucket{" .. (rest ~= "" and rest .. "," or "") .. 'le="' .. b .. '"} '
              .. number(total)
          end
        end
        for _, key in ipairs(of) do
          if not key:match("^[%w_:]+_bucket") then out[#out + 1] = key .. " " .. number(values[key]) end
        end
      else
        for _, key in ipairs(of) do out[#out + 1] = key .. " " .. number(values[key]) end
      end
    end
  end
  return concat(out, "\n") .. "\n"
end

--- An HTTP handler that answers the exposition: `api:get("/metrics", metrics.handler)`.
--- Example: `http.serve { port = 9100, handler = metrics.handler }`
---@return integer status
---@return table headers
---@return string body
function M.handler()
  return 200, { ["content-type"] = "text/plain; version=0.0.4; charset=utf-8" }, M.text()
end

-- `moonlet run --metrics [HOST:]PORT`: the exposition on a listener of its own (the host runs this in a task)
function M._listen(where, port)
  local server, err = require("moonlet.http").serve { host = where, port = port, handler = M.handler }
  if not server then error("--metrics: cannot listen on " .. where .. ":" .. port .. ": " .. err, 0) end
end

return M
