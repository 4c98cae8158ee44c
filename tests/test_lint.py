"""The linters and the type checker run as tests, so CI reports them."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.one_engine


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


def test_ruff_lint_and_format() -> None:
    lint = run(sys.executable, "-m", "ruff", "check", "runtime", "tests", "bench", "docs")
    assert lint.returncode == 0, lint.stdout
    fmt = run(sys.executable, "-m", "ruff", "format", "--check", "runtime", "tests", "bench", "docs")
    assert fmt.returncode == 0, fmt.stdout


def test_mypy_strict_on_the_host() -> None:
    result = run(sys.executable, "-m", "mypy")
    assert result.returncode == 0, result.stdout


@pytest.mark.skipif(shutil.which("luacheck") is None, reason="lua-check missing (tests/run.sh installs it)")
def test_luacheck_stdlib_and_apps() -> None:
    result = run("luacheck", "--no-color", "stdlib_lua", "apps", "bench/lua", "tests/lua")
    assert result.returncode == 0, result.stdout


# Files that may build a "bad argument" message by hand: the door's own helpers and Lua's own words for the
# coroutine functions it wraps (_host.lua); the state builder, which runs where no door exists (the app's
# `require`, a pool job's channel: _bootstrap.lua); modules that never reach the host (args, json); and the
# compat layer, which speaks in Lua 5.4's own words for the standard functions it adds on LuaJIT.
BAD_ARGUMENT_ALLOWED = {"_host.lua", "_bootstrap.lua", "_compat.lua", "args.lua", "json.lua"}


def test_every_argument_error_past_the_door_goes_through_argerror() -> None:
    hand_built = []
    for path in sorted((ROOT / "stdlib_lua").rglob("*.lua")):
        if path.name in BAD_ARGUMENT_ALLOWED:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("--", 1)[0]
            if re.search(r"[\"']bad arguments? ", code):
                hand_built.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert hand_built == [], (
        "use host.argerror (one wording, the API's name, the caller's line):\n" + "\n".join(hand_built)
    )
