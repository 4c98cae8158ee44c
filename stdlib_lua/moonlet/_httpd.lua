--- The HTTP/1.1 server's side of a connection. Private to the stdlib: apps use `http.serve`.
--
-- Requests are parsed here, in Lua, from the connection's own read buffer (moonlet._conn) and answered
-- through its output buffer, so a request that arrives in one piece costs one crossing into the host: the
-- worker is resumed with its bytes and yields the answer. A worker serves one connection at a time and goes
-- on while bytes of a next request are buffered (pipelining, answered in order); then it gives the
-- connection back (IDLE), and the host keeps it without a coroutine until more bytes arrive and hands it to
-- a waiting worker (RequestWorkers in runtime/services/httpserver.py).
--
-- The parser follows RFC 9112 and refuses what it does not allow, each refusal answered with its status,
-- logged in one line, and the connection closed (each decision is a function of moonlet.http._head, tested
-- alone in tests/test_http_head.py):
--   * request line `method SP request-target SP HTTP/1.x` (anything else 400; HTTP/2+ 505; a longer line
--     than max_request_line 414; a well-formed method this server does not know 501);
--   * the target in origin-form (`/path?query`), absolute-form (`http://host/path`: its authority replaces
--     Host, scheme and authority leave the path) or `*` (OPTIONS only); visible ASCII only; a fragment never
--     reaches path or query;
--   * header lines `token ":" OWS value OWS`, value trimmed; no whitespace before the colon, no obs-fold, no
--     control bytes, no bare CR anywhere in the head (400); more than max_headers lines or
--     max_header_bytes bytes 431; exactly one Host on HTTP/1.1, at most one on 1.0, each `uri-host
--     [":" port]` (else 400);
--   * framing: Content-Length digits only (a list of one value repeated is that value), over max_body
--     413; Transfer-Encoding must end with chunked (else 400), other codings 501, with Content-Length 400;
--     HTTP/1.0 with a transfer coding closes after the answer; chunk extensions are accepted and ignored;
--     trailer fields count against max_header_bytes and are dropped, never merged into the headers;
--   * Upgrade is not handled: the request is served as it is, body included.
-- Every pattern here is anchored or searches for a single byte class: no input can make one backtrack.
local host = require "moonlet._host"
local connection = require "moonlet._conn"
local decide = require "moonlet.http._head"
local new_peer = require("moonlet._peer").new
local json_encode = require("moonlet.json").encode
local call, OP, traceback, recv = host.call, host.OP, host.traceback, host.recv
local find, sub, byte, lower = string.find, string.sub, string.byte, string.lower
local gsub, gmatch, format, char = string.gsub, string.gmatch, string.format, string.char
local concat = table.concat
local tonumber, tostring, pairs, rawget, setmetatable, xpcall, type =
  tonumber, tostring, pairs, rawget, setmetatable, xpcall, type

local PY <const>, BUF <const>, POS <const>, OUTN <const>, CLOSED <const> = 1, 2, 3, 5, 8
do
  local s = connection.slots
  assert(s.PY == PY and s.BUF == BUF and s.POS == POS and s.OUTN == OUTN and s.CLOSED == CLOSED)
end
local fill, take, new_conn = connection.fill, connection.take, connection.new
local request_line, head_target = decide.request_line, decide.target
local head_fields, head_host, keep_alive, head_framing, wants_continue = decide.fields, decide.host,
  decide.keep_alive, decide.framing, decide.wants_continue
local valid_authority, trim = decide.valid_authority, decide.trim
local LINE_CTL, NOT_TOKEN = decide.LINE_CTL, decide.NOT_TOKEN
local IDLE, NEXT, REJECT, HTTP_ERROR = OP.IDLE, OP.NEXT, OP.HTTP_REJECT, OP.HTTP_ERROR
local argerror = host.argerror
local bad_field -- (below, with the response's head)
local WRITE, SETTIMEOUTS, MONOTONIC, PEER = OP.WRITE, OP.SETTIMEOUTS, OP.MONOTONIC, OP.PEER

local M = {}

M.STATUS = { [100] = "Continue", [101] = "Switching Protocols", [200] = "OK", [201] = "Created",
  [202] = "Accepted", [204] = "No Content", [301] = "Moved Permanently", [302] = "Found", [303] = "See Other",
  [304] = "Not Modified", [307] = "Temporary Redirect", [308] = "Permanent Redirect", [400] = "Bad Request",
  [401] = "Unauthorized", [403] = "Forbidden", [404] = "Not Found", [405] = "Method Not Allowed",
  [408] = "Request Timeout", [409] = "Conflict", [413] = "Content Too Large", [415] = "Unsupported Media Type",
  [422] = "Unprocessable Content", [426] = "Upgrade Required", [429] = "Too Many Requests",
  [500] = "Internal Server Error", [502] = "Bad Gateway", [503] = "Service Unavailable", [504] = "Gateway Timeout" }

-- The defaults of http.serve's parsing limits (the host applies keepalive_timeout, max_requests and
-- send_timeout).
M.DEFAULTS = { max_request_line = 8 * 1024, max_header_bytes = 16 * 1024, max_headers = 100,
  max_body = 1024 * 1024, header_timeout = 30, body_timeout = 60 }

local MAX_CHUNK_LINE = 4096 -- a chunk-size line with its extensions
local CONTINUE = "HTTP/1.1 100 Continue\r\n\r\n"

local function hex_char(h) return char(tonumber(h, 16)) end

--- Decode `%XX` escapes and `+` (as in a query string).
function M.unescape(s)
  s = gsub(s, "+", " ")
  return (gsub(s, "%%(%x%x)", hex_char))
end

-- The query's keys and values in order: a callback gets each pair (key, value), decoded.
local function each_pair(q, fn)
  for pair in gmatch(q, "[^&]+") do
    local eq = find(pair, "=", 1, true)
    if eq then
      fn(M.unescape(sub(pair, 1, eq - 1)), M.unescape(sub(pair, eq + 1)))
    else
      fn(M.unescape(pair), "")
    end
  end
end

local function parse_query(q)
  local t = {}
  each_pair(q, function(k, v) t[k] = v end) -- (a repeated key: its last value; req:queryall has them all)
  return t
end

--- The cookies a `Cookie` header sends (RFC 6265 5.4: `name=value` pairs separated by `;`), as a table; a
--- value in double quotes loses them; a pair without `=` is skipped; the first of two with one name wins,
--- as browsers send the most specific first.
---@param header string?
---@return table<string, string>
function M.cookies(header)
  local t = {}
  if header == nil then return t end
  for pair in gmatch(header, "[^;]+") do
    local eq = find(pair, "=", 1, true)
    local name = eq and trim(sub(pair, 1, eq - 1)) -- (no pattern that could backtrack over spaces)
    if name and name ~= "" then
      local value = trim(sub(pair, eq + 1))
      if byte(value, 1) == 34 and byte(value, -1) == 34 and #value >= 2 then value = sub(value, 2, -2) end
      if t[name] == nil then t[name] = value end
    end
  end
  return t
end

-- Refuse what the connection sent: one log line, the answers before it, its status' answer (unless an answer
-- to this request has begun: then the connection just closes), and the close.
local function refuse(conn, status, why, answering)
  if conn[CLOSED] then return end
  conn[CLOSED] = true
  local out = take(conn)
  if out then call(WRITE, conn[PY], out) end
  call(REJECT, conn[PY], status, why, answering or false)
end

-- read_head's refusal: refuse, and nothing for the caller
local function refused(conn, status, why)
  refuse(conn, status, why)
  return nil
end

-- headers: lower-case names; looking up "Content-Type" finds "content-type"
local HEADERS = { __index = function(t, k) if type(k) == "string" then return rawget(t, lower(k)) end end }

---@class moonlet.HttpRequest
---@field method string
---@field path string  percent-decoded, without the query
---@field query table<string, string>
---@field headers table<string, string>  lower-case names; repeated headers joined with ", "
---@field peer moonlet.Peer  the client: {host=, port=}, written "host:port"; `req:peer()` gives host, port
---@field params table<string, string>  captures of the router's pattern
---@field cookies table<string, string>  the Cookie header's name=value pairs
local Request = {}

--- Upgrade this request to a WebSocket (RFC 6455): the `101 Switching Protocols` answer is sent and the
--- connection is the WebSocket's from then on (`ws:receive`, `ws:send`, `ws:ping`, `ws:close`: see
--- moonlet.http.websocket); it ends when the handler returns. `opts`: `protocols` (the subprotocols this
--- server speaks, in its order of preference; `ws.protocol` is the one chosen), `max_message` (1 MiB),
--- `timeout` (how long `receive` waits; none by default). nil, why, status for a request that is not an
--- upgrade (answer it with that status) or whose answer has begun.
--- Example: `local ws, why, status = req:websocket { protocols = { "chat" } }`
---@param opts? table
---@return moonlet.WebSocket? ws
---@return string? why
---@return integer? status
function Request:websocket(opts)
  local res, conn = self._res, self._conn
  if conn == nil or conn[CLOSED] then return nil, "closed" end
  if res._started or res._done then return nil, "the answer to this request has begun", 500 end
  local ws, status, why = require("moonlet.http.websocket")._upgrade(self, conn, opts)
  if not ws then return nil, why, status end
  res._started, res._done, res._keep = true, true, false -- (the HTTP exchange is over: no answer follows)
  return ws
end

--- Every value of a query key, in the order sent (`?tag=a&tag=b`: {"a", "b"}); `req.query.tag` is the last.
--- Example: `local tags = req:queryall("tag")`
---@param name string
---@return string[]
function Request:queryall(name)
  if type(name) ~= "string" then argerror(1, "queryall", "string", name) end
  local all = {}
  local q = rawget(self, "_query")
  if q ~= nil and q ~= "" then
    each_pair(q, function(k, v) if k == name then all[#all + 1] = v end end)
  end
  return all
end

-- query, params and peer are made when first used (a hello handler never pays for them)
local function request_index(req, key)
  if key == "query" then
    local q = req._query
    local t = q ~= "" and parse_query(q) or {}
    req.query = t
    return t
  elseif key == "params" then
    local t = {}
    req.params = t
    return t
  elseif key == "cookies" then
    local t = M.cookies(req.headers.cookie)
    req.cookies = t
    return t
  elseif key == "peer" then
    local conn = req._conn
    local h, p
    if conn ~= nil then h, p = call(PEER, conn[PY]) end
    local peer = new_peer(h or "", p)
    req.peer = peer
    return peer
  end
  return Request[key]
end

---@class moonlet.HttpReply
local Reply = {}
Reply.__index = Reply

-- A refusal while the body is read: the handler's read gets nil, err and its answer goes nowhere.
local function body_failed(req, status, why)
  local res = req._res
  refuse(req._conn, status, why, res._started)
  res._done = true
  req._failed = status == 400 and "malformed" or "too large"
  return nil, req._failed
end

-- Wait for more bytes of the body (sending 100 Continue first if the client waits for it).
local function more(req, conn)
  if req._continue then
    req._continue = false
    if not req._res._started then conn:write(CONTINUE) end
  end
  call(SETTIMEOUTS, conn[PY], nil, req._lim.body_timeout)
  local ok, err = fill(conn)
  if not ok then req._failed = err end
  return ok, err
end

-- Up to req._left bytes of the body from the buffer (some are there): the piece, and whether it was the last
-- of what req._left counted (the body for Content-Length, the chunk's data for chunked).
local function take_piece(req, conn, buf, pos, have)
  local left = req._left
  local n = have < left and have or left
  conn[POS] = pos + n
  req._left = left - n
  return sub(buf, pos, pos + n - 1), n == left
end

-- The next piece of a chunked body (states: 0 a chunk-size line, 1 chunk data, 2 the CRLF after it, 3 a
-- trailer line or the empty line that ends the body).
local function read_chunked(req, conn)
  while true do
    local buf, pos = conn[BUF], conn[POS]
    local have = #buf - pos + 1
    local state, advanced = req._state, false
    if state == 1 then
      if have > 0 then
        local piece, done = take_piece(req, conn, buf, pos, have)
        if done then req._state = 2 end
        return piece
      end
    elseif state == 2 then
      local b = byte(buf, pos)
      if b == 10 then
        conn[POS], req._state, advanced = pos + 1, 0, true
      elseif b == 13 and have >= 2 then
        if byte(buf, pos + 1) ~= 10 then return body_failed(req, 400, "chunk data not followed by CRLF") end
        conn[POS], req._state, advanced = pos + 2, 0, true
      elseif b ~= nil and b ~= 13 then
        return body_failed(req, 400, "chunk data not followed by CRLF")
      end
    else
      local nl = find(buf, "\n", pos, true)
      if nl then
        local stop = nl - 1
        if stop >= pos and byte(buf, stop) == 13 then stop = stop - 1 end
        local line = sub(buf, pos, stop)
        conn[POS], advanced = nl + 1, true
        if find(line, LINE_CTL) then return body_failed(req, 400, "a control byte in the chunked framing") end
        if state == 0 then
          local x = find(line, "[^%x]") or #line + 1
          if x == 1 then return body_failed(req, 400, "malformed chunk size") end
          if x > 16 then return body_failed(req, 413, "a chunk size of more than 15 hex digits") end
          -- chunk extensions (`; name[=value]`) are accepted and ignored
          if x <= #line and not find(line, "^[ \t]*;", x) then
            return body_failed(req, 400, "malformed chunk size")
          end
          local size = tonumber(sub(line, 1, x - 1), 16)
          if size == 0 then
            req._state = 3
          else
            local total = req._size + size
            if total > req._lim.max_body then
              return body_failed(req, 413, "a body over " .. req._lim.max_body .. " bytes")
            end
            req._size, req._left, req._state = total, size, 1
          end
        elseif line == "" then
          req._ended = true
          return nil
        else -- a trailer field: counted against the header limit and dropped (never merged into headers)
          local c = find(line, NOT_TOKEN)
          if c == 1 or byte(line, c) ~= 58 then return body_failed(req, 400, "malformed trailer line") end
          local bytes = req._trailer + #line
          if bytes > req._lim.max_header_bytes then
            return body_failed(req, 431, "headers and trailers over " .. req._lim.max_header_bytes .. " bytes")
          end
          req._trailer = bytes
        end
      elseif have > (state == 0 and MAX_CHUNK_LINE or req._lim.max_header_bytes) then
        return body_failed(req, state == 0 and 400 or 431, "a chunk-size or trailer line too long")
      end
    end
    if not advanced then
      local ok, err = more(req, conn)
      if not ok then return nil, err end
    end
  end
end

--- The next piece of the request body as it arrives; nil at its end, or nil, err ("timeout", "closed",
--- "too large", "malformed").
--- Example: `local piece, err = req:read()`
---@async
---@return string? piece
---@return string? err
function Request:read()
  if self._ended then return nil end
  if self._failed then return nil, self._failed end
  local conn = self._conn
  if conn == nil or conn[CLOSED] then return nil, "closed" end
  if self._chunked then return read_chunked(self, conn) end
  while true do
    local buf, pos = conn[BUF], conn[POS]
    local have = #buf - pos + 1
    if have > 0 then
      local piece, done = take_piece(self, conn, buf, pos, have)
      if done then self._ended = true end
      return piece
    end
    local ok, err = more(self, conn)
    if not ok then return nil, err end
  end
end

--- The whole request body (at most `max` bytes, default the server's max_body): a string, or nil, err
--- ("too large", "timeout", "closed", "malformed").
---@async
---@param max? integer
function Request:body(max)
  if self._body then return self._body end
  local parts, size = {}, 0
  while true do
    local piece, err = self:read()
    if piece == nil then
      if err then return nil, err end
      break
    end
    size = size + #piece
    if max and size > max then return nil, "too large" end
    parts[#parts + 1] = piece
  end
  self._body = concat(parts)
  return self._body
end

local date_text, date_second = "", -1

local function http_date()
  local t = os.time()
  if t ~= date_second then
    date_second, date_text = t, os.date("!%a, %d %b %Y %H:%M:%S GMT", t)
  end
  return date_text
end

--- Set the status code (default 200).
--- Example: `res:status(201)`
function Reply:status(code)
  self._status = code
  return self
end

--- Set a response header (a later call with the same name replaces it). `value`: a string or number, or a
--- list of them, sent as one header line each (`Set-Cookie` needs that: its values are never joined).
--- A name that is not a token, or a value with CR, LF or NUL (which would split the response), is an error.
--- Example: `res:header("set-cookie", { http.setcookie("a", "1"), http.setcookie("b", "2") })`
---@param name string
---@param value string|number|(string|number)[]
function Reply:header(name, value)
  local why, i = bad_field(name, value)
  if why then argerror(i, "header", why, i == 1 and name or value) end
  local h = self._headers
  if not h then
    h = {}
    self._headers = h
  end
  h[lower(name)] = type(value) == "table" and value or tostring(value)
  return self
end

-- Response header names and values known good, each with the text it is written as (a name in lower case, a
-- value as a string): the same few come with every response, so writing one is two table reads, not a
-- pattern and two calls; bounded, so values made per request cannot grow them for good
local good_name, good_value, good_fields, MAX_GOOD = {}, {}, 0, 1024

-- Why a response header would be refused ("token", "string, number or list of them", "value without CR, LF
-- or NUL") and which argument is at fault (1: the name, 2: the value); nil when it will do.
function bad_field(name, value)
  if not good_name[name] then
    if type(name) ~= "string" or not find(name, "^[%w!#$%%&'*+%-.^_`|~]+$") then return "header name", 1 end
    if good_fields < MAX_GOOD then good_name[name], good_fields = lower(name), good_fields + 1 end
  end
  if good_value[value] then return nil end
  local tv = type(value)
  if tv == "number" then
    if good_fields < MAX_GOOD and value == value then -- (NaN cannot be a key)
      good_value[value], good_fields = tostring(value), good_fields + 1
    end
    return nil
  end
  if tv == "table" then
    for i = 1, #value do
      local v = value[i]
      local why = type(v) == "table" and "string, number or list of them" or bad_field(name, v)
      if why then return why, 2 end
    end
    return nil
  end
  if tv ~= "string" then return "string, number or list of them", 2 end
  if find(value, "[\r\n%z]") then return "header value without CR, LF or NUL", 2 end
  if good_fields < MAX_GOOD then good_value[value], good_fields = value, good_fields + 1 end
  return nil
end

-- A returned header that will not do, in words for the log: `"x-bad": header value without CR, ...`
local function refused_field(name, value)
  local why = bad_field(name, value)
  if why == nil then return nil end
  return (type(name) == "string" and format("%q", sub(name, 1, 40)) or type(name)) .. ": " .. why
end

-- "HTTP/1.1 <status> <reason>\r\nDate: <date>\r\n", kept per status for the current second
local status_lines, status_second = {}, -1

-- `fields` with the header lines of `h` added (and whether one was content-type); or nil and why for a field
-- that will not do (in a table a handler returned: res:header raises at once)
local function fields_of(h, fields, typed)
  for name, value in pairs(h) do
    local lname, text = good_name[name], good_value[value]
    if lname == nil or text == nil then -- (not known yet, a list, or the memo is full)
      local why = refused_field(name, value)
      if why then return nil, why end
      lname, text = good_name[name] or lower(name), good_value[value]
    end
    if lname ~= "content-length" and lname ~= "transfer-encoding" and lname ~= "connection" then
      if text ~= nil then
        fields = fields .. lname .. ": " .. text .. "\r\n"
      elseif type(value) == "table" then -- (one line each: never joined, as Set-Cookie requires)
        for i = 1, #value do fields = fields .. lname .. ": " .. tostring(value[i]) .. "\r\n" end
      else
        fields = fields .. lname .. ": " .. tostring(value) .. "\r\n"
      end
      if lname == "content-type" then typed = true end
    end
  end
  return fields, typed
end

-- The response head, and `body` after it (one string made, not two). `extra`: the headers a handler
-- returned (res:header's are in self._headers).
local function head(self, length, extra, body)
  local status = self._status
  local date = http_date()
  if date_second ~= status_second then status_lines, status_second = {}, date_second end
  local first = status_lines[status]
  if first == nil then
    first = "HTTP/1.1 " .. status .. " " .. (M.STATUS[status] or "Status") .. "\r\nDate: " .. date .. "\r\n"
    status_lines[status] = first
  end
  local req = self._req
  if req._continue and not req._ended then
    self._keep = false -- the client waits to send the body: only closing ends the request
  end
  local own, fields, typed = self._headers, "", false
  if own and extra then -- (both: the returned ones replace those of the same name)
    for name, value in pairs(extra) do
      local why = refused_field(name, value)
      if why then return nil, why end
      own[lower(name)] = type(value) == "table" and value or tostring(value)
    end
    extra = nil
  end
  if own then fields, typed = fields_of(own, fields, typed) end -- (res:header checked them: never nil)
  if extra then
    fields, typed = fields_of(extra, fields, typed)
    if fields == nil then return nil, typed end
  end
  return first .. fields .. (typed and "" or "content-type: text/plain; charset=utf-8\r\n")
    .. (length and ("content-length: " .. length .. "\r\n") or "transfer-encoding: chunked\r\n")
    .. (not self._keep and "connection: close\r\n\r\n" or self._http10 and "connection: keep-alive\r\n\r\n"
      or "\r\n") .. (body or "")
end

--- Send a piece of the body now (the response is chunked unless a content-length header was set). Waits
--- while more than the high-water mark (64 KiB) of output is unsent, as `conn:write` does; a peer that takes
--- nothing for `send_timeout` is dropped (nil, "timeout"; then nil, "closed" for every later call).
--- Example: `res:write(json.encode(row) .. "\n")`
---@async
---@param chunk string|number
---@return true? ok
---@return string? err
function Reply:write(chunk)
  if self._done then return nil, "finished" end
  local conn = self._req._conn
  if conn == nil or conn[CLOSED] then return nil, "closed" end
  chunk = tostring(chunk)
  self._sent = self._sent + #chunk
  local out = ""
  if not self._started then
    self._started = true
    local length = self._headers and self._headers["content-length"]
    self._chunked = length == nil
    out = head(self, length)
  end
  if not self._head_only and #chunk > 0 then
    out = out .. (self._chunked and (format("%x\r\n", #chunk) .. chunk .. "\r\n") or chunk)
  end
  return conn:write(out)
end

-- The last bytes of the response (ending it); `extra`: headers the handler returned.
local function last_bytes(self, body, extra)
  self._done = true
  body = body and tostring(body) or ""
  self._sent = self._sent + #body
  if not self._started then
    self._started = true
    return head(self, #body, extra, not self._head_only and body or nil)
  elseif self._chunked then
    return (self._head_only or #body == 0) and "0\r\n\r\n" or (format("%x\r\n", #body) .. body .. "\r\n0\r\n\r\n")
  end
  return self._head_only and "" or body
end

--- End the response, with `body` as all of it (or its last piece after write calls).
function Reply:finish(body)
  if self._done then return nil, "finished" end
  local out = last_bytes(self, body)
  local conn = self._req._conn
  if conn == nil or conn[CLOSED] then return nil, "closed" end
  return conn:write(out)
end

-- The traceback of the handler's error, kept by the message handler (one shared function, no closure).
local last_trace
local function keep_trace(e)
  last_trace = traceback(tostring(e), 2)
  return e
end

-- Run the handler; returns the last bytes of its answer when it returned them (not yet written).
local last_headers = nil -- the table of headers a handler returned last (most return the same one each time)

local function run(handler, req, res)
  local ok, status, headers, body = xpcall(handler, keep_trace, req, res)
  if not ok then
    call(HTTP_ERROR, last_trace)
    if not res._started and not res._done then
      res._status, res._headers, res._keep = 500, false, false
      res:finish("500 Internal Server Error\n")
    end
    res._keep, res._done = false, true -- (an answer cut short: only the close tells the client)
    return nil
  end
  if not res._done then -- the handler returned its answer (or ended a streamed one)
    if status ~= nil and not res._started then res._status = status end
    local out, why
    if headers ~= last_headers and headers ~= nil and type(headers) ~= "table" then
      why = "a table of headers"
    else
      last_headers = headers
      out, why = last_bytes(res, body, not res._started and headers or nil)
    end
    if out == nil then -- a header it returned would not do (checked as the head is written)
      call(HTTP_ERROR, "the handler returned a bad header (" .. why .. " expected)")
      res._status, res._headers, res._keep, res._started, res._done = 500, false, false, false, false
      return last_bytes(res, "500 Internal Server Error\n")
    end
    return out
  end
  return nil
end

local last_good_host = false -- the last Host value found valid (most requests repeat it)

-- The next request's head from the buffer (waiting for the rest of it if need be): req, res; or nil when
-- nothing is buffered (only empty lines were) or the connection was refused or closed.
local function read_head(conn, lim, last)
  local from, deadline = conn[POS], nil
  local buf, pos, s, e
  while true do
    buf, pos = conn[BUF], conn[POS]
    local b = byte(buf, pos)
    while b == 10 or (b == 13 and byte(buf, pos + 1) == 10) do -- empty lines before a request (RFC 9112 2.2)
      pos = pos + (b == 10 and 1 or 2)
      b = byte(buf, pos)
    end
    if b == nil then
      conn[BUF], conn[POS] = "", 1
      return nil
    end
    conn[POS] = pos
    if from < pos then from = pos end
    -- the empty line that ends the head: after LF or CRLF, itself LF or CRLF (two plain searches are much
    -- quicker than one pattern)
    s = find(buf, "\n\r\n", from, true)
    local s2 = find(buf, "\n\n", from, true)
    if s2 and (s == nil or s2 < s) then
      s, e = s2, s2 + 1
    elseif s then
      e = s + 2
    end
    if s then break end
    local have = #buf - pos + 1
    if have > lim.max_request_line and not find(buf, "\n", pos, true) then
      refuse(conn, 414, "request line over " .. lim.max_request_line .. " bytes")
      return nil
    end
    if have > lim.max_request_line + lim.max_header_bytes then
      refuse(conn, 431, "headers over " .. lim.max_header_bytes .. " bytes")
      return nil
    end
    local now = call(MONOTONIC)
    if deadline == nil then deadline = now + lim.header_timeout end
    local ok, err = false, "timeout"
    if now < deadline then
      call(SETTIMEOUTS, conn[PY], nil, deadline - now)
      ok, err = fill(conn)
    end
    if not ok then
      if err == "timeout" then refuse(conn, 408, "the request's header did not arrive in time") end
      return nil
    end
    from = have > 2 and have - 2 or 1
  end
  conn[POS] = e + 1
  -- The request line and header lines are buf[pos..s], each with its line end, read in place (anchored
  -- patterns from a position: no copy of the head); each decision is moonlet.http._head's.
  local method, target, http10, origin, l1 = request_line(buf, pos, lim.max_request_line)
  if method == nil then return refused(conn, target, http10) end -- (nil, status, why)
  local path, query, authority = target, "", nil
  if not origin or find(target, "[?#%%]") then -- (else it is the path as it is: "/", "/users/42")
    path, query, authority = head_target(method, target, origin)
    if path == nil then return refused(conn, query, authority) end -- (nil, status, why)
  end
  if s - l1 > lim.max_header_bytes then
    return refused(conn, 431, "headers over " .. lim.max_header_bytes .. " bytes")
  end
  local h, status, why = head_fields(buf, l1 + 1, s, lim.max_headers)
  if h == nil then return refused(conn, status, why) end
  -- (the common request, a GET with Host and no Connection, Content-Length, Transfer-Encoding or Expect,
  -- asks for none of the calls below: each saves ~1,000 instructions of a request's ~58,000)
  local said_host = h.host
  if said_host ~= last_good_host then -- (the Host seen last time, already checked: short strings compare at once)
    local ok
    ok, status, why = head_host(said_host, http10)
    if not ok then return refused(conn, status, why) end
    if said_host ~= nil then last_good_host = said_host end
  end
  if authority then -- absolute-form: its authority is the host the handler sees (RFC 9112 3.2.2)
    if not valid_authority(authority) then
      return refused(conn, 400, "an invalid authority in the request target")
    end
    h.host = authority
  end
  local said = h.connection
  local keep = not http10
  if said ~= nil then keep = keep_alive(http10, said) end
  local te, cl = h["transfer-encoding"], h["content-length"]
  local framing, length = "none", nil
  if te ~= nil or cl ~= nil then
    framing, length, why = head_framing(te, cl, lim.max_body)
    if framing == nil then return refused(conn, length, why) end
  end
  setmetatable(h, HEADERS)
  -- (every field a request may get is made here: the table is sized once)
  local req = setmetatable({ method = method, path = path, headers = h, _query = query, _conn = conn,
    _lim = lim, _ended = true, _res = false, _failed = false, _continue = false, _left = 0, _target = target },
    Request)
  if framing == "chunked" then
    if http10 then keep = false end -- (HTTP/1.0 has no transfer codings: faulty framing, RFC 9112 6.1)
    req._ended, req._chunked, req._state, req._size, req._trailer = false, true, 0, 0, 0
  elseif framing == "length" then
    req._ended, req._left = false, length
  end
  local expect = h.expect
  if expect ~= nil and wants_continue(expect, http10, not req._ended) then req._continue = true end
  if last then keep = false end
  local res = setmetatable({ _req = req, _status = 200, _keep = keep, _http10 = http10,
    _head_only = method == "HEAD", _headers = false, _started = false, _done = false, _chunked = false,
    _sent = 0 }, Reply)
  req._res = res
  return req, res
end

-- Serve the requests buffered on `conn` until nothing more is, or the connection is closed. Returns 1 if the
-- last of them was answered (0 if none was) and, when it can travel with the worker's next wait, its answer.
-- The access log (http.serve{access_log=}): one line per request, in its format (made by concatenation, with
-- no pattern for the common request), kept on the worker's conn table until the worker gives the connection
-- back: its lines travel with that IDLE (no crossing of their own), and the host puts the peer's address in
-- front of each (it knows the connection's; the request worker's conn table here serves many)
local ACCESS = OP.HTTP_ACCESS
local os_time, os_date = os.time, os.date
local access_time, access_second = "", -1
local requests = 0 -- (this worker's: request ids are WORKER-N where the client sent no X-Request-Id)
local WORKER = os.getenv("MOONLET_WORKER") or "1"
local ESCAPES = {} -- quotes, backslashes, control and non-ASCII bytes in a quoted field: \xHH, as nginx does
for i = 0, 255 do ESCAPES[char(i)] = format("\\x%02X", i) end
local NEEDS_ESCAPE = '[%c"\\\128-\255]'

local function quoted(v)
  if v == nil then return "-" end
  if find(v, NEEDS_ESCAPE) then v = gsub(v, NEEDS_ESCAPE, ESCAPES) end
  return v
end

-- A status or a body size as text, kept: a few values come back all the time, and Lua makes an integer's
-- text with snprintf (~1,000 instructions); bounded, as body sizes are many
local number_text, texts = {}, 0
local function text_of(n)
  local t = number_text[n]
  if t == nil then
    t = tostring(n)
    if texts < 4096 then number_text[n], texts = t, texts + 1 end
  end
  return t
end

local function log_access(lim, req, res, conn, started)
  local now = os_time()
  if now ~= access_second then access_second, access_time = now, os_date("!%d/%b/%Y:%H:%M:%S +0000", now) end
  -- (rawget: the names are lower-case already, and the headers' __index lowers a name absent as they are)
  local h, status, sent, kind = req.headers, res._status, res._sent, lim.access_format
  local target = req._target -- (visible ASCII: only a quote or a backslash would need escaping)
  if find(target, '"', 1, true) or find(target, "\\", 1, true) then target = quoted(target) end
  local line
  if kind == "json" then
    local id = rawget(h, "x-request-id")
    if id == nil then
      requests = requests + 1
      id = WORKER .. "-" .. requests
    end
    line = sub(json_encode { time = access_time, method = req.method, target = req._target,
      protocol = res._http10 and "HTTP/1.0" or "HTTP/1.1", status = status, bytes = sent,
      duration_ms = (call(MONOTONIC) - started) * 1000, referer = rawget(h, "referer"),
      user_agent = rawget(h, "user-agent"), request_id = id }, 2) -- (the host begins it with {"peer": ...,)
  else
    local proto, size = res._http10 and ' HTTP/1.0" ' or ' HTTP/1.1" ', sent > 0 and text_of(sent) or "-"
    if kind == "combined" then -- (one concatenation a line: each makes a new string)
      line = " - - [" .. access_time .. '] "' .. req.method .. " " .. target .. proto .. text_of(status) .. " "
        .. size .. ' "' .. quoted(rawget(h, "referer")) .. '" "' .. quoted(rawget(h, "user-agent")) .. '"'
    else
      line = " - - [" .. access_time .. '] "' .. req.method .. " " .. target .. proto .. text_of(status) .. " "
        .. size
    end
  end
  local before = conn._lines -- (more than one: pipelined requests)
  conn._lines = before and before .. "\n" .. line or line
end

-- The lines of the requests served since the connection was taken, for IDLE: in place of its `served` when
-- that is 1 (which they say as well), else handed over by a call of their own
local function access_lines(conn, lim, served)
  local lines = conn._lines
  if lines == nil then return served end
  conn._lines = nil
  if served == 1 then return lines end
  call(ACCESS, conn[PY], lim.access, lines)
  return served
end

local function serve(conn, handler, lim, last)
  local served = 0
  local counts = lim.counts -- (the requests answered, by status, and the body bytes: the runtime's metrics)
  while true do
    local req, res = read_head(conn, lim, last)
    if req == nil then return served end
    local started = lim.access and (lim.access_format ~= "json" or call(MONOTONIC)) -- (json says the time)
    local out = run(handler, req, res)
    if started then log_access(lim, req, res, conn, started) end
    local status = res._status
    counts[status] = (counts[status] or 0) + 1
    counts.bytes = counts.bytes + res._sent
    served = 1
    local keep = res._keep
    if not req._ended and not conn[CLOSED] then
      if out then
        conn:write(out)
        out = nil
      end
      -- the handler left (some of) the body unread: read past it, unless the client still waits for 100
      if keep and not req._continue and not req._failed then
        repeat
          local piece = req:read()
        until piece == nil
        keep = req._ended
      else
        keep = false
      end
    end
    req._conn = nil -- (a task still holding req reads nothing more of this connection)
    res._done = true
    if conn[CLOSED] then return served end
    if not keep then
      if out then conn:write(out) end
      conn:close()
      return served
    end
    if conn[POS] > #conn[BUF] then return served, out end -- nothing more buffered: give the connection back
    if out then conn:write(out) end
    last = call(NEXT, conn[PY], 1)
    served = 0
  end
end

local LINE_LIMITS = { line = host.limits.max_line, read = host.limits.max_read } -- (unused by HTTP)

--- The function request workers run (see http.serve): entry(conn, data, last) serves that connection, then
--- the ones the host hands over, until it is not needed any more.
function M.worker(handler, lim)
  return function(py, data, last)
    local conn = new_conn(py, LINE_LIMITS)
    conn[BUF] = data
    while true do
      local served, out = serve(conn, handler, lim, last)
      if conn[OUTN] > 0 then -- (written by the handler, or in streaming: the answer's last bytes follow)
        local before = take(conn)
        out = out and before .. out or before
      end
      if lim.access then served = access_lines(conn, lim, served) end
      py, data, last = recv(conn, conn[PY], out, IDLE, served)
      if py == nil then return end
      conn[PY], conn[BUF], conn[POS], conn[CLOSED] = py, data, 1, false
    end
  end
end

Request.__index = request_index
return M
