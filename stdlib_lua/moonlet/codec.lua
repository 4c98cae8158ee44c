--- Text forms of bytes: base64 (RFC 4648, standard and URL-safe), hex and percent-encoding (RFC 3986), each
--- a table with `encode` and `decode`, as `moonlet.json` has. Python's own codecs do the work
--- (runtime/services/codec.py); none yields.
--
--     local codec = require "moonlet.codec"
--     codec.base64.encode("hi?")         --> "aGk/"
--     codec.base64url.encode("hi?")      --> "aGk_" (no padding: as JWTs and WebSocket keys want)
--     codec.hex.encode("\1\255")         --> "01ff"
--     codec.uri.encode("a b/c")          --> "a%20b%2Fc"
--     codec.hex.decode("zz")             --> nil, "invalid hex"
-- @module moonlet.codec
local host = require "moonlet._host"
local call, OP, argerror = host.call, host.OP, host.argerror
local type = type

local ENCODE, DECODE = OP.ENCODE, OP.DECODE

local M = {}

local function check(s, fn)
  if type(s) ~= "string" then argerror(1, fn, "string", s, nil, 1) end
end

local base64, base64url, hex, uri = {}, {}, {}, {}
M.base64, M.base64url, M.hex, M.uri = base64, base64url, hex, uri

--- Base64 (RFC 4648 section 4), padded with `=`.
--- Example: `local text = codec.base64.encode(bytes)`
---@param s string
---@return string
function base64.encode(s)
  check(s, "encode")
  return call(ENCODE, "base64", s)
end

--- The bytes of base64 text (padding required); nil, "invalid base64" for anything else (spaces, newlines
--- and characters outside the alphabet included).
--- Example: `local bytes, err = codec.base64.decode(text)`
---@param s string
---@return string? bytes
---@return string? err
function base64.decode(s)
  check(s, "decode")
  return call(DECODE, "base64", s)
end

--- Base64 with the URL and file name safe alphabet (RFC 4648 section 5: `-` and `_`), without padding.
--- Example: `local token = codec.base64url.encode(crypto.random(24))`
---@param s string
---@return string
function base64url.encode(s)
  check(s, "encode")
  return call(ENCODE, "base64url", s)
end

--- The bytes of URL-safe base64 text, padded or not; nil, "invalid base64" otherwise.
--- Example: `local payload, err = codec.base64url.decode(part)`
---@param s string
---@return string? bytes
---@return string? err
function base64url.decode(s)
  check(s, "decode")
  return call(DECODE, "base64url", s)
end

--- Lower-case hex, two digits a byte.
--- Example: `local digest = codec.hex.encode(crypto.sha256(body))`
---@param s string
---@return string
function hex.encode(s)
  check(s, "encode")
  return call(ENCODE, "hex", s)
end

--- The bytes of hex text (either case, an even number of digits); nil, "invalid hex" otherwise.
--- Example: `local bytes, err = codec.hex.decode("01ff")`
---@param s string
---@return string? bytes
---@return string? err
function hex.decode(s)
  check(s, "decode")
  return call(DECODE, "hex", s)
end

--- Percent-encoding (RFC 3986): every byte but letters, digits and `-._~` becomes `%XX`, so the result is
--- safe in a path segment, a query key or value, or a form field.
--- Example: `local url = "/search?q=" .. codec.uri.encode(words)`
---@param s string
---@return string
function uri.encode(s)
  check(s, "encode")
  return call(ENCODE, "uri", s)
end

--- The bytes of percent-encoded text (`+` stays `+`: a form's spaces are the query parser's business); nil,
--- "invalid percent-encoding" for a `%` not followed by two hex digits.
--- Example: `local name, err = codec.uri.decode("caf%C3%A9")`
---@param s string
---@return string? bytes
---@return string? err
function uri.decode(s)
  check(s, "decode")
  return call(DECODE, "uri", s)
end

return M
