"""The ``moonlet`` command. Rich output lives here and in logs.py only."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from runtime import __version__, hostfn
from runtime.config import Limits, PoolConfig, default_pools
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
    _engine_option(run)
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
    run.add_argument(
        "--block-limit",
        type=float,
        metavar="S",
        help="seconds the event loop may stay blocked (a C call the stall budget cannot stop) before the "
        "process logs what it was running and exits, to be replaced (default 30; 0: never)",
    )
    run.add_argument(
        "--db",
        metavar="PATH|URL",
        help="moonlet.db's default database: a SQLite file, sqlite:PATH or postgresql://user@host/name "
        "(default: APP.db beside the app)",
    )
    run.add_argument(
        "--db-timeout",
        type=float,
        metavar="S",
        help="seconds a query may run before it is interrupted (default 30)",
    )
    run.add_argument(
        "--db-busy-timeout",
        type=float,
        metavar="S",
        help="seconds to wait for a database lock held by another process (default 5)",
    )
    run.add_argument(
        "--pool",
        action="append",
        default=[],
        metavar="NAME=SIZE[:QUEUE]",
        help="size a thread pool (defaults: cpu=<cores>, io=32) and the jobs that may wait beyond it",
    )
    run.add_argument(
        "--python",
        action="append",
        default=[],
        metavar="FILE.py",
        help="import a Python file that registers host functions (runtime.hostfn.host_function)",
    )
    run.add_argument("--no-console", action="store_true", help="open no console socket (moonlet repl)")
    run.add_argument(
        "--console-tcp",
        type=int,
        metavar="PORT",
        help="also open the console on 127.0.0.1:PORT (0: any), guarded by a token written beside the "
        "socket; with workers, worker N's on PORT + N - 1",
    )
    run.add_argument(
        "--metrics",
        type=metrics_address,
        metavar="[HOST:]PORT",
        help="serve the Prometheus metrics (moonlet.metrics: the app's and the runtime's, every worker's) "
        "on HOST:PORT (default host 127.0.0.1)",
    )
    run.add_argument(
        "--max-connections",
        type=int,
        metavar="N",
        help="connections served at once; more are accepted and closed (default: the descriptor limit - 256)",
    )
    run.add_argument(
        "--path",
        action="append",
        default=[],
        metavar="DIR",
        help="another directory to find Lua modules in (after the app's own and its lib/; repeatable)",
    )
    run.add_argument(
        "--workers",
        default="auto",
        metavar="N",
        help="worker processes sharing the listening ports (SO_REUSEPORT), supervised; 'auto' (the "
        "default): one per core, the others started once the first listens, so a script runs once",
    )
    run.add_argument("app", metavar="APP.lua")
    run.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS", help="arguments for the app")

    repl = commands.add_parser(
        "repl",
        help="attach a Lua console to a running server",
        description="Attach to the console of a running moonlet server (by pid, app name or socket path; "
        "the only one if omitted). Lua typed there runs inside the server.",
    )
    repl.add_argument("-e", "--eval", metavar="CODE", help="evaluate one chunk, print the result and exit")
    repl.add_argument("--token", help="the token of a TCP console (TARGET tcp://127.0.0.1:PORT)")
    which = repl.add_mutually_exclusive_group()
    which.add_argument(
        "--worker", type=int, metavar="N", help="attach to worker N of the server (default: 1)"
    )
    which.add_argument(
        "--all", action="store_true", help="run the chunk (-e or standard input) on every worker, labelled"
    )
    repl.add_argument(
        "target",
        nargs="?",
        metavar="TARGET",
        help="pid (a worker's or the supervisor's), app name or socket path",
    )

    new = commands.add_parser(
        "new",
        help="start an app or a module (example, test, editor config)",
        description="Create NAME/: a working example, a test for moonlet test, .luarc.json, .luacheckrc.",
    )
    new.add_argument("kind", choices=["app", "module"])
    new.add_argument("name", metavar="NAME")

    test = commands.add_parser(
        "test",
        help="run Lua tests (*_test.lua, test_*.lua) with moonlet.testing",
        description="Run Lua test files inside a real moonlet runtime (docs/reference.md: moonlet.testing).",
    )
    _engine_option(test)
    test.add_argument("paths", nargs="*", metavar="PATH", help="test files or directories (default .)")
    test.add_argument("-k", "--filter", metavar="TEXT", help="run only tests whose full name contains TEXT")
    test.add_argument("-v", "--verbose", action="store_true", help="a line for every test")
    test.add_argument(
        "--path",
        action="append",
        default=[],
        metavar="DIR",
        help="another directory to find Lua modules in (after the test file's own and its lib/; repeatable)",
    )
    test.add_argument("--one", metavar="FILE", help=argparse.SUPPRESS)

    bench = commands.add_parser(
        "bench",
        help="generate load with a Lua script (any protocol, any conversation)",
        description="Run SCRIPT.lua's session against its target from many connections (Lua coroutines) "
        "and report transactions/s, latency percentiles and errors. See docs/reference.md (moonlet bench).",
    )
    _engine_option(bench)
    bench.add_argument(
        "-c", "--connections", type=int, default=50, metavar="N", help="connections (default 50)"
    )
    bench.add_argument("-d", "--duration", type=float, metavar="S", help="seconds to run (default 10)")
    bench.add_argument("-n", "--requests", type=int, metavar="N", help="stop after N transactions")
    bench.add_argument("-r", "--rate", type=float, metavar="R", help="transactions/s in total, open loop")
    bench.add_argument("-w", "--workers", type=int, default=1, metavar="W", help="processes (default 1)")
    bench.add_argument(
        "--timeout", type=float, default=10.0, metavar="S", help="connect timeout (default 10)"
    )
    bench.add_argument("--json", action="store_true", help="print the summary as JSON")
    bench.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    bench.add_argument("script", metavar="SCRIPT.lua")
    bench.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS", help="arguments for the script")
    # an option is spelt out or refused: "--worker 2" is not taken for --workers (argparse's abbreviations)
    parser.allow_abbrev = False
    for command in commands.choices.values():
        command.allow_abbrev = False
    return parser


def _engine_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--engine",
        choices=["lua54", "luajit"],
        help="the Lua that runs the app: lua54 (Lua 5.4, the default) or luajit (LuaJIT 2.1: faster, no "
        "64-bit integers; README: Engines); default: $MOONLET_ENGINE or lua54",
    )


def _add_module_path(dirs: list[str]) -> None:
    """--path: an environment variable, so that workers, test processes and pool threads see it too."""
    if dirs:
        os.environ["MOONLET_PATH"] = os.pathsep.join([*dirs, os.environ.get("MOONLET_PATH", "")]).strip(
            os.pathsep
        )


def _test(ns: argparse.Namespace) -> int:
    from runtime import logs, testrunner
    from runtime.host import Host

    _add_module_path(ns.path)

    if ns.one:  # one file, in this process: reports go to the runner (runtime/testrunner.py)
        testrunner.die_with_parent()
        logs.setup("warning", False)
        try:
            engine = ("moonlet.testing", {"filter": ns.filter})
            return Host(ns.one, [], engine=engine, console=False, virtual_time=True).run()
        except MoonletError as e:
            print(f"moonlet: {e}", file=sys.stderr)
            return 1
    return testrunner.run(ns.paths, ns.filter, ns.verbose)


def _bench(ns: argparse.Namespace) -> int:
    from runtime import loadgen, logs
    from runtime.host import Host

    duration = ns.duration if ns.duration is not None else (None if ns.requests else 10.0)
    if ns.connections < 1 or ns.workers < 1 or (ns.rate is not None and ns.rate <= 0):
        print("moonlet bench: --connections, --workers and --rate must be positive", file=sys.stderr)
        return 2
    if ns.worker:  # one process of the load: the host runs stdlib_lua/moonlet/loadgen.lua over the script
        logs.setup("warning", False)
        load = {
            "connections": ns.connections,
            "duration": duration,
            "requests": ns.requests,
            "rate": ns.rate,
            "timeout": ns.timeout,
        }
        try:
            return Host(ns.script, ns.args, engine=("moonlet.loadgen", load)).run()
        except MoonletError as e:
            print(f"moonlet: {e}", file=sys.stderr)
            return 1
    options = loadgen.Options(
        ns.script, ns.args, ns.connections, duration, ns.requests, ns.rate, ns.workers, ns.timeout, ns.json
    )
    return loadgen.run(options)


def _without_workers(args: list[str], app: str) -> list[str]:
    """A worker's command line: the supervisor's run options less --workers, then the app and its args."""
    at = args.index(app)
    options, rest = args[:at], args[at:]
    out: list[str] = []
    skip = False
    for a in options:
        if skip:
            skip = False
        elif a == "--workers":
            skip = True
        elif not a.startswith("--workers="):
            out.append(a)
    return out + rest


def metrics_address(text: str) -> tuple[str, int]:
    """``--metrics [HOST:]PORT``."""
    where, _, port = text.rpartition(":")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected [HOST:]PORT, not {text!r}")
    return where.strip("[]") or "127.0.0.1", int(port)


def parse_pools(specs: list[str]) -> dict[str, PoolConfig]:
    """``--pool NAME=SIZE[:QUEUE]`` options over the default pools."""
    pools = default_pools()
    for spec in specs:
        name, _, size_queue = spec.partition("=")
        size_text, _, queue_text = size_queue.partition(":")
        try:
            size = int(size_text)
            queue = int(queue_text) if queue_text else 64 * size
        except ValueError:
            raise MoonletError(f"--pool {spec}: expected NAME=SIZE or NAME=SIZE:QUEUE") from None
        if not name or size < 1 or queue < 0:
            raise MoonletError(f"--pool {spec}: expected a name, a size >= 1 and a queue >= 0")
        timeout = pools[name].timeout if name in pools else 60.0
        pools[name] = PoolConfig(name, size, queue, timeout)
    return pools


def _run_limits(ns: argparse.Namespace) -> Limits:
    """The limits ``moonlet run``'s options set."""
    from runtime.host import limits_from  # (the host loads when it runs)

    return limits_from(
        drain_timeout=ns.drain_timeout,
        lua_max_memory=ns.max_memory,
        stall_budget=ns.stall_budget,
        block_limit=ns.block_limit,
        db_path=ns.db,
        db_query_timeout=ns.db_timeout,
        db_busy_timeout=ns.db_busy_timeout,
        max_connections=ns.max_connections,
    )


def run_limits(options: list[str]) -> Limits:
    """The limits ``moonlet run OPTIONS APP`` would run with (the in-process test harness takes the same
    options as the command, through the same parser)."""
    return _run_limits(_parser().parse_args(["run", *options, "app.lua"]))


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    ns = parser.parse_args(argv)
    if ns.command is None:
        parser.print_help()
        return 2
    from runtime.lua import engine

    try:
        if getattr(ns, "engine", None):
            engine.choose(ns.engine)  # (before the host loads lupa; workers inherit it)
        engine.requested()
    except ValueError as e:
        print(f"moonlet: {e}", file=sys.stderr)
        return 2
    from runtime import logs
    from runtime.host import Host

    if ns.command == "bench":
        return _bench(ns)
    if ns.command == "test":
        return _test(ns)
    if ns.command == "new":
        from pathlib import Path

        from runtime import scaffold

        try:
            files = scaffold.create(ns.kind, ns.name, Path.cwd())
        except (ValueError, FileExistsError) as e:
            print(f"moonlet new: {e}", file=sys.stderr)
            return 1
        for f in files:
            print(f"created {f.relative_to(Path.cwd())}")
        print(
            f"next: cd {ns.name} && moonlet test"
            + (f" && moonlet run {ns.name}.lua" if ns.kind == "app" else "")
        )
        return 0
    if ns.command == "repl":
        from runtime.console import client as console

        return console.main(ns.target, ns.eval, ns.token, worker=ns.worker, every=ns.all)
    logs.setup(ns.log_level, ns.log_json)
    _add_module_path(ns.path)
    workers = (
        (os.cpu_count() or 1) if ns.workers == "auto" else int(ns.workers) if ns.workers.isdigit() else 0
    )
    if workers < 1:
        print(f"moonlet: --workers must be a positive number or 'auto', not {ns.workers!r}", file=sys.stderr)
        return 2
    if os.environ.get("MOONLET_WORKER"):
        from runtime.supervisor import die_with_supervisor

        die_with_supervisor()
    else:  # the start-up log says how many workers run, and why
        why = "--workers 1" if ns.workers != "auto" else "one per core; this machine has one"
        if workers == 1:
            logging.getLogger("moonlet").info("1 worker process (%s)", why)
    if workers > 1:
        from runtime.supervisor import Supervisor

        args = list(argv if argv is not None else sys.argv[1:])
        worker_args = _without_workers(args[args.index("run") + 1 :], ns.app)
        return Supervisor(worker_args, workers, lazily=ns.workers == "auto").run()
    limits = _run_limits(ns)
    try:
        pools = parse_pools(ns.pool)
        for file in ns.python:
            hostfn.load_file(file)
        return Host(
            ns.app,
            ns.args,
            limits,
            pools=pools,
            console=not ns.no_console,
            console_tcp=ns.console_tcp,
            metrics=ns.metrics,
        ).run()
    except MoonletError as e:
        print(f"moonlet: {e}", file=sys.stderr)
        return 1
