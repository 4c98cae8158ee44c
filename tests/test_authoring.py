"""Writing Lua modules: moonlet test, moonlet new, module paths, and annotations/reference coverage."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, run_script


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


PUBLIC = re.compile(r"^function ([A-Za-z_][\w]*)([.:])([a-z][\w]*)\(", re.M)  # (not _private ones)


@pytest.mark.parametrize(
    "module",
    sorted(p.stem for p in (ROOT / "stdlib_lua" / "moonlet").glob("*.lua") if not p.stem.startswith("_")),
)
def test_every_public_stdlib_function_is_annotated_and_in_the_reference(module: str) -> None:
    source = (ROOT / "stdlib_lua" / "moonlet" / f"{module}.lua").read_text()
    reference = (ROOT / "docs" / "reference.md").read_text()
    lines = source.splitlines()
    missing_doc, missing_ref = [], []
    for m in PUBLIC.finditer(source):
        owner, sep, name = m.groups()
        line = source[: m.start()].count("\n")
        if not lines[line - 1].startswith("---"):
            missing_doc.append(f"{owner}{sep}{name}")
        if not re.search(rf"[.:]{name}\b", reference):  # `net.listen{`, `conn:read(`, ...
            missing_ref.append(f"{owner}{sep}{name}")
    assert missing_doc == [], f"{module}: no --- annotation above {missing_doc}"
    assert missing_ref == [], f"{module}: not in docs/reference.md: {missing_ref}"


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
