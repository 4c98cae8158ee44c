"""Write docs/api.md, one entry per public stdlib function, from the LuaLS annotations in stdlib_lua/.

    python docs/gen_api.py          # rewrite docs/api.md
    python docs/gen_api.py --check  # exit 1 if docs/api.md is not what the annotations say (the suite)

An entry is the function's syntax (as the source spells it), whether it yields (``---@async``), its
parameters and results with their types, and the text of its ``---`` comment (where the error strings and
examples are written). docs/reference.md stays the hand-written guide; this file cannot drift from the code.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STDLIB = ROOT / "stdlib_lua" / "moonlet"
OUT = ROOT / "docs" / "api.md"
PUBLIC = re.compile(r"^function ([A-Za-z_]\w*)([.:])([a-z]\w*)\(([^)]*)\)", re.M)


def module_name(path: Path) -> str:
    return "moonlet." + ".".join(path.relative_to(STDLIB).with_suffix("").parts)


def entries(path: Path) -> list[str]:
    source = path.read_text()
    lines = source.splitlines()
    short = module_name(path).split(".")[1]  # (moonlet.http.client's functions are http.*)
    out = []
    for m in PUBLIC.finditer(source):
        owner, sep, name, params = m.groups()
        line = source[: m.start()].count("\n")
        notes: list[str] = []
        k = line - 1
        while k >= 0 and lines[k].startswith("---"):
            notes.insert(0, lines[k])
            k -= 1
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
        entry.append("")
        entry.append(" ".join(t for t in text if t) or "(no description)")
        out.append("\n".join(entry))
    return out


def render() -> str:
    parts = [
        "# API index",
        "",
        "Generated from the annotations in `stdlib_lua/` by `python docs/gen_api.py` (the test suite checks",
        "it is current): one entry per public function, with its syntax, whether it yields, its parameters",
        "and results as annotated, and its description. The guide with examples and error strings is",
        "`docs/reference.md`.",
    ]
    for path in sorted(STDLIB.rglob("*.lua")):
        if path.stem.startswith("_"):
            continue
        found = entries(path)
        if found:
            parts += ["", f"## {module_name(path)}", "", "\n\n".join(found)]
    return "\n".join(parts) + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv[1:]:
        if not OUT.exists() or OUT.read_text() != text:
            print("docs/api.md is out of date: run python docs/gen_api.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
