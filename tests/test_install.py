"""Installed the way users install: a wheel built from the checkout, installed into a fresh venv, an app run
from another directory that requires a nested stdlib module (issue 29).

The wheel's dependencies are not downloaded again: the fresh venv sees the project venv's site-packages
through a ``.pth`` file, so what is tested is what the wheel itself ships (every package, every Lua file).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.one_engine

APP = """
local client = require "moonlet.http.client"   -- a nested module (stdlib_lua/moonlet/http/)
local http = require "moonlet.http"              -- (its client keeps connections in moonlet/net/)
assert(type(client.request) == "function")
local server = assert(http.serve { host = "127.0.0.1", port = 0, handler = function(req)
  return 200, { ["content-type"] = "text/plain" }, "installed " .. req.query.x
end })
local body = assert(http.request { url = "http://127.0.0.1:" .. server.port .. "/?x=ok" }).body
print(body)
server:close()
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_wheel_installed_in_a_fresh_venv_runs_an_app_from_another_directory(tmp_path: Path) -> None:
    # the checkout's files as a clone has them (no build/ or egg-info left by an editable install)
    source = tmp_path / "source"
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    for name in listed:
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    build = subprocess.run(
        [*pip_wheel, "-w", str(wheels), str(source)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("moonlet-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "project_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # (the deps, not moonlet)
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "app.lua").write_text(textwrap.dedent(APP))
    for engine in ("lua54", "luajit"):  # (the installed stdlib, its compat layer included, on both engines)
        run = subprocess.run(
            [venv / "bin" / "moonlet", "run", "--workers", "1", "--engine", engine, "app.lua"],
            cwd=elsewhere,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        )
        assert run.returncode == 0, run.stderr[-3000:]
        assert run.stdout == "installed ok\n"
    # it ran the installed copy, not the checkout
    where = subprocess.run(
        [python, "-c", "import runtime, stdlib_lua; print(runtime.__file__, stdlib_lua.__file__)"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(ROOT) not in where and str(site) in where, where
