"""Unknown options are errors, never ignored (issue 29): every table of options the stdlib takes rejects a key
it does not know with the standard argument error, naming the options it knows, at the caller's line; a
misspelt `timout` used to fall back to the default silently."""

from __future__ import annotations

import re

from conftest import ROOT, InProcess

CASES = """
local net, http, pool, db, redis = require "moonlet.net", require "moonlet.http", require "moonlet.pool",
  require "moonlet.db", require "moonlet.redis"
local function try(name, f)
  local ok, err = pcall(f)
  print(name, ok, err)
end
local function f() end
try("listen", function() local r = net.listen { port = 0, handler = f, max_lines = 10 } return r end)
local crt = { cert = "c", crt = 1 }
try("listen tls", function() local r = net.listen { port = 0, handler = f, tls = crt } return r end)
try("serve", function() local r = http.serve { port = 0, handler = f, max_bodyy = 10 } return r end)
try("serve tls", function() local r = http.serve { port = 0, handler = f, tls = crt } return r end)
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
try("setlimits", function() local r = c:setlimits { lines = 10 } return r end)
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
        ("setlimits", "setlimits", "lines"),
        ("starttls", "starttls", "sni"),
    ]:
        ok, err = got[name]
        assert ok == "false", (name, err)
        # at the script's line, in Lua's words, naming what it knows
        assert re.match(r".*app\.lua:\d+: bad argument", err), (name, err)
        assert f"to '{fn}' (unknown option '{key}'; the options are " in err, (name, err)
    assert "max_line, max_read, path, port" in got["listen"][1]
    assert "timeout" in got["request"][1] and "redirects" in got["request"][1]
    for name in ("listen tls", "serve tls"):  # (a listener's tls table is checked as strictly)
        ok, err = got[name]
        assert ok == "false", (name, err)
        assert "(unknown option 'crt'; the options are alpn, cert, ciphers, client_ca," in err, err


def test_a_renamed_option_works_for_one_more_release_and_says_so_once(lua_run: InProcess, caplog) -> None:  # type: ignore[no-untyped-def]
    code, out = lua_run(
        """
        local net = require "moonlet.net"
        local l = assert(net.listen { port = 0, handler = function(c) c:readline() end })
        local c = assert(net.connect("127.0.0.1", l.port))
        c:setlimits { line = 300 }                 -- the name before max_line
        c:setlimits { line = 400, read = 5000 }
        c:setlimits { max_line = 500, line = 1 }   -- (both: the new name wins)
        print(pcall(c.setlimits, c, { line = 10 }))  -- still checked as max_line
        c:close() l:close()
        """
    )
    assert code == 0, out
    assert out[0].startswith("false\t") and "('max_line': integer >= 256 expected, got 10)" in out[0], out
    said = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    assert said == [
        "conn:setlimits{line=} is deprecated: use max_line (the old name goes in the next release)",
        "conn:setlimits{read=} is deprecated: use max_read (the old name goes in the next release)",
    ], said


# Every option name the README and the reference show for a function (`net.listen{max_line=}`,
# `db.open(url, {max_wal=})`, ...) is one the stdlib takes: a name that drifts from the code (a rename the
# docs missed) fails here. The known names come from the code itself: each function is called with an
# option it cannot know, and its error lists the options it does.
DOCUMENTED_FUNCTIONS = (
    r"(net\.listen|net\.connect|conn:setlimits|conn:starttls|net\.udp|http\.serve|http\.request|http\.get"
    r"|pool\.named|db\.open|redis\.new)"
)
PROBES = """
local net, http, pool, db, redis = require "moonlet.net", require "moonlet.http", require "moonlet.pool",
  require "moonlet.db", require "moonlet.redis"
local function f() end
local l = assert(net.listen { port = 0, handler = function(c) c:readline() end })
local c = assert(net.connect("127.0.0.1", l.port))
local function probe(name, call)
  local ok, err = pcall(call, { __probe__ = 1 })
  print(name, ok and "" or (tostring(err):match("the options are ([^)]*)") or ""))
end
probe("net.listen", function(o) o.port, o.handler = 0, f return net.listen(o) end)
probe("net.connect", function(o) return net.connect("127.0.0.1", 1, o) end)
probe("conn:setlimits", function(o) return c:setlimits(o) end)
probe("conn:starttls", function(o) return c:starttls(o) end)
probe("net.udp", function(o) o.port, o.handler = 0, f return net.udp(o) end)
probe("http.serve", function(o) o.port, o.handler = 0, f return http.serve(o) end)
probe("http.request", function(o) o.url = "http://127.0.0.1:1/" return http.request(o) end)
probe("http.get", function(o) return http.get("http://127.0.0.1:1/", o) end)
probe("pool.named", function(o) return pool.named("cpu", o) end)
probe("db.open", function(o) return db.open("sqlite:probe.db", o) end)
probe("redis.new", function(o) return redis.new(o) end)
c:close() l:close()
"""


def test_every_option_the_docs_name_is_one_the_code_takes(lua_run: InProcess) -> None:
    code, out = lua_run(PROBES)
    assert code == 0, out
    known = {}
    for line in out:
        name, _, options = line.partition("\t")
        known[name] = set(options.split(", ")) if options else set()
    assert all(known.values()), known  # every probe answered with the options it knows
    documented: dict[str, set[str]] = {}
    pattern = re.compile(r"`" + DOCUMENTED_FUNCTIONS + r"[^`{]*\{([^}`]*)\}")
    for path in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for m in pattern.finditer(path.read_text()):
            documented.setdefault(m.group(1), set()).update(re.findall(r"([A-Za-z_]\w*)\s*=", m.group(2)))
    assert len(documented) >= 8, documented
    # a name outside the list may still be one the code takes: refused with a reason (tls on a listener), or
    # a deprecated alias; it must not be an unknown option
    others = [(fn, name) for fn, names in sorted(documented.items()) for name in sorted(names - known[fn])]
    calls = "\n".join(f'probe_one("{fn}", "{name}")' for fn, name in others)
    setup = PROBES.replace('probe("', '-- probe("').replace("c:close() l:close()\n", "")
    code, out = lua_run(setup + PROBE_ONE + calls + "\nc:close() l:close()\n")
    assert code == 0, out
    wrong = [line.split("\t")[0] for line in out if "unknown option" in line]
    assert wrong == [], f"the docs name options the code does not take: {wrong}"
    assert len(out) == len(others)


PROBE_ONE = """
local calls = {
  ["net.listen"] = function(o) o.port, o.handler = o.port or 0, f return net.listen(o) end,
  ["http.serve"] = function(o) o.port, o.handler = o.port or 0, f return http.serve(o) end,
  ["conn:setlimits"] = function(o) return c:setlimits(o) end,
  ["db.open"] = function(o) return db.open("sqlite:probe.db", o) end,
  ["pool.named"] = function(o) return pool.named("cpu", o) end,
  ["net.connect"] = function(o) return net.connect("127.0.0.1", 1, o) end,
}
local function probe_one(function_name, option)
  local call = calls[function_name]
  local ok, err = pcall(call, { [option] = 1 })
  print(function_name .. "{" .. option .. "=}\t" .. (ok and "" or tostring(err)))
end
"""
