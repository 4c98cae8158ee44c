"""The linters and the type checker run as tests, so CI reports them."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from conftest import ROOT


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
