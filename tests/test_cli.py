"""`moonlet` as a person uses it: run an app or a script, arguments, exit codes, signals."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from conftest import ROOT, SLOW_ECHO, run_script


def moonlet(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "runtime", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=20, check=False)


def test_version_and_help() -> None:
    assert moonlet("--version").stdout.strip() == "moonlet 0.1.0"
    assert "run" in moonlet("--help").stdout
    assert "Everything after the app path reaches Lua" in moonlet("run", "--help").stdout


def test_a_script_gets_its_arguments_runs_to_the_end_and_exits_0(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = run_script(
        tmp_path,
        """
        local opts = require("moonlet.args").parse(arg, { port = 1, name = "x", verbose = false })
        print(arg[0]:match("script.lua$"), opts.port + 1, opts.name, opts.verbose, opts[1], select("#", ...))
        sleep(0.05)  -- the main chunk may yield
        print("done")
    """,
        "--port",
        "41",
        "--name=ann",
        "--verbose",
        "extra",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().splitlines() == ["script.lua\t42\tann\ttrue\textra\t5", "done"]


def test_bad_option_is_a_clear_error_and_exit_1(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = run_script(tmp_path, 'require("moonlet.args").parse(arg, { port = 1 })', "--prot", "3")
    assert result.returncode == 1
    assert b"unknown option --prot (options: --port)" in result.stderr


def test_an_abbreviated_or_misspelt_moonlet_option_is_refused_not_guessed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    script = tmp_path / "script.lua"
    script.write_text('print("ran")\n')
    for wrong in ("--worker", "--stall", "--log"):  # (argparse would take them for --workers, ...)
        result = moonlet("run", wrong, "1", str(script))
        assert result.returncode == 2 and result.stdout == "", (wrong, result.stdout)
        assert f"unrecognized arguments: {wrong}" in result.stderr, result.stderr


def test_error_in_main_chunk_exits_1_with_traceback(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = run_script(
        tmp_path,
        """
        local function setup() error("no config") end
        setup()
    """,
    )
    assert result.returncode == 1
    assert (
        b"app failed:" in result.stderr
        and b"no config" in result.stderr
        and (b"in local 'setup'" in result.stderr or b"in function 'setup'" in result.stderr)  # (5.4, LuaJIT)
    )


def test_syntax_error_and_missing_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = run_script(tmp_path, "local x = = 1")
    assert result.returncode == 1 and b"script.lua:1:" in result.stderr
    missing = moonlet("run", "does/not/exist.lua")
    assert missing.returncode == 1 and "no such app file" in missing.stderr


def test_require_finds_app_modules_and_says_where_it_looked(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "greet.lua").write_text("sleep(0) return { hi = function(n) return 'hi ' .. n end }")
    result = run_script(
        tmp_path,
        """
        print(require("greet").hi("bo"))
        print(select(2, pcall(require, "nope")))
    """,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert out.startswith("hi bo\n") and "module 'nope' not found" in out and "lib/nope.lua" in out


def test_sigterm_drains_finishes_in_flight_work_and_exits_0(lua_server) -> None:  # type: ignore[no-untyped-def]
    server = lua_server(SLOW_ECHO % 0.5)
    busy, idle = server.connect(), server.connect()
    busy.send(b"slow\n")
    idle.send(b"x\n")
    assert idle.line() == b"done x"
    server.wait_log(b"slow: in its handler")
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert busy.read_all() == b"done slow\n"  # the answer in flight was written, then the connection closed
    assert idle.read_all() == b""
    assert server.proc.wait(5) == 0
    assert time.monotonic() - started < 3
    assert "draining" in server.log_text()


def test_drain_timeout_bounds_shutdown(lua_server) -> None:  # type: ignore[no-untyped-def]
    server = lua_server(
        """
        local net = require "moonlet.net"
        net.listen { port = 0, handler = function(conn) conn:write("hi\\n") sleep(60) end }
    """,
        options=["--drain-timeout", "0.3"],
    )
    c = server.connect()
    assert c.line() == b"hi"
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(5) == 0
    assert "drain timeout" in server.log_text()
