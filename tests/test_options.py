"""Unknown options are errors, never ignored (issue 29): every table of options the stdlib takes rejects a key
it does not know with the standard argument error, naming the options it knows, at the caller's line; a
misspelt `timout` used to fall back to the default silently, and `tls` on a listener served plain text."""

from __future__ import annotations

import re

from conftest import InProcess

CASES = """
local net, http, pool, db, redis = require "moonlet.net", require "moonlet.http", require "moonlet.pool",
  require "moonlet.db", require "moonlet.redis"
local function try(name, f)
  local ok, err = pcall(f)
  print(name, ok, err)
end
local function f() end
try("listen", function() local r = net.listen { port = 0, handler = f, max_lines = 10 } return r end)
try("listen tls", function() local r = net.listen { port = 0, handler = f, tls = {} } return r end)
try("serve", function() local r = http.serve { port = 0, handler = f, max_bodyy = 10 } return r end)
try("serve tls", function() local r = http.serve { port = 0, handler = f, tls = {} } return r end)
try("connect", function() local r = net.connect("127.0.0.1", 1, { timout = 0.08 }) return r end)
try("connect tls", function() local r = net.connect("127.0.0.1", 1, { tls = { verfiy = 1 } }) return r end)
try("request", function() local r = http.request { url = "http://127.0.0.1:1/", timout = 0.08 } return r end)
try("get", function() local r = http.get("http://127.0.0.1:1/", { retries = 2 }) return r end)
try("udp", function() local r = net.udp { port = 0, handlr = f } return r end)
try("named", function() local r = pool.named("cpu", { timeot = 1 }) return r end)
try("open", function() local r = db.open("sqlite:x.db", { pool = 3 }) return r end)
try("redis", function() local r = redis.new { port = 1, dbs = 2 } return r end)
local l = assert(net.listen { port = 0, handler = function(c) c:readline() end })
local c = assert(net.connect("127.0.0.1", l.port))
try("setlimits", function() local r = c:setlimits { line = 10 } return r end)
try("starttls", function() local r = c:starttls { sni = "x" } return r end)
c:close() l:close()
"""


def test_every_options_table_rejects_a_key_it_does_not_know(lua_run: InProcess) -> None:
    code, out = lua_run(CASES)
    assert code == 0, out
    got = {line.split("\t")[0]: line.split("\t", 2)[1:] for line in out}
    for name, fn, key in [
        ("listen", "listen", "max_lines"),
        ("serve", "serve", "max_bodyy"),
        ("connect", "connect", "timout"),
        ("connect tls", "connect", "verfiy"),
        ("request", "request", "timout"),
        ("get", "get", "retries"),
        ("udp", "udp", "handlr"),
        ("named", "named", "timeot"),
        ("open", "open", "pool"),
        ("redis", "new", "dbs"),
        ("setlimits", "setlimits", "line"),
        ("starttls", "starttls", "sni"),
    ]:
        ok, err = got[name]
        assert ok == "false", (name, err)
        # at the script's line, in Lua's words, naming what it knows
        assert re.match(r".*app\.lua:\d+: bad argument", err), (name, err)
        assert f"to '{fn}' (unknown option '{key}'; the options are " in err, (name, err)
    assert "max_line, max_read, path, port" in got["listen"][1]
    assert "timeout" in got["request"][1] and "redirects" in got["request"][1]
    for name in ("listen tls", "serve tls"):
        ok, err = got[name]
        assert ok == "false", (name, err)
        assert "('tls': TLS on a listener is not supported yet: terminate TLS in front" in err, err
