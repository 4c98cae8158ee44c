"""Lua behaves like Lua inside moonlet (what the sandbox keeps), and the stdlib's errors say what they got."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import lupa.lua54 as lupa  # type: ignore[import-untyped]
import pytest

from conftest import ROOT, run_script

# Lua 5.4's semantics (to-be-closed variables, integers, its own test cases): what LuaJIT keeps of them is
# pinned by tests/test_engines.py instead
pytestmark = pytest.mark.lua54("Lua 5.4's own semantics and test cases")

SCRIPT = """
local json, net = require "moonlet.json", require "moonlet.net"
local out = {}
local function say(...) out[#out + 1] = table.concat({ ... }, " ") end

-- the standard libraries the sandbox keeps can be required, as pure-Lua modules expect
say("require", tostring(require "string" == string), tostring(require "table" == table),
  tostring(require "math" == math), tostring(require "utf8" == utf8),
  tostring(require "coroutine" == coroutine))

-- coroutine.wrap: a failing coroutine is closed (its to-be-closed variables too), the error keeps its origin
-- and gains the caller's position
local closed = false
local f = coroutine.wrap(function()
  local guard <close> = setmetatable({}, { __close = function() closed = true end })
  error("inner failure")
end)
local ok, err = pcall(function() local r = f() return r end)  -- (called from Lua: Lua's wrap adds where)
say("wrap", tostring(ok), tostring(closed),
  tostring(err:match("script%.lua:%d+: .-script%.lua:%d+: inner failure$") ~= nil))
say("create", select(2, pcall(coroutine.create, 42)))
say("resume", select(2, pcall(coroutine.resume, "x")))

-- argument errors name what they got
say("sleep", select(2, pcall(sleep, -1)))

-- numbers in JSON: the shortest text that reads back the same
say("json", json.encode(0.1), json.encode(1 / 3), json.encode(1e300), json.encode(2 ^ 53))

-- a send timeout says "timeout", and the connection stays closed for every later call
local l = assert(net.listen { port = 0, handler = function() sleep(1) end })   -- never reads
local c = assert(net.connect("127.0.0.1", l.port))
c:settimeouts(nil, 0.2, nil)
local piece = string.rep("x", 65536)
local first
for _ = 1, 1000 do
  local okw, e = c:write(piece)
  if not okw then first = e break end
end
say("send", tostring(first), select(2, c:write("more")), select(2, c:flush()))
l:close()

-- flags read alike whichever way they are written
local args = require "moonlet.args"
local a = args.parse({ "--verbose", "false", "x" }, { verbose = true })
local b = args.parse({ "--verbose=false" }, { verbose = true })
local d = args.parse({ "--no-verbose" }, { verbose = true })
local _, bad = pcall(args.parse, { "--verbose=maybe" }, { verbose = true })
say("flags", tostring(a.verbose), tostring(a[1]), tostring(b.verbose), tostring(d.verbose),
  tostring(bad:match("a flag: true or false") ~= nil))

-- I/O timeouts fire on time (to a few milliseconds), like sleep
local l2 = assert(net.listen { port = 0, handler = function(conn) sleep(0.5) end })
local c2 = assert(net.connect("127.0.0.1", l2.port))
c2:settimeouts(nil, nil, 0.01)
local time = require "moonlet.time"
local t0 = time.monotonic()
local line, why = c2:readline()
say("readtimeout", tostring(line), why, tostring(time.monotonic() - t0 < 0.03))
l2:close()
print(table.concat(out, "\\n"))
"""


def test_lua_semantics_inside_moonlet(tmp_path: Path) -> None:
    done = run_script(tmp_path, SCRIPT, timeout=30)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    lines = done.stdout.decode().splitlines()
    assert lines[0] == "require true true true true true"
    assert lines[1] == "wrap false true true", lines[1]
    assert lines[2] == "create bad argument #1 to 'create' (function expected, got number)"
    assert "bad argument #1 to 'resume' (coroutine expected, got string)" in lines[3]
    assert lines[4] == "sleep bad argument #1 to 'sleep' (seconds >= 0 expected, got -1)", lines[4]
    assert lines[5] == "json 0.1 0.3333333333333333 1e+300 9007199254740992", lines[5]
    assert lines[6] == "send timeout closed closed", lines[6]
    assert lines[7] == "flags false x false false true", lines[7]
    assert lines[8] == "readtimeout nil timeout true", lines[8]


SEMANTICS = ROOT / "tests" / "lua" / "semantics.lua"


def test_the_semantics_cases_hold_in_plain_lua() -> None:
    """The reference: the same cases in a bare Lua 5.4 (lupa's, no moonlet), so they state Lua, not us."""
    lua = lupa.LuaRuntime()
    cases = lua.execute(SEMANTICS.read_text())
    run = lua.eval(
        "function(cases) local failed = {} for _, c in ipairs(cases) do local ok, err = pcall(c.fn) "
        "if not ok then failed[#failed + 1] = c.name .. ': ' .. tostring(err) end end "
        "return table.concat(failed, '\\n'), #cases end"
    )
    failed, count = run(cases)
    assert count >= 20
    assert failed == "", failed


def test_the_semantics_cases_hold_inside_moonlet() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "runtime", "test", "tests/lua"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    cases = len(re.findall(r'^case\("', SEMANTICS.read_text(), re.M))
    assert re.search(rf"^{cases + 3} passed, 0 failed, 0 skipped in 1 file$", done.stdout, re.M), done.stdout
