"""Write docs/api.md, one entry per public stdlib function, from the LuaLS annotations in stdlib_lua/ and the
code itself.

    python docs/gen_api.py          # rewrite docs/api.md and docs/ops.md
    python docs/gen_api.py --check  # exit 1 if either is not what the code says (the suite runs this)

An entry is the function's syntax (as the source spells it), whether it yields (``---@async``), its
parameters and results with their types, the text of its ``---`` comment, the errors its own code raises
(misuse: ``host.argerror``, ``host.check_seconds``, ``error("bad argument ...")``) and the error strings it
returns itself (``return nil, "..."``, in its body or a local function's it ends in with a tail call), and
an example: a line of shipped code that calls it (apps, the README and the reference, bench scripts, the Lua
tests), or the example its comment gives (``Example: `...```). The methods of the private modules that
make up a public type (``_conn.lua``: every connection; ``_httpd.lua``: an HTTP server's requests and
replies) are listed with their public module.
docs/reference.md stays the hand-written guide; this file cannot drift from the code.

docs/ops.md is the host's side of the door: one row per op from its one declaration in
``runtime/kernel/ops.py`` (number, kind, signature), the service that serves it (the class whose ``SERVES``
names it, its handler found by the naming rule as ``Kernel.wire`` finds it) and the stdlib files that send it.
"""

from __future__ import annotations

import re
import sys
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # (run as a script: the ops and services come from this checkout)

from runtime.kernel.ops import Op  # noqa: E402
from runtime.services.registry import Services  # noqa: E402

STDLIB = ROOT / "stdlib_lua" / "moonlet"
OUT = ROOT / "docs" / "api.md"
OPS_OUT = ROOT / "docs" / "ops.md"
PUBLIC = re.compile(r"^function ([A-Za-z_]\w*)([.:])([a-z]\w*)\(([^)]*)\)", re.M)
# private modules whose methods are public API, and where they are listed
PART_OF = {"_conn.lua": "moonlet.net", "_httpd.lua": "moonlet.http"}
# where examples come from: code that ships and runs in the suite
EXAMPLE_SOURCES = ["apps", "bench/lua", "stdlib_lua/tests", "tests/lua"]
STRING = r'"((?:[^"\\]|\\.)*)"'
RAISES = [  # (pattern over a function's body, how its message reads)
    (re.compile(rf"argerror\((\d+), {STRING}, {STRING}, [^,()]+(?:, {STRING})?"), "argerror"),
    (re.compile(r"check_seconds\([^,]+, (\d+), " + STRING + r"(, true)?"), "seconds"),
    (re.compile(r"error\(" + STRING + r"(?: \.\.)?"), "error"),
]
FAILS = re.compile(r"return nil, " + STRING)
TAIL_CALL = re.compile(r"^\s*return (\w+)\(", re.M)
WRITTEN_EXAMPLE = re.compile(r"Example: `([^`]+)`")


def module_name(path: Path) -> str:
    return "moonlet." + ".".join(path.relative_to(STDLIB).with_suffix("").parts)


def body_of(lines: list[str], start: int) -> str:
    """The function that starts at line ``start``: up to its ``end`` in the first column."""
    if lines[start].rstrip().endswith(" end"):  # (a one-line function)
        return lines[start]
    end = start + 1
    while end < len(lines) and not lines[end].startswith("end"):
        end += 1
    return "\n".join(lines[start : end + 1])


def raised(body: str) -> list[str]:
    found: list[str] = []
    for pattern, kind in RAISES:
        for m in pattern.finditer(body):
            if kind == "argerror":
                i, fn, expected, field = m.groups()
                what = f"'{field}': {expected}" if field else expected
                message = f"bad argument #{i} to '{fn}' ({what} expected, got ...)"
            elif kind == "seconds":
                i, fn, optional = m.groups()
                limit = "seconds >= 0" + (" or nil" if optional else "")
                message = f"bad argument #{i} to '{fn}' ({limit} expected, got ...)"
            else:
                message = m.group(1).replace('\\"', '"') + (" ..." if m.group(0).endswith("..") else "")
            if message not in found:
                found.append(message)
    return found


def failures(body: str) -> list[str]:
    found: list[str] = []
    for m in FAILS.finditer(body):
        if m.group(1) not in found:
            found.append(m.group(1))
    return found


def example_corpus() -> list[tuple[str, int, str]]:
    """Lines of Lua that ship and run: the Lua files of EXAMPLE_SOURCES and the Lua blocks of the README and
    the reference (not the Python tests: an entry would then change with every edit of a test)."""
    lines = []
    for folder in EXAMPLE_SOURCES:
        for path in sorted((ROOT / folder).rglob("*.lua")):
            lines += lua_lines(path, path.read_text().splitlines())
    for doc in (ROOT / "README.md", ROOT / "docs" / "reference.md"):
        text = doc.read_text().splitlines()
        blocks = _lua_blocks(text)
        lines += lua_lines(doc, [line if n in blocks else "" for n, line in enumerate(text)])
    return lines


def lua_lines(path: Path, text: list[str]) -> list[tuple[str, int, str]]:
    rel = path.relative_to(ROOT).as_posix()
    out = []
    for n, line in enumerate(text, 1):
        stripped = line.strip()
        if stripped and not stripped.startswith("--"):
            out.append((rel, n, stripped))
    return out


def _lua_blocks(text: list[str]) -> set[int]:
    """Line numbers (0-based) inside the ```lua blocks of a Markdown file."""
    found: set[int] = set()
    inside = False
    for n, line in enumerate(text):
        if line.startswith("```"):
            inside = line.startswith("```lua")
        elif inside:
            found.add(n)
    return found


RANK = ("apps/", "README.md", "docs/", "bench/", "stdlib_lua/", "tests/")


def example(corpus: list[tuple[str, int, str]], call: re.Pattern[str]) -> str | None:
    """The line of shipped code that reads best as an example of this call: a whole statement (brackets
    balanced), from an app or the README before tests, one that keeps what the call returns, then short."""
    best: tuple[tuple[int, bool, int], str, int, str] | None = None
    for rel, n, text in corpus:
        if len(text) > 100 or not call.search(text):
            continue
        if any(text.count(a) != text.count(b) for a, b in ("()", "{}", "[]")):
            continue
        rank = next(i for i, prefix in enumerate(RANK) if rel.startswith(prefix) or prefix == "tests/")
        key = (rank, "=" not in text.split("(")[0], len(text))
        if best is None or key < best[0]:
            best = (key, rel, n, text)
    return f"`{best[3]}` ({best[1]})" if best else None


def entries(path: Path, corpus: list[tuple[str, int, str]], ambiguous: set[str]) -> list[str]:
    source = path.read_text()
    lines = source.splitlines()
    private = path.name in PART_OF
    short = (PART_OF.get(path.name) or module_name(path)).split(".")[1]  # (moonlet.http.client's are http.*)
    out = []
    for m in PUBLIC.finditer(source):
        owner, sep, name, params = m.groups()
        if private and sep != ":":
            continue  # (a private module's own functions are not API; its type's methods are)
        line = source[: m.start()].count("\n")
        notes: list[str] = []
        k = line - 1
        while k >= 0 and lines[k].startswith("---"):
            notes.insert(0, lines[k])
            k -= 1
        for j in range(len(notes) - 1, 0, -1):  # (an annotation continued on the next line, indented)
            if notes[j].startswith("---  ") and notes[j - 1].startswith("---@"):
                notes[j - 1] += " " + notes.pop(j)[3:].strip()
        text = [n[3:].strip() for n in notes if not n.startswith("---@")]
        async_ = any(n.startswith("---@async") for n in notes)
        params_doc = [n[len("---@param ") :].strip() for n in notes if n.startswith("---@param ")]
        returns_doc = [n[len("---@return ") :].strip() for n in notes if n.startswith("---@return ")]
        who = short if owner == "M" else owner
        entry = [f"### `{who}{sep}{name}({params.strip()})`", ""]
        entry.append(f"Yields: {'yes' if async_ else 'no'}.")
        if params_doc:
            entry.append("Parameters: " + "; ".join(f"`{p}`" for p in params_doc) + ".")
        if returns_doc:
            entry.append("Returns: " + "; ".join(f"`{r}`" for r in returns_doc) + ".")
        body = body_of(lines, line)
        returning = body
        for called in TAIL_CALL.findall(body):  # (what a local function it ends in returns, it returns)
            if (local := re.search(rf"^local function {called}\(", source, re.M)) is not None:
                returning += body_of(lines, source[: local.start()].count("\n"))
        if raises := raised(body):
            entry.append("Raises: " + "; ".join(f"`{r}`" for r in raises) + ".")
        if fails := failures(returning):
            entry.append("Returns nil and: " + ", ".join(f'`"{f}"`' for f in fails) + ".")
        description = " ".join(t for t in text if t) or "(no description)"
        written = WRITTEN_EXAMPLE.search(description)
        if written is not None:  # (the example its comment gives)
            description = (description[: written.start()] + description[written.end() :]).strip()
            entry.append(f"Example: `{written.group(1)}`.")
        else:
            if sep == ".":
                call = re.compile(rf"\b{short}\.{name}\s*[({{\"']")
            elif name not in ambiguous:
                call = re.compile(rf":{name}\s*[({{\"']")
            else:
                call = None
            found = example(corpus, call) if call is not None else None
            entry.append(f"Example: {found}." if found else "Example: none in the shipped code yet.")
        entry.append("")
        entry.append(description)
        out.append("\n".join(entry))
    return out


def method_names() -> set[str]:
    """Method names that more than one type has (their examples cannot be found by name alone)."""
    owners: dict[str, set[str]] = {}
    for path in STDLIB.rglob("*.lua"):
        for owner, sep, name, _ in PUBLIC.findall(path.read_text()):
            if sep == ":":
                owners.setdefault(name, set()).add(owner)
    return {name for name, who in owners.items() if len(who) > 1}


def render() -> str:
    parts = [
        "# API index",
        "",
        "Generated from the annotations and the code in `stdlib_lua/` by `python docs/gen_api.py` (the test",
        "suite checks it is current): one entry per public function, with its syntax, whether it yields, its",
        "parameters and results as annotated, the misuse errors it raises and the error strings it returns",
        "itself (those of the waits it makes are its description's and `docs/naming.md`'s), an example from",
        "the shipped code, and its description. The guide is `docs/reference.md`.",
    ]
    corpus, ambiguous = example_corpus(), method_names()
    sections: dict[str, list[str]] = {}
    for path in sorted(STDLIB.rglob("*.lua")):
        if path.stem.startswith("_") and path.name not in PART_OF:
            continue
        found = entries(path, corpus, ambiguous)
        if found:
            sections.setdefault(PART_OF.get(path.name) or module_name(path), []).extend(found)
    for module in sorted(sections):
        parts += ["", f"## {module}", "", "\n\n".join(sections[module])]
    return "\n".join(parts) + "\n"


def render_ops() -> str:
    """docs/ops.md: every op's row, from its declaration and the services that wire it."""
    # the kernel's own two, then each service's SERVES (the handler's name by the rule Kernel.wire follows)
    served = {Op.EXIT: "kernel/core.py `Kernel._exit`", Op.RELEASE: "kernel/core.py `Kernel._release`"}
    for cls in typing.get_type_hints(Services).values():
        module = cls.__module__.removeprefix("runtime.").replace(".", "/") + ".py"
        for op in cls.SERVES:
            served[op] = f"{module} `{cls.__name__}._{op.name.lower()}`"
    senders: dict[str, set[str]] = {}
    for path in sorted(STDLIB.rglob("*.lua")):
        for name in re.findall(r"\bOP\.([A-Z_]+)", path.read_text()):
            senders.setdefault(name, set()).add(str(path.relative_to(STDLIB)))
    rows = [
        "# Host requests (ops)",
        "",
        "Generated by `python docs/gen_api.py` from each op's one declaration in `runtime/kernel/ops.py`",
        "(the suite checks it is current). A *yielding* request suspends the calling coroutine until its",
        "reply; a *call* (`host.call`) answers at once and works where Lua cannot yield. The handler of op",
        "`X` is the serving class's method `_x`, registered by `Kernel.wire` from the class's `SERVES`. The",
        "last column names the stdlib modules that ask for it (each through the door, `_host.lua`).",
        "",
        "| # | op | kind | signature (arguments: reply) | served by | sent from |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for op in sorted(Op):
        kind = "yields" if op.yields else "call"
        signature = op.signature.replace("|", "\\|")
        where = ", ".join(f"`{s}`" for s in sorted(senders.get(op.name, ()))) or "(the host itself)"
        rows.append(f"| {int(op)} | `{op.name}` | {kind} | {signature} | {served[op]} | {where} |")
    return "\n".join(rows) + "\n"


def main() -> int:
    outputs = {OUT: render(), OPS_OUT: render_ops()}
    if "--check" in sys.argv[1:]:
        stale = [path for path, text in outputs.items() if not path.exists() or path.read_text() != text]
        for path in stale:
            print(f"{path.relative_to(ROOT)} is out of date: run python docs/gen_api.py", file=sys.stderr)
        return 1 if stale else 0
    for path, text in outputs.items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
