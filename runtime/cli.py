"""The ``moonlet`` command. Rich output lives here and in logs.py only."""

from __future__ import annotations

import argparse
import sys

from runtime import __version__
from runtime.errors import MoonletError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moonlet",
        description="Run network servers written in Lua.",
        epilog="Example: moonlet run apps/echo.lua --port 7000",
    )
    parser.add_argument("--version", action="version", version=f"moonlet {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run a Lua app until it ends or gets SIGTERM/SIGINT",
        description="Run APP.lua. Everything after the app path reaches Lua as `arg` (and as `...`).",
    )
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    run.add_argument(
        "--drain-timeout",
        type=float,
        metavar="S",
        help="seconds handlers get to finish after SIGTERM (default 30)",
    )
    run.add_argument(
        "--max-memory",
        type=int,
        metavar="BYTES",
        help="Lua heap limit (default: 1 GiB or half the RAM, whichever is less)",
    )
    run.add_argument(
        "--stall-budget",
        type=float,
        metavar="S",
        help="seconds Lua code may run without yielding before it is stopped; 0 turns the check off "
        "(default 1)",
    )
    run.add_argument("app", metavar="APP.lua")
    run.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS", help="arguments for the app")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    ns = parser.parse_args(argv)
    if ns.command is None:
        parser.print_help()
        return 2
    from runtime import logs
    from runtime.host import Host, limits_from

    logs.setup(ns.log_level, ns.log_json)
    limits = limits_from(
        drain_timeout=ns.drain_timeout, lua_max_memory=ns.max_memory, stall_budget=ns.stall_budget
    )
    try:
        return Host(ns.app, ns.args, limits).run()
    except MoonletError as e:
        print(f"moonlet: {e}", file=sys.stderr)
        return 1
