--- The decisions an HTTP/1.1 request head asks for (RFC 9112), each a small function of strings and numbers
--- that a reader can hold in mind and a test can run alone (tests/test_http_head.py runs them in plain Lua
--- over the RFC's cases). moonlet._httpd's reader calls them in order on the bytes in a connection's buffer.
-- Private to the stdlib. No function here touches the host: a refusal is returned as `nil, status, why`.
--
-- Every pattern here is anchored or searches for a single byte class: no input can make one backtrack.
local find, sub, byte, lower, match = string.find, string.sub, string.byte, string.lower, string.match
local gsub, gmatch, char = string.gsub, string.gmatch, string.char
local tonumber, select = tonumber, select

local M = {}

-- Methods served (the IANA registry's common ones); another well-formed method gets 501. CONNECT is not
-- among them: this server does not tunnel.
local METHODS = {}
for m in gmatch("GET HEAD POST PUT DELETE OPTIONS TRACE PATCH PROPFIND PROPPATCH MKCOL COPY MOVE LOCK UNLOCK "
  .. "SEARCH REPORT MKCALENDAR MKACTIVITY CHECKOUT MERGE ACL BIND UNBIND REBIND LINK UNLINK PURGE QUERY", "%S+") do
  METHODS[m] = true
end

-- (Lua tries a class's items in order: %w first makes the common bytes cheap)
-- method SP request-target SP HTTP-version: origin-form first (the common case: "/" is the target's first
-- byte), then any target of visible ASCII (RFC 3986 has no room for other bytes); the last capture is where
-- the next line starts
local ORIGIN_LINE = "^([%w!#$%%&'*+%-.^_`|~]+) (/[!-~]*) HTTP/(%d)%.(%d)\r?\n()"
local REQUEST_LINE = "^([%w!#$%%&'*+%-.^_`|~]+) ([!-~]+) HTTP/(%d)%.(%d)\r?\n()"
-- name ":" [one space or tab] value, to the line end (more whitespace around the value is trimmed after);
-- a value of no control byte but HT matches the first at once, the second tells a control byte from a
-- malformed line when it does not
local CLEAN_FIELD = "^([%w!#$%%&'*+%-.^_`|~]+):[ \t]?([^%z\1-\8\10-\31\127]*)\r?\n()"
local FIELD = "^([%w!#$%%&'*+%-.^_`|~]+):[ \t]?([^\r\n]*)\r?\n()"
local LINE_CTL = "[%z\1-\8\10-\31\127]" -- control bytes other than HT
M.LINE_CTL, M.NOT_TOKEN = LINE_CTL, "[^%w!#$%%&'*+%-.^_`|~]" -- (for the chunked body's trailer fields)

--- `s` without the spaces and tabs around it (no pattern that could backtrack over a long run of them).
function M.trim(s)
  local a = find(s, "[^ \t]")
  if a == nil then return "" end
  local b = #s
  local c = byte(s, b)
  while c == 32 or c == 9 do
    b = b - 1
    c = byte(s, b)
  end
  return sub(s, a, b)
end
local trim = M.trim

--- The request line at `pos` (RFC 9112 3): method, target, whether it is HTTP/1.0, whether the target is in
--- origin-form, and where the line ends; or nil, status, why.
function M.request_line(buf, pos, max_line)
  local method, target, major, minor, next_line = match(buf, ORIGIN_LINE, pos)
  local origin = method ~= nil
  if not origin then method, target, major, minor, next_line = match(buf, REQUEST_LINE, pos) end
  -- (the line's length, with its CRLF, from where the next starts: no search of its own when it parsed)
  local l1 = next_line and next_line - 1 or find(buf, "\n", pos, true)
  if l1 - pos > max_line + 1 then return nil, 414, "request line over " .. max_line .. " bytes" end
  if method == nil then return nil, 400, "malformed request line" end
  if major ~= "1" then return nil, 505, "HTTP/" .. major .. "." .. minor .. " is not served here" end
  if not METHODS[method] then
    return nil, 501, "a method this server does not implement: " .. sub(method, 1, 40)
  end
  return method, target, minor == "0", origin, l1
end

local function hex_char(h) return char(tonumber(h, 16)) end

--- The request target (RFC 9112 3.2): its path (percent-decoded), query (as sent), and for absolute-form its
--- authority (which replaces Host, RFC 9112 3.2.2; scheme and authority are not part of the path); a
--- fragment never reaches path or query; or nil, status, why.
function M.target(method, target, origin)
  local path, authority = target, nil
  if not origin then
    if target == "*" then
      if method ~= "OPTIONS" then return nil, 400, "'*' is a request target for OPTIONS only" end
    else -- absolute-form
      local scheme, rest = match(target, "^(%a[%w+.-]*)://(.*)$")
      scheme = scheme and lower(scheme)
      local a = rest and find(rest, "[/?#]")
      if (scheme ~= "http" and scheme ~= "https") or a == 1 or rest == "" then
        return nil, 400, "malformed request target"
      end
      authority = a and sub(rest, 1, a - 1) or rest
      if find(authority, "@", 1, true) then return nil, 400, "userinfo in the request target" end
      path = a and sub(rest, a) or "/"
      if byte(path, 1) ~= 47 then path = "/" .. path end
    end
  end
  local query = ""
  local cut = find(path, "[?#%%]")
  if cut then
    local q = find(path, "[?#]", cut)
    if q then
      if byte(path, q) == 63 then -- "?"
        local hash = find(path, "#", q + 1, true)
        query = sub(path, q + 1, hash and hash - 1 or nil)
      end
      path = sub(path, 1, q - 1)
    end
    if find(path, "%", 1, true) then path = gsub(path, "%%(%x%x)", hex_char) end
  end
  return path, query, authority
end

--- The header fields of buf[from..to] (RFC 9112 5), each line `token ":" OWS value OWS`: a table of
--- lower-case names to trimmed values (a repeated field joined with ", "; a second Host refused); or nil,
--- status, why (whitespace before the colon, obs-fold, no colon, a bare CR, a control byte: 400; more than
--- `max_fields` lines: 431).
-- field names as sent -> lower case; bounded, so names made up by clients cannot grow it for good
local LOWER, lowered, MAX_LOWERED = {}, 0, 512

function M.fields(buf, from, to, max_fields)
  local h, i, n = {}, from, 0
  while i <= to do
    local name, value, nxt = match(buf, CLEAN_FIELD, i)
    if name == nil then name = match(buf, FIELD, i) end
    if name == nil then return nil, 400, "malformed header line" end
    n = n + 1
    if n > max_fields then return nil, 431, "more than " .. max_fields .. " header lines" end
    if value == nil then return nil, 400, "a control byte in a header value" end -- (HT is the one allowed)
    local first, last_byte = byte(value, 1), byte(value, -1)
    if first == 32 or first == 9 or last_byte == 32 or last_byte == 9 then value = trim(value) end
    local key = LOWER[name] -- (a table read instead of a call: the same few names come in every request)
    if key == nil then
      key = lower(name)
      if lowered < MAX_LOWERED then
        LOWER[name], lowered = key, lowered + 1
      end
    end
    name = key
    local old = h[name]
    if old == nil then
      h[name] = value
    elseif name == "host" then
      return nil, 400, "more than one Host header"
    else -- (several Cookie lines, as an HTTP/2 gateway may send, are one cookie list: RFC 9113 8.2.3)
      h[name] = old .. (name == "cookie" and "; " or ", ") .. value
    end
    i = nxt
  end
  return h
end

-- uri-host [":" port] (RFC 9112 3.2, RFC 3986 3.2.2): an IP-literal in brackets, or a reg-name of unreserved
-- bytes, sub-delims and %XX escapes (an IPv4 address is one of those); empty is allowed (a URI without one)
local IP_LITERAL = "^%[[%x:.]+%]"
local IP_FUTURE = "^%[[vV]%x+%.[%w%-._~!$&'()*+,;=:]+%]"
local REG_NAME = "^[%w%-._~!$&'()*+,;=%%]*"

--- Whether a Host value (or an absolute-form authority) is `uri-host [":" port]`.
function M.valid_authority(value)
  local e = select(2, find(value, IP_LITERAL)) or select(2, find(value, IP_FUTURE))
  if e == nil then
    e = select(2, find(value, REG_NAME))
    local name = sub(value, 1, e)
    if find(name, "%", 1, true) and find(gsub(name, "%%%x%x", ""), "%", 1, true) then return false end
  end
  local rest = sub(value, e + 1)
  return rest == "" or find(rest, "^:%d*$") ~= nil
end

--- Whether the request's Host header will do (RFC 9112 3.2): HTTP/1.1 needs one, and it must be
--- `uri-host [":" port]` (else 400); or nil, status, why.
function M.host(value, http10)
  if value == nil then
    if http10 then return true end
    return nil, 400, "an HTTP/1.1 request without a Host header"
  end
  if not M.valid_authority(value) then return nil, 400, "an invalid Host header" end
  return true
end

--- Whether the connection stays open after this request (RFC 9112 9.3): HTTP/1.1 unless `Connection`
--- says close; HTTP/1.0 only if it says keep-alive.
function M.keep_alive(http10, connection)
  local keep = not http10
  if connection then
    local close = false
    for token in gmatch(lower(connection), "[^,%s]+") do
      if token == "close" then close = true elseif token == "keep-alive" then keep = true end
    end
    if close then keep = false end
  end
  return keep
end

--- How the body is framed (RFC 9112 6): "chunked"; "length" and its length; or "none"; or nil, status, why.
--- Transfer-Encoding must end with chunked (400), other codings are not implemented (501), and it cannot
--- come with Content-Length (400). Content-Length is digits (a list of one value repeated is that value,
--- RFC 9110 8.6), at most `max_body` (413).
function M.framing(te, cl, max_body)
  if te then
    if cl then return nil, 400, "both Transfer-Encoding and Content-Length" end
    local chunked, other = false, false
    for coding in gmatch(lower(te), "[^,]+") do
      coding = trim(coding)
      if chunked and coding ~= "" then return nil, 400, "a transfer coding after chunked" end
      if coding == "chunked" then chunked = true elseif coding ~= "" then other = true end
    end
    if not chunked then return nil, 400, "a request's transfer coding must end with chunked" end
    if other then return nil, 501, "a transfer coding this server does not implement" end
    return "chunked"
  end
  if cl == nil then return "none" end
  if not find(cl, "^%d+$") then
    local one
    for part in gmatch(cl, "[^,]+") do
      part = trim(part)
      if not find(part, "^%d+$") or (one and part ~= one) then
        one = nil
        break
      end
      one = part
    end
    if one == nil then return nil, 400, "malformed Content-Length" end
    cl = one
  end
  local length = #cl <= 15 and tonumber(cl) or nil
  if length == nil or length > max_body then
    return nil, 413, "a body of " .. sub(cl, 1, 20) .. " bytes (max_body " .. max_body .. ")"
  end
  if length == 0 then return "none" end
  return "length", length
end

--- Whether to send `100 Continue` before reading the body (RFC 9110 10.1.1): an HTTP/1.1 request with a
--- body that says `Expect: 100-continue`.
function M.wants_continue(expect, http10, has_body)
  return has_body and not http10 and expect ~= nil and lower(trim(expect)) == "100-continue"
end

return M
