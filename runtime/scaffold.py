"""``moonlet new app NAME`` / ``moonlet new module NAME``: a working start with a test and editor set-up.

Each scaffold has a working example, a ``*_test.lua`` for ``moonlet test``, a ``.luarc.json`` that points
the Lua language server (VS Code, Neovim) at the stdlib's annotations, and a ``.luacheckrc``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from runtime.lua.stdlib import stdlib_dir

APP = """\
-- {name}: a line server. Run: moonlet run {name}.lua [--port 7000]
-- Try:  printf 'hello\\n' | nc -q1 127.0.0.1 7000      ->  HELLO
local net = require "moonlet.net"
local log = require "moonlet.log"
local lib = require "{name}_lib"   -- lib/{name}_lib.lua: the logic, tested by {name}_test.lua
local opts = require("moonlet.args").parse(arg, {{ port = 7000, host = "127.0.0.1" }})

local server = assert(net.listen {{ host = opts.host, port = opts.port, handler = function(conn)
  while true do
    local line = conn:readline()
    if not line then return end
    conn:write(lib.answer(line), "\\n")
  end
end }})
log.info("{name} on " .. server.host .. ":" .. server.port)
"""

LIB = """\
--- The logic of {name}, kept apart from the network so it is easy to test.
local M = {{}}

--- The answer to one line.
---@param line string
---@return string
function M.answer(line)
  return line:upper()
end

return M
"""

APP_TEST = """\
-- Run: moonlet test
local t = require "moonlet.testing"
local net = require "moonlet.net"
local lib = require "{name}_lib"

t.describe("{name}", function()
  t.it("answers in capitals", function()
    t.expect(lib.answer("hello")).to_be("HELLO")
  end)

  t.it("serves over TCP", function()
    local server = assert(net.listen {{ host = "127.0.0.1", port = 0, handler = function(conn)
      conn:write(lib.answer(conn:readline()), "\\n")
    end }})
    local conn = assert(net.connect("127.0.0.1", server.port))
    conn:write("ping\\n")
    t.expect(conn:readline()).to_be("PING")
    server:close()
  end)
end)
"""

MODULE = """\
--- {name}: what this module is for, in one line.
-- @module {name}
local M = {{}}

--- Add two numbers.
---@param a number
---@param b number
---@return number
function M.add(a, b)
  return a + b
end

return M
"""

MODULE_TEST = """\
-- Run: moonlet test
local t = require "moonlet.testing"
local {name} = require "{name}"

t.describe("{name}", function()
  t.it("adds", function()
    t.expect({name}.add(2, 3)).to_be(5)
  end)
end)
"""

LUACHECKRC = """\
std = "lua54"
max_line_length = 120
read_globals = { "arg", "sleep", "spawn" }
"""


def luarc() -> str:
    return (
        json.dumps(
            {
                "runtime.version": "Lua 5.4",
                "workspace.library": [str(stdlib_dir())],
                "diagnostics.globals": ["arg", "sleep", "spawn"],
            },
            indent=2,
        )
        + "\n"
    )


def create(kind: str, name: str, where: Path) -> list[Path]:
    """Write the scaffold under ``where/name``; returns the files written."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"{name!r} is not a valid Lua module name (letters, digits, _)")
    root = where / name
    if root.exists():
        raise FileExistsError(f"{root} exists already")
    files: dict[str, str]
    if kind == "app":
        files = {f"{name}.lua": APP, f"lib/{name}_lib.lua": LIB, f"{name}_test.lua": APP_TEST}
    else:
        files = {f"{name}.lua": MODULE, f"{name}_test.lua": MODULE_TEST}
    written = []
    for rel, template in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(name=name))
        written.append(path)
    for rel, text in ((".luarc.json", luarc()), (".luacheckrc", LUACHECKRC)):
        (root / rel).write_text(text)
        written.append(root / rel)
    return written
