"""moonlet.codec and moonlet.crypto against Python's own base64, binascii, urllib, hashlib and hmac (an
independent implementation of each: the Lua side calls the same library, so the RFC test vectors pin both),
in process on virtual time."""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import re
import urllib.parse

from conftest import InProcess

# every byte value, and a few random strings of each length up to 70 (base64's padding, hex's pairs)
rng = random.Random(7)
SAMPLES = [bytes(range(256)), b"", b"f", b"fo", b"foo", b"foob", b"fooba", b"foobar"] + [
    bytes(rng.randrange(256) for _ in range(n)) for n in range(70)
]

SCRIPT = r"""
local codec, crypto = require "moonlet.codec", require "moonlet.crypto"
local hex = codec.hex.encode
for i, given in ipairs { ... } do
  local s = assert(codec.hex.decode(given)) -- (the samples come as hex: arguments are text)
  print(i, hex(codec.base64.encode(s)), hex(codec.base64url.encode(s)), hex(codec.hex.encode(s)),
    hex(codec.uri.encode(s)), hex(crypto.sha1(s)), hex(crypto.sha256(s)), hex(crypto.sha512(s)),
    hex(crypto.hmac("sha256", "key" .. i, s)), hex(crypto.hmac("sha1", s, "data")),
    tostring(codec.base64.decode(codec.base64.encode(s)) == s),
    tostring(codec.base64url.decode(codec.base64url.encode(s)) == s),
    tostring(codec.hex.decode(codec.hex.encode(s)) == s),
    tostring(codec.uri.decode(codec.uri.encode(s)) == s))
end
"""


def test_codecs_and_digests_agree_with_pythons_libraries(lua_run: InProcess) -> None:
    code, out = lua_run(SCRIPT, *[s.hex() for s in SAMPLES])
    assert code == 0, out
    assert len(out) == len(SAMPLES)
    for i, (s, row) in enumerate(zip(SAMPLES, out, strict=True), start=1):
        cells = [bytes.fromhex(c) for c in row.split("\t")[1:10]]
        assert cells[0] == base64.b64encode(s)
        assert cells[1] == base64.urlsafe_b64encode(s).rstrip(b"=")
        assert cells[2] == s.hex().encode()
        assert cells[3] == urllib.parse.quote_from_bytes(s, safe="-._~").encode()
        assert cells[4] == hashlib.sha1(s).digest()
        assert cells[5] == hashlib.sha256(s).digest()
        assert cells[6] == hashlib.sha512(s).digest()
        assert cells[7] == hmac.new(b"key%d" % i, s, "sha256").digest()
        assert cells[8] == hmac.new(s, b"data", "sha1").digest()
        assert row.split("\t")[10:] == ["true"] * 4, row


def test_vectors_bad_input_and_misuse(lua_run: InProcess) -> None:
    code, out = lua_run(
        r"""
        local codec, crypto = require "moonlet.codec", require "moonlet.crypto"
        local hex = codec.hex.encode
        local function show(...) print(select("#", ...), ...) end
        -- RFC 4648 section 10, RFC 4231 test case 2, FIPS 180 "abc"
        print(codec.base64.encode("foobar"), codec.base64url.encode("\251\255"), hex(crypto.sha256("abc")))
        print(hex(crypto.hmac("sha256", "Jefe", "what do ya want for nothing?")))
        show(codec.base64.decode("Zm9vYg=="))
        show(codec.base64.decode("Zm9vYg"))        -- no padding
        show(codec.base64.decode("Zm9v\nYg=="))    -- a newline
        print(hex(codec.base64url.decode("-_8")), hex(codec.base64url.decode("-_8=")))
        show(codec.base64url.decode("a=b"))
        print(hex(codec.hex.decode("0A0b")), codec.hex.decode("abc"))
        show(codec.hex.decode("zz"))
        show(codec.uri.decode("caf%C3%A9+x"), codec.uri.decode("100%"))
        show(codec.uri.decode("%zz"))
        print(crypto.equal("abc", "abc"), crypto.equal("abc", "abd"), crypto.equal("abc", "ab"))
        local a, b = crypto.random(16), crypto.random(16)
        local token = crypto.token()
        print(#a, a ~= b, #crypto.random(0), #token, #crypto.token(3), token:find("^[%w_-]+$"))
        for _, f in ipairs {
          function() codec.base64.encode(42) end,
          function() crypto.hmac("md5", "k", "d") end,
          function() crypto.hmac("sha256", "k") end,
          function() crypto.random(-1) end,
          function() crypto.random(2097152) end,
          function() crypto.token(1.5) end,
          function() crypto.equal("a") end,
        } do
          local _, err = pcall(f)
          print(err)
        end
        """
    )
    assert code == 0, out
    assert out[:2] == [
        "Zm9vYmFy\t-_8\tba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
    ]
    assert out[2:11] == [
        "1\tfoob",
        "2\tnil\tinvalid base64",
        "2\tnil\tinvalid base64",
        "fbff\tfbff",
        "2\tnil\tinvalid base64",
        "0a0b\tnil\tinvalid hex",
        "2\tnil\tinvalid hex",
        "3\tcafé+x\tnil\tinvalid percent-encoding",
        "2\tnil\tinvalid percent-encoding",
    ]
    assert out[11:13] == ["true\tfalse\tfalse", "16\ttrue\t0\t43\t4\t1\t43"]
    app = "app.lua:"
    assert [line.split(app, 1)[-1].split(":", 1)[-1].strip() for line in out[13:]] == [
        "bad argument #1 to 'encode' (string expected, got 42)",
        "bad argument #1 to 'hmac' ('sha1', 'sha256' or 'sha512' expected, got string)",
        "bad argument #3 to 'hmac' (string expected, got nil)",
        "bad argument #1 to 'random' (integer from 0 to 1048576 expected, got -1)",
        "bad argument #1 to 'random' (integer from 0 to 1048576 expected, got 2097152)",
        "bad argument #1 to 'token' (integer from 0 to 1048576 expected, got 1.5)",
        "bad argument #2 to 'equal' (string expected, got nil)",
    ]
    assert all(re.match(r"\S*app\.lua:2\d: bad argument", line) for line in out[13:]), out[
        13:
    ]  # (their line)
