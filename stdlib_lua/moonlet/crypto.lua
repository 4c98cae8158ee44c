--- Hashes, HMAC, a constant-time comparison and random bytes, from Python's `hashlib`, `hmac` and `secrets`
--- (runtime/services/codec.py): no cryptography is written in Lua here. Digests are raw bytes; pass them to
--- `moonlet.codec` for hex or base64. None yields.
--
--     local crypto, codec = require "moonlet.crypto", require "moonlet.codec"
--     codec.hex.encode(crypto.sha256("abc"))        --> "ba7816bf..."
--     local sig = crypto.hmac("sha256", key, payload)
--     if not crypto.equal(sig, given) then return 403 end
--     local session_id = crypto.token()            -- 32 random bytes as URL-safe text
-- @module moonlet.crypto
local host = require "moonlet._host"
local call, OP, argerror = host.call, host.OP, host.argerror
local type = type

local DIGEST, RANDOM, SECRET_EQUAL, ENCODE = OP.DIGEST, OP.RANDOM, OP.SECRET_EQUAL, OP.ENCODE

local M = {}

local ALGORITHMS = { sha1 = true, sha256 = true, sha512 = true }
local MAX_RANDOM = 1048576 -- (runtime/services/codec.py: MAX_RANDOM)

local function check(s, i, fn)
  if type(s) ~= "string" then argerror(i, fn, "string", s, nil, 1) end
end

--- SHA-1 of `s`: 20 raw bytes (for protocols that name it, such as the WebSocket handshake; not for new
--- signatures).
--- Example: `local digest = crypto.sha1(key .. GUID)`
---@param s string
---@return string
function M.sha1(s)
  check(s, 1, "sha1")
  return call(DIGEST, "sha1", s)
end

--- SHA-256 of `s`: 32 raw bytes.
--- Example: `local etag = codec.hex.encode(crypto.sha256(body))`
---@param s string
---@return string
function M.sha256(s)
  check(s, 1, "sha256")
  return call(DIGEST, "sha256", s)
end

--- SHA-512 of `s`: 64 raw bytes.
--- Example: `local digest = crypto.sha512(s)`
---@param s string
---@return string
function M.sha512(s)
  check(s, 1, "sha512")
  return call(DIGEST, "sha512", s)
end

--- HMAC (RFC 2104) of `data` under `key` with `algorithm` ("sha1", "sha256" or "sha512"): raw bytes.
--- Example: `local sig = crypto.hmac("sha256", secret, payload)`
---@param algorithm "sha1"|"sha256"|"sha512"
---@param key string
---@param data string
---@return string
function M.hmac(algorithm, key, data)
  if not ALGORITHMS[algorithm] then argerror(1, "hmac", "'sha1', 'sha256' or 'sha512'", algorithm) end
  check(key, 2, "hmac")
  check(data, 3, "hmac")
  return call(DIGEST, algorithm, data, key)
end

--- Whether two strings are equal, taking a time that does not depend on where they first differ (compare a
--- signature or a token with this, never with `==`, which stops at the first different byte).
--- Example: `if not crypto.equal(given, expected) then return 403 end`
---@param a string
---@param b string
---@return boolean
function M.equal(a, b)
  check(a, 1, "equal")
  check(b, 2, "equal")
  return call(SECRET_EQUAL, a, b)
end

local function check_count(n, fn)
  if math.type(n) ~= "integer" or n < 0 or n > MAX_RANDOM then
    argerror(1, fn, "integer from 0 to " .. MAX_RANDOM, n, nil, 1)
  end
end

--- `n` bytes from the operating system's cryptographic random source (Python's `secrets`).
--- Example: `local nonce = crypto.random(16)`
---@param n integer
---@return string
function M.random(n)
  check_count(n, "random")
  return call(RANDOM, n)
end

--- A random token for session ids, CSRF tokens and reset links: `n` random bytes (default 32) as URL-safe
--- base64 text without padding (43 characters for 32 bytes).
--- Example: `local id = crypto.token()`
---@param n? integer
---@return string
function M.token(n)
  if n == nil then n = 32 end
  check_count(n, "token")
  return call(ENCODE, "base64url", call(RANDOM, n))
end

return M
