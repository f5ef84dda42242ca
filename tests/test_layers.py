"""The package's shape, enforced: import layers (TYPE_CHECKING imports included), no
import cycle, asyncpg internals only in ``_pg``, small modules and short core functions.
The layers are described atop ``asyncpool/_core.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "asyncpool"

# Each module's place, lowest first; a module may import only modules placed at or below
# its own place (equal places: no cycle, checked apart).
LAYERS: dict[str, float] = {
    # leaves
    "_errors": 0,
    "_events": 0,
    "_config": 0,
    "_stats": 0,
    "_tracking": 0,
    "_quiet": 0,
    "_policy": 0,
    "_autosize": 0,
    "_settings_types": 0.5,
    # units: the slot table, the waiter queue, the loop/thread/fork guard, the budget check
    "_slots": 1,
    "_waiters": 1,
    "_guard": 1,
    "_budget": 1,
    "_sizer": 1.5,
    # the asyncpg boundary and the lent connection
    "_pg": 2,
    "_session_api": 2,
    "_connection": 2.1,
    "_wrappers": 2.2,
    # the pool, one layer per job
    "_state": 3.0,
    "_core": 3.1,
    "_workers": 3.2,
    "_upkeep": 3.3,
    "_compat": 3.4,
    "_pool": 3.5,
}
TOP = 4  # __init__, sizing, routing, the CLI, contrib, testing


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports(name: str) -> set[str]:
    """The asyncpool modules ``name`` imports, anywhere in it (TYPE_CHECKING included)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
                targets = [prefix] if node.module else [f"{prefix}.{a.name}" for a in node.names]
            elif node.module and node.module.startswith("asyncpool"):
                targets = [node.module]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names if a.name.startswith("asyncpool")]
        for target in targets:
            while target not in MODULES and "." in target:  # a name, not a module
                target = target.rsplit(".", 1)[0]
            if target in MODULES and target != name:
                found.add(target)
    return found


def place(name: str) -> float:
    short = name.removeprefix("asyncpool.")
    return LAYERS.get(short, TOP)


def test_every_private_core_module_has_a_place() -> None:
    core = {n.removeprefix("asyncpool.") for n in MODULES if n.count(".") == 1}
    unplaced = {
        n for n in core if n.startswith("_") and n not in LAYERS and n not in ("_demo", "_server")
    }
    unplaced -= {"__main__"}
    assert not unplaced, f"give these a layer in tests/test_layers.py: {sorted(unplaced)}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_respect_the_layers(name: str) -> None:
    upward = sorted(m for m in imports(name) if place(m) > place(name))
    assert not upward, f"{name} (layer {place(name)}) imports from above: {upward}"


def test_no_import_cycle() -> None:
    graph = {name: imports(name) for name in MODULES}
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                cycle = [*path[path.index(dep) :], dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, [*path, dep])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n != "asyncpool._pg"))
def test_only_pg_touches_asyncpg_internals(name: str) -> None:
    tree = ast.parse(MODULES[name].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("asyncpg"):
            private = [a.name for a in node.names if a.name.startswith("_")]
            assert not private, f"{name} imports asyncpg internals {private}: go through _pg"
        if isinstance(node, ast.Attribute) and node.attr in (
            "_protocol",
            "_top_xact",
            "_aborted",
            "_transport",
            "_termination_listeners",
        ):
            raise AssertionError(f"{name} reads asyncpg's {node.attr}: go through _pg")


@pytest.mark.parametrize(
    "name", sorted(n for n in MODULES if not n.startswith("asyncpool.testing"))
)
def test_modules_stay_small(name: str) -> None:
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= 500, f"{name} has {lines} lines; split it by job (at most 500)"


CORE = ("_state", "_core", "_workers", "_upkeep", "_pool", "_slots", "_waiters", "_guard")


@pytest.mark.parametrize("short", CORE)
def test_core_functions_are_short(short: str) -> None:
    tree = ast.parse(MODULES[f"asyncpool.{short}"].read_text())
    long = [
        (node.name, node.end_lineno - node.lineno + 1)  # type: ignore[operator]
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > 80  # type: ignore[operator]
    ]
    assert not long, f"functions over 80 lines in {short}: {long}"


def test_pool_class_is_small() -> None:
    tree = ast.parse(MODULES["asyncpool._pool"].read_text())
    (pool,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Pool"]
    lines = pool.end_lineno - pool.lineno + 1  # type: ignore[operator]
    assert lines < 500, lines
