"""The package's layers only look down, and no import cycle can come back.

io <- engine <- executors <- runs <- flows / cli: a module may import the foundation
(`config`, `errors`, `schema`, `report`), its own package, and lower layers only. Every import
counts, also the lazy ones inside functions (the heavy ones live there).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: Layer of each package (lower numbers are lower layers); modules at the top of `bertetl`
#: not listed here are the foundation (0).
LAYERS = {
    "bertetl.io": 1,
    "bertetl.engine": 2,
    "bertetl.executors": 3,
    "bertetl.reports": 3,
    "bertetl.runs": 4,
    "bertetl.training": 4,
    "bertetl.evaluate": 4,
    "bertetl.observe": 4,
    "bertetl.flows": 5,
    "bertetl.bench": 5,
    "bertetl.cli": 6,
    "bertetl.sql": 0,
}
#: The public facade (`bertetl.enrich`, `bertetl.train`) and `python -m bertetl` sit on top.
TOP = {"bertetl", "bertetl.__main__"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((REPO / "bertetl").rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        found[".".join(p for p in parts if p != "__init__")] = path
    for path in sorted((REPO / "flows").rglob("*.py")):
        parts = ("bertetl", *path.relative_to(REPO).with_suffix("").parts)
        found[".".join(p for p in parts if p != "__init__")] = path
    return found


MODULES = _modules()


def layer(module: str) -> int:
    if module in TOP:
        return 99
    for package, rank in LAYERS.items():
        if module == package or module.startswith(package + "."):
            return rank
    return 0


def imports(path: Path) -> set[str]:
    """The `bertetl` modules a file imports (`from bertetl.x import y` names `bertetl.x.y`
    when that is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name in MODULES}


def test_the_package_is_found() -> None:
    assert {"bertetl.engine.pipeline", "bertetl.io.read", "bertetl.flows.enrich"} <= set(MODULES)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_look_down(module: str) -> None:
    own = layer(module)
    package = module.rsplit(".", 1)[0]
    upward = [
        name
        for name in imports(MODULES[module])
        if layer(name) > own and not name.startswith(package + ".") and name != package
    ]
    assert not upward, f"{module} (layer {own}) imports higher layers: {upward}"


def test_no_import_cycle() -> None:
    graph = {module: imports(path) - {module} for module, path in MODULES.items()}
    # a package's __init__ re-exporting its own modules is not a cycle of the design
    for module in graph:
        graph[module] = {n for n in graph[module] if not module.startswith(n + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for name in sorted(graph[module]):
            if state.get(name) == 1:
                cycle = [*stack[stack.index(name) :], name]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if name not in state:
                visit(name)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_only_the_ray_executor_imports_ray() -> None:
    for module, path in MODULES.items():
        if module.startswith("bertetl.executors.ray"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not [n for n in names if n.split(".")[0] in {"ray", "prefect_ray"}], module


def test_destinations_import_nothing_above_io() -> None:
    """The destination package sits in `io`: it never reaches up into runs, flows or the CLI
    (nor the engine or the executors that write through it)."""
    package = [m for m in MODULES if m.startswith("bertetl.io.destinations")]
    assert package
    for module in package:
        above = [name for name in imports(MODULES[module]) if layer(name) > layer(module)]
        assert not above, f"{module} imports {above}"


#: Where code above `bertetl.io` may still tell kinds of place apart by hand, and why: each
#: asks about a user's given path or a model table, not about a run's DEST.
KIND_CHECKS_ALLOWED = {
    "bertetl.cli.enrich": "--report's path against the SOURCE/DEST strings the user gave",
    "bertetl.evaluate.run": "--out against an evaluated TABLE on an object store",
}
KIND_CHECK = re.compile(r"\bis_remote\(|\bis_table\(|isinstance\([^)]*\b(Location|TableRef)\b")


def test_no_module_above_io_tells_destination_kinds_apart() -> None:
    """Above `bertetl.io`, code asks a destination (`bertetl.io.destinations`) what it can do
    instead of asking what it is: at most the few allowed sites check a kind by hand."""
    found = {}
    for module, path in MODULES.items():
        if module.startswith("bertetl.io"):
            continue
        hits = KIND_CHECK.findall(path.read_text(encoding="utf-8"))
        if hits:
            found[module] = len(hits)
    assert set(found) <= set(KIND_CHECKS_ALLOWED), found
    assert sum(found.values()) <= 5, found
