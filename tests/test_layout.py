"""The host's layout holds: no import cycles between its modules, and the tools (the CLI, the supervisor,
the test runner, the load generator, the scaffolder, the console client) reach the runtime only through
its public surfaces, never a service's internals. Read from the source (module-level imports; an import
inside a function is a deliberate lazy one), so a change that breaks either fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.one_engine

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "runtime"


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, known: dict[str, Path], lazy: bool = False) -> set[str]:
    """The runtime modules ``path`` imports when it is loaded (module level, not under TYPE_CHECKING), or
    with ``lazy`` anywhere in it."""
    deps: set[str] = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree) if lazy else tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.Import):
            deps.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module in known:
            submodules = {f"{node.module}.{a.name}" for a in node.names} & known.keys()
            deps.update(submodules)
            if len(submodules) < len(node.names):  # (names from the package itself: its __init__ runs)
                deps.add(node.module)
    return deps


def test_the_runtime_has_no_import_cycles() -> None:
    known = modules()
    graph = {name: imports(path, known) - {name} for name, path in known.items()}
    state: dict[str, int] = {}  # 1: on the path being walked, 2: done
    path: list[str] = []
    cycles: list[list[str]] = []

    def walk(name: str) -> None:
        state[name] = 1
        path.append(name)
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep) :], dep])
            elif dep not in state:
                walk(dep)
        path.pop()
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name)
    assert len(graph) > 40 and graph["runtime.host"], graph  # (the graph was read)
    assert not cycles, cycles


TOOLS = ["runtime.cli", "runtime.supervisor", "runtime.testrunner", "runtime.loadgen", "runtime.scaffold",
         "runtime.console.client"]  # fmt: skip
# what a tool may import: the public surface, configuration, and the parts made for tools
PUBLIC = {"runtime", "runtime.host", "runtime.config", "runtime.errors", "runtime.hostfn", "runtime.logs",
          "runtime.listeners", "runtime.lua.stdlib", "runtime.console", "runtime.console.files",
          "runtime.console.client", "runtime.lua.engine", *TOOLS}  # fmt: skip


def test_the_tools_import_public_surfaces_only() -> None:
    known = modules()
    for tool in TOOLS:
        inner = imports(known[tool], known, lazy=True) - PUBLIC
        assert not inner, f"{tool} imports {sorted(inner)}: add what it needs to a public surface instead"
    assert imports(known["runtime.cli"], known, lazy=True) >= {"runtime.host", "runtime.config"}
