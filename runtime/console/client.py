"""``moonlet repl``: attach to a running server's console (runtime/console/server.py).

    moonlet repl                 # the only running server (or a list of them)
    moonlet repl 12345           # by pid;  moonlet repl kv  # by app name;  or a socket path
    moonlet repl -e 'return 1 + 1' kv
    echo 'return db.query("SELECT 1")' | moonlet repl kv

Interactively: line editing and history (readline, ~/.moonlet_history), multi-line input that continues while
the chunk is incomplete, Tab completion from the live server, results written as Lua; Ctrl-C
cancels the running chunk (not the server); backslash commands (\\help).
"""

from __future__ import annotations

import contextlib
import io
import json
import readline
import socket
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from runtime.console.files import is_live, runtime_dir

HISTORY = Path.home() / ".moonlet_history"


class ReplError(Exception):
    pass


def servers() -> list[dict[str, Any]]:
    """The running servers with a console (stale entries of dead processes are skipped)."""
    found = []
    for info_path in sorted(runtime_dir().glob("*.json")):
        try:
            info = json.loads(info_path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(info, dict) or not is_live(info):
            continue
        info["socket"] = str(info_path.with_suffix(".sock"))
        found.append(info)
    return found


def matching(target: str | None) -> list[dict[str, Any]]:
    """The consoles a target names: a worker's pid, its supervisor's pid (every worker of that server), an
    app's name, or all of them."""
    running = servers()
    if not target:
        return running
    return [
        s
        for s in running
        if target in (str(s["pid"]), str(s.get("supervisor"))) or target in Path(s["app"]).name
    ]


def workers_of(target: str | None) -> list[dict[str, Any]]:
    """Every worker of the one server a target names, by worker number (for --all and --worker)."""
    chosen = matching(target)
    if len({s.get("supervisor") or s["pid"] for s in chosen}) != 1:
        find_socket(target)  # (its error: none, or several servers)
    return sorted(chosen, key=lambda s: int(s.get("worker") or 1))


def find_socket(target: str | None, worker: int | None = None) -> str:
    if target and ("/" in target or target.endswith(".sock") or target.startswith("tcp://")):
        return target
    running = servers()
    chosen = matching(target)
    if worker is not None and chosen:
        numbered = [s for s in chosen if int(s.get("worker") or 1) == worker]
        if len(numbered) != 1:
            raise ReplError(f"no worker {worker} among: " + ", ".join(
                f"worker {s.get('worker') or 1} (pid {s['pid']})" for s in chosen))  # fmt: skip
        return str(numbered[0]["socket"])
    if len(chosen) == 1:
        return str(chosen[0]["socket"])
    supervisors = {s.get("supervisor") for s in chosen}
    if chosen and len(supervisors) == 1 and None not in supervisors:  # the workers of one app: the first
        first = min(chosen, key=lambda s: int(s.get("worker", 0)))
        others = ", ".join(str(s["pid"]) for s in chosen if s is not first)
        print(f"(worker {first.get('worker')} of {len(chosen)}, pid {first['pid']}; the others: {others})",
              file=sys.stderr)  # fmt: skip
        return str(first["socket"])
    listing = (
        "\n".join(
            f"  {s['pid']}  {s['app']}" + (f"  (worker {s['worker']})" if s.get("worker") else "")
            for s in running
        )
        or "  (none)"
    )
    if not chosen:
        raise ReplError(f"no running moonlet server matches {target!r}; running:\n{listing}")
    raise ReplError(f"several moonlet servers run; name one (pid or app):\n{listing}")


class Session:
    def __init__(self, path: str, token: str | None = None) -> None:
        tcp = path.startswith("tcp://")
        self.sock = socket.socket(socket.AF_INET if tcp else socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if tcp:
                host, _, port = path[len("tcp://") :].rpartition(":")
                self.sock.connect((host or "127.0.0.1", int(port)))
            else:
                self.sock.connect(path)
        except (OSError, ValueError) as e:
            self.sock.close()
            raise ReplError(f"cannot attach to {path}: {getattr(e, 'strerror', None) or e}") from None
        self.file = self.sock.makefile("rwb")
        self.console = Console()
        if tcp:
            if not token:
                raise ReplError("a TCP console needs --token (the server wrote it beside its socket)")
            with contextlib.suppress(ReplError):
                self.ask({"op": "auth", "token": token})
                return
            raise ReplError("the console refused the token")

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send a request and wait for its reply (log lines that arrive meanwhile are printed)."""
        self.file.write(json.dumps(request).encode() + b"\n")
        self.file.flush()
        while True:
            try:
                line = self.file.readline()
            except KeyboardInterrupt:  # Ctrl-C cancels the running chunk; its reply still comes
                self.file.write(b'{"op": "cancel"}\n')
                self.file.flush()
                continue
            if not line:
                raise ReplError("the server closed the console")
            reply: dict[str, Any] = json.loads(line)
            if "log" in reply:
                self.console.print(reply["log"], markup=False, highlight=False)
                continue
            if "print" in reply:  # the chunk's print: as it is, when it happens
                self.console.file.write(reply["print"])
                self.console.file.flush()
                continue
            return reply

    def show(self, reply: dict[str, Any]) -> bool:
        """Print a reply; False if it was an error."""
        if "text" in reply:
            self.console.print(reply["text"], markup=False, highlight=False, soft_wrap=True)
            return True
        if not reply.get("ok"):
            self.console.print(
                reply.get("error", "error"), style="red", markup=False, highlight=False, soft_wrap=True
            )
            return False
        for value in reply.get("values", []):  # each written as Lua source by the server
            self.console.print(value, markup=False, highlight=False, soft_wrap=True)
        return True

    def run(self, code: str) -> bool:
        if code.startswith("\\"):
            ok = self.show(self.ask({"op": "command", "line": code[1:]}))
            if ok and code.split() == ["\\log"]:
                self.follow_log()
            return ok

        return self.show(self.ask({"op": "eval", "code": code}))

    def follow_log(self) -> None:
        """Print the server's log lines until Ctrl-C (or the server goes away)."""
        try:
            while line := self.file.readline():
                reply = json.loads(line)
                if "log" in reply:
                    self.console.print(reply["log"], markup=False, highlight=False, soft_wrap=True)
        except KeyboardInterrupt:
            print()
        self.ask({"op": "command", "line": "log off"})


def interactive(session: Session) -> int:
    with contextlib.suppress(OSError):
        readline.read_history_file(HISTORY)
    readline.set_history_length(1000)
    matches: list[str] = []

    def complete(text: str, state: int) -> str | None:
        nonlocal matches
        if state == 0:
            line = readline.get_line_buffer()[: readline.get_endidx()]
            word = line.split()[-1] if line.split() else ""
            matches = session.ask({"op": "complete", "text": word}).get("names", [])
            prefix = word[: len(word) - len(text)]
            matches = [m[len(prefix) :] for m in matches]
        return matches[state] if state < len(matches) else None

    readline.set_completer_delims(" \t\n()[]{},=+-*/%^#~<>'\"")
    readline.set_completer(complete)
    readline.parse_and_bind("tab: complete")
    session.console.print("moonlet console: Lua runs inside the server; \\help for commands, Ctrl-D to leave")
    buffer = ""
    try:
        while True:
            try:
                line = input(".. " if buffer else "> ")
            except KeyboardInterrupt:
                print()
                buffer = ""
                continue
            except EOFError:
                print()
                return 0
            if not buffer and line.startswith("\\"):
                session.run(line)
                continue
            buffer = f"{buffer}\n{line}" if buffer else line
            if not buffer.strip():
                buffer = ""
                continue
            if not session.ask({"op": "check", "code": buffer}).get("complete", True):
                continue
            session.run(buffer)
            buffer = ""
    finally:
        with contextlib.suppress(OSError):
            readline.write_history_file(HISTORY)


def on_every_worker(target: str | None, code: str) -> int:
    """Run ``code`` on every worker of the server ``target`` names, each reply labelled with its worker."""
    try:
        chosen = workers_of(target)
    except ReplError as e:
        print(f"moonlet repl: {e}", file=sys.stderr)
        return 2
    failed = False
    for info in chosen:
        label = f"worker {info.get('worker') or 1} (pid {info['pid']})"
        try:
            session = Session(str(info["socket"]))
        except ReplError as e:
            print(f"{label}: {e}", file=sys.stderr)
            failed = True
            continue
        out = io.StringIO()
        session.console = Console(file=out, width=200, color_system=None)
        try:
            failed |= not session.run(code)
        except ReplError as e:
            out.write(f"error: {e}\n")
            failed = True
        finally:
            session.close()
        for line in out.getvalue().splitlines() or [""]:
            print(f"{label}: {line}")
    return 1 if failed else 0


def main(
    target: str | None,
    code: str | None,
    token: str | None = None,
    worker: int | None = None,
    every: bool = False,
) -> int:
    if every:
        if code is None:
            code = sys.stdin.read() if not sys.stdin.isatty() else None
        if code is None:
            print("moonlet repl: --all runs one chunk (-e CODE, or on standard input)", file=sys.stderr)
            return 2
        return on_every_worker(target, code)
    try:
        session = Session(find_socket(target, worker), token)
    except ReplError as e:
        print(f"moonlet repl: {e}", file=sys.stderr)
        return 2
    try:
        if code is not None:
            return 0 if session.run(code) else 1
        if not sys.stdin.isatty():
            return 0 if session.run(sys.stdin.read()) else 1
        return interactive(session)
    except ReplError as e:
        print(f"moonlet repl: {e}", file=sys.stderr)
        return 1
    finally:
        session.close()
