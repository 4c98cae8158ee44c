"""Writing Lua modules: moonlet test, moonlet new, module paths, and annotations/reference coverage."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, run_script
from runtime.kernel.ops import Op


def moonlet(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_stdlibs_own_lua_tests_pass() -> None:
    out = moonlet("test", "stdlib_lua/tests")
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"^8 passed, 0 failed, 0 skipped in 2 files$", out.stdout, re.M), out.stdout


def test_failures_timeouts_skips_and_filter_are_reported(tmp_path: Path) -> None:
    (tmp_path / "things_test.lua").write_text(
        """
local t = require "moonlet.testing"
t.describe("things", function()
  t.it("passes", function() t.expect(1 + 1).to_be(2) end)
  t.it("differs", function() t.expect({ a = { 1, 2 } }).to_equal({ a = { 1, 3 } }) end)
  t.it("hangs", function() sleep(5) end, { timeout = 0.2 })
  t.skip("later", function() end)
end)
"""
    )
    out = moonlet("test", str(tmp_path))
    assert out.returncode == 1
    assert 'tables differ at ["a"][2]: expected 3, got 2' in out.stdout
    assert "things hangs" in out.stdout and "timed out after 0.2s" in out.stdout
    assert re.search(r"1 passed, 2 failed, 1 skipped in 1 file", out.stdout)
    only = moonlet("test", "-k", "passes", str(tmp_path))
    assert only.returncode == 0 and "1 passed, 0 failed, 0 skipped" in only.stdout


def test_a_bad_option_fails_its_test_only_and_the_others_still_run(tmp_path: Path) -> None:
    (tmp_path / "options_test.lua").write_text(
        """
local t = require "moonlet.testing"
t.it("first", function() end)
t.it("negative", function() end, { timeout = -1 })
t.it("misspelt", function() end, { timout = 1 })
t.it("last", function() end)
"""
    )
    out = moonlet("test", str(tmp_path))
    assert out.returncode == 1
    assert re.search(r"2 passed, 2 failed, 0 skipped in 1 file", out.stdout), out.stdout
    assert (
        "options_test.lua:4: bad argument #3 to 'it' ('timeout': seconds > 0 expected, got -1)" in out.stdout
    )
    assert (
        "options_test.lua:5: bad argument #3 to 'it' (unknown option 'timout'; the options are timeout, "
        "virtual_time)" in out.stdout
    ), out.stdout


def test_a_forged_summary_on_standard_output_is_only_output(tmp_path: Path) -> None:
    (tmp_path / "forged_test.lua").write_text(
        """
local t = require "moonlet.testing"
print('@moonlet-report {"kind": "summary", "data": {"passed": 3, "failed": 0, "skipped": 0}}')
t.it("fails", function() t.expect(1).to_be(2) end)
"""
    )
    out = moonlet("test", str(tmp_path))
    assert out.returncode == 1, out.stdout
    assert re.search(r"^0 passed, 1 failed, 0 skipped in 1 file$", out.stdout, re.M), out.stdout


@pytest.mark.slow  # (a helper starts its processes)
def test_a_test_stuck_in_a_c_call_in_virtual_time_ends_its_file_and_the_next_file_runs(
    tmp_path: Path,
) -> None:
    (tmp_path / "a_stuck_test.lua").write_text(
        """
local t = require "moonlet.testing"
t.it("stuck", function()
  local s = "L x" .. string.rep(" ", 400000) .. "y"   -- quadratic inside one C call: no hook runs there
  s:match("^(%S+)%s*(.-)%s*$")
end, { virtual_time = true, timeout = 1 })
"""
    )
    (tmp_path / "b_fine_test.lua").write_text(
        'local t = require "moonlet.testing"\nt.it("ok", function() end)\n'
    )
    started = time.monotonic()
    out = moonlet("test", str(tmp_path))
    took = time.monotonic() - started
    assert out.returncode == 1
    assert "stuck" in out.stdout and "exit status 70" in out.stdout, out.stdout
    assert re.search(r"^1 passed, 1 failed, 0 skipped in 2 files$", out.stdout, re.M), out.stdout
    assert took < 30, took  # (the timeout plus the guard's grace, in the loop's CPU time)


def test_a_killed_runner_takes_its_test_process_with_it(tmp_path: Path) -> None:
    (tmp_path / "slow_test.lua").write_text(
        'local t = require "moonlet.testing"\nt.it("sleeps", function() sleep(30) end, { timeout = 60 })\n'
    )
    runner = subprocess.Popen(
        [sys.executable, "-m", "runtime", "test", str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE
    )
    try:
        child = 0
        deadline = time.monotonic() + 20
        while not child and time.monotonic() < deadline:
            children = Path(f"/proc/{runner.pid}/task/{runner.pid}/children").read_text().split()
            child = int(children[0]) if children else 0
            time.sleep(0.05)
        assert child, "the test process did not start"
        time.sleep(1.0)  # (it is in its test now)
    finally:
        runner.kill()
        runner.wait(10)
        assert runner.stdout is not None
        runner.stdout.close()
    deadline = time.monotonic() + 5
    while Path(f"/proc/{child}").exists() and b"Z" not in _state(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists() or b"Z" in _state(child), (
        "the test process outlived its runner"
    )


def _state(pid: int) -> bytes:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return b"Z"
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]


def test_scaffolds_pass_their_own_tests_and_luacheck(tmp_path: Path) -> None:
    assert moonlet("new", "app", "greeter", cwd=tmp_path).returncode == 0
    assert moonlet("new", "module", "mathx", cwd=tmp_path).returncode == 0
    assert "exists already" in moonlet("new", "app", "greeter", cwd=tmp_path).stderr
    assert moonlet("new", "app", "bad-name", cwd=tmp_path).returncode == 1
    for name, count in (("greeter", 2), ("mathx", 1)):
        out = moonlet("test", cwd=tmp_path / name)
        assert f"{count} passed, 0 failed" in out.stdout, out.stdout + out.stderr
        assert (tmp_path / name / ".luarc.json").read_text().count("stdlib_lua") == 1
        if shutil.which("luacheck"):
            lint = subprocess.run(
                ["luacheck", "--no-color", "."], cwd=tmp_path / name, capture_output=True, check=False
            )
            assert lint.returncode == 0, lint.stdout


def test_module_path_option_and_the_searched_places(tmp_path: Path) -> None:
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "xmod.lua").write_text('return { hi = "from extra" }\n')
    proc = run_script(
        tmp_path, 'print(require("xmod").hi)\nrequire("absent")\n', options=["--path", str(extra)]
    )
    assert proc.stdout == b"from extra\n"
    err = proc.stderr.decode()
    assert "module 'absent' not found" in err
    for place in ("/absent.lua", "/lib/absent.lua", "extra/absent.lua", "stdlib_lua/absent.lua"):
        assert place in err


PUBLIC = re.compile(r"^function ([A-Za-z_][\w]*)([.:])([a-z][\w]*)\(([^)]*)\)", re.M)  # (not _private ones)


@pytest.mark.parametrize(
    "module",
    sorted(
        str(p.relative_to(ROOT / "stdlib_lua" / "moonlet").with_suffix(""))
        for p in (ROOT / "stdlib_lua" / "moonlet").rglob("*.lua")
        if not p.stem.startswith("_")
    ),
)
def test_every_public_stdlib_function_is_annotated_and_in_the_reference(module: str) -> None:
    """Each public function: a --- annotation whose @param names are its parameters, ---@async when its body
    yields (a request to the host), and an entry in the reference: a table row or a heading that names it
    (prose mentioning it is not an entry)."""
    source = (ROOT / "stdlib_lua" / "moonlet" / f"{module}.lua").read_text()
    reference = (ROOT / "docs" / "reference.md").read_text().splitlines()
    entries = "\n".join(line for line in reference if line.startswith(("|", "#")))
    lines = source.splitlines()
    missing_doc, missing_ref, wrong_param, missing_async = [], [], [], []
    for m in PUBLIC.finditer(source):
        owner, sep, name, params = m.groups()
        full = f"{owner}{sep}{name}"
        line = source[: m.start()].count("\n")
        notes = []
        k = line - 1
        while k >= 0 and lines[k].startswith("---"):
            notes.append(lines[k])
            k -= 1
        if not notes:
            missing_doc.append(full)
        given = {p.strip() for p in params.split(",") if p.strip()}
        for note in notes:
            if note.startswith("---@param "):
                pname = note.split()[1].rstrip("?")
                if pname not in given and pname != "...":
                    wrong_param.append(f"{full}: @param {pname}")
        body_end = source.find("\nend\n", m.end())
        body = source[m.end() : body_end if body_end >= 0 else len(source)]
        if "request(" in body and "---@async" not in notes:
            missing_async.append(full)
        if not re.search(rf"[.:]{name}\b", entries):  # `net.listen{`, `conn:read(`, ...
            missing_ref.append(full)
    assert missing_doc == [], f"{module}: no --- annotation above {missing_doc}"
    assert wrong_param == [], f"{module}: @param names no parameter of the function: {wrong_param}"
    assert missing_async == [], f"{module}: yields but has no ---@async: {missing_async}"
    assert missing_ref == [], f"{module}: no entry (table row or heading) in docs/reference.md: {missing_ref}"


def test_a_failing_task_started_by_a_test_fails_it_and_path_finds_modules(tmp_path: Path) -> None:
    lib = tmp_path / "elsewhere"
    lib.mkdir()
    (lib / "helper.lua").write_text("return { answer = 42 }\n")
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "tasks_test.lua").write_text(
        """
local t = require "moonlet.testing"
local helper = require "helper"   -- found through --path
t.it("uses a module from --path", function() t.expect(helper.answer).to_be(42) end)
t.it("starts a task that fails", function()
  spawn(function() error("the background task broke") end)
end)
t.it("starts a task that succeeds", function() spawn(function() return 1 end) end)
"""
    )
    out = moonlet("test", "--path", str(lib), str(tests))
    assert out.returncode == 1, out.stdout + out.stderr
    assert "a task it started failed" in out.stdout and "the background task broke" in out.stdout
    assert re.search(r"2 passed, 1 failed, 0 skipped in 1 file", out.stdout), out.stdout


VIRTUAL_TIME_TESTS = """
local t = require "moonlet.testing"
local net = require "moonlet.net"
local time = require "moonlet.time"
local pool = require "moonlet.pool"
local sync = require "moonlet.sync"
local task = require "moonlet.task"
local it, expect = t.it, t.expect

t.describe("in virtual time", function()
  it("an hour of sleeps moves both clocks an hour", function()
    local m0, w0 = time.monotonic(), time.now()
    local d = require("moonlet.shared").dict("virtual")
    d:set("brief", "x", 60)
    for _ = 1, 3600 do sleep(1) end
    expect(time.monotonic() - m0 >= 3600).to_be(true)
    expect(time.now() - w0 >= 3600).to_be(true)
    expect(d:get("brief")).to_be_nil()
  end)

  it("timers, sleeps and waits keep their order", function()
    local seen = {}
    local every = time.every(1, function() seen[#seen + 1] = "tick" end)
    time.after(2.5, function() seen[#seen + 1] = "after 2.5" end)
    local slow = spawn(function() sleep(100) end)
    expect(select(2, slow:wait(1.5))).to_be("timeout")
    seen[#seen + 1] = "waited 1.5"
    sleep(2)
    every:cancel()
    slow:cancel()
    expect(seen).to_equal({ "tick", "waited 1.5", "tick", "after 2.5", "tick" })
  end)

  it("a 30 s read timeout on a real socket", function()
    local server = net.listen { host = "127.0.0.1", port = 0, handler = function(c) c:readline() end }
    local c = assert(net.connect("127.0.0.1", server.port))
    c:settimeouts(nil, nil, 30)
    local m0 = time.monotonic()
    local line, err = c:readline()
    expect(line).to_be_nil()
    expect(err).to_be("timeout")
    expect(time.monotonic() - m0 >= 30).to_be(true)
    server:close()
  end)

  it("a conversation with a server in the same process", function()
    local server = net.listen { host = "127.0.0.1", port = 0, handler = function(c)
      local line = c:readline()
      sleep(10)
      c:write(line:upper(), "\\n")
    end }
    local c = assert(net.connect("127.0.0.1", server.port))
    c:settimeouts(nil, nil, 60)
    local m0 = time.monotonic()
    c:write("hello\\n")
    expect(c:readline()).to_be("HELLO")
    local took = time.monotonic() - m0
    expect(took >= 10 and took < 60).to_be(true)
    server:close()
  end)

  it("a peer in another process is heard before the clock jumps", function()
    local ticker = spawn(function() while true do sleep(0.5) end end)
    local c = assert(net.connect("127.0.0.1", EXTERNAL_PORT))
    c:settimeouts(nil, nil, 5)
    for i = 1, 5 do
      c:write("ping " .. i .. "\\n")
      expect(c:readline()).to_be("pong " .. i)
    end
    ticker:cancel()
  end)

  it("the clock waits for a pool job", function()
    local order = {}
    local sleeper = spawn(function() sleep(1) order[#order + 1] = "slept" end)
    order[#order + 1] = pool.run("spin", "spin", 3000000) and "job"
    sleeper:wait()
    expect(order).to_equal({ "job", "slept" })
  end)

  it("hangs without a timer", function() sync.queue():get() end, { timeout = 0.5 })
end, { virtual_time = true })

it("runs in real time without the option", function()
  local m0 = time.monotonic()
  sleep(0.05)
  expect(time.monotonic() - m0 >= 0.05).to_be(true)
  expect(select(2, spawn(function() sleep(100) end):wait(0.01))).to_be("timeout")
end)
"""


def test_virtual_time_jumps_over_waits_and_keeps_real_sockets_working(tmp_path: Path) -> None:
    # a peer in another process that answers each line after a few real milliseconds
    peer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket, time\n"
            "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
            "print(s.getsockname()[1], flush=True)\n"
            "c, _ = s.accept(); f = c.makefile('rb')\n"
            "for line in f:\n"
            "    time.sleep(0.01); c.sendall(line.replace(b'ping', b'pong'))\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert peer.stdout is not None
        port = peer.stdout.readline().strip()
        (tmp_path / "spin.lua").write_text(
            "return { spin = function(n) local x = 0 for i = 1, n do x = x + i end return x end }\n"
        )
        (tmp_path / "clock_test.lua").write_text(VIRTUAL_TIME_TESTS.replace("EXTERNAL_PORT", port))
        started = time.monotonic()
        out = moonlet("test", "-v", str(tmp_path))
        took = time.monotonic() - started
    finally:
        peer.kill()
        peer.wait()
        if peer.stdout is not None:
            peer.stdout.close()
    assert out.returncode == 1, out.stdout + out.stderr
    passed = re.findall(r"^ok   \S+ (.*)$", out.stdout, re.M)
    assert len(passed) == 7, out.stdout + out.stderr
    assert "in virtual time hangs without a timer\n    timed out after 0.5s of real time" in out.stdout
    assert re.search(r"7 passed, 1 failed, 0 skipped in 1 file", out.stdout), out.stdout
    assert took < 60, f"{took:.1f}s: the clock did not jump (over an hour of waits, in real time)"


def test_the_api_index_is_generated_from_the_annotations_as_they_are() -> None:
    done = subprocess.run(
        [sys.executable, "docs/gen_api.py", "--check"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    api = (ROOT / "docs" / "api.md").read_text()
    assert "### `net.connect(dest, port, opts)`\n\nYields: yes." in api
    assert "### `Udp:sendto(data, addr, port)`\n\nYields: no." in api
    assert "(no description)" not in api
    # the ops' reference: one row per op, each naming the handler the kernel wires for it
    ops = (ROOT / "docs" / "ops.md").read_text()
    rows = [line for line in ops.splitlines() if re.match(r"\| \d+ \| `", line)]
    assert len(rows) == len(Op), (len(rows), len(Op))
    assert "| 1 | `RECV` | yields | (conn, out): " in ops and "`StreamService._recv` | `_host.lua` |" in ops
    assert "| `UDP_RECV` | yields |" in ops and "`DatagramService._udp_recv` | `net/udp.lua` |" in ops
    # every entry has an example (shipped code that makes the call, or the one written beside it) ...
    entries = api.split("\n### ")[1:]
    assert len(entries) > 130 and all("\nExample: `" in e for e in entries), [
        e[:60] for e in entries if "\nExample: `" not in e
    ]
    # ... the methods of every connection (written in the private _conn.lua) are there with the others ...
    assert "### `Conn:readline(crlf)`\n\nYields: yes." in api and "### `Reply:finish(body)`" in api
    # ... and the errors read from the code: what it raises and what it returns itself
    listen = api.split("### `net.listen(opts)`")[1].split("\n### ")[0]
    assert "`bad argument #1 to 'listen' ('port': integer from 0 to 65535 expected, got ...)`" in listen
    readline = api.split("### `Conn:readline(crlf)`")[1].split("\n### ")[0]
    assert 'Returns nil and: `"line too long"`' in readline and '`"bare newline"`' in readline
