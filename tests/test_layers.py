"""The package's floors: imports only go down, and no two modules import each other.

docs/architecture.md ("Floors") draws the same table. Every import counts,
also one made inside a function to keep a start-up light: a lazy import
that climbs a floor is still a dependency on the floor above.
"""

from __future__ import annotations

import ast
from pathlib import Path

import parallax

PACKAGE = Path(parallax.__file__).parent

#: module (relative to the package, "" for __init__) -> its floor, 1 = top
FLOORS: dict[str, int] = {
    "": 1, "__main__": 1, "_api": 1, "_executor": 1, "_cli": 1, "_demo": 1, "testing": 1,
    "_launch": 2,
    "_run": 3, "_auto": 3, "_config": 3, "_pools": 3, "_progress": 3, "_stats": 3, "_recorder": 3,
    "_chunking": 3,
    "backends": 4, "backends._base": 4, "backends._registry": 4, "backends._serial": 4,
    "backends._thread": 4, "backends._freethreaded": 4, "backends._process": 4,
    "backends._asyncio": 4, "backends._dask": 4, "backends._dask_task": 4, "backends._exit": 4,
    "_worker": 5, "_timeouts": 5, "_mark": 5, "_protocol": 5, "_calls": 5,
    "_serialize": 5, "_wire": 5, "_shm": 5, "_procworker": 5, "_onimport": 5, "_logforward": 5,
    "_template": 5, "_keeper": 5,
    "_units": 6, "_errors": 6, "_broken": 6, "_host": 6, "_records": 6,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """The parallax modules ``path`` imports, as names relative to the package."""
    name = _module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    package = [part for part in package if part]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.split(".")[0] == "parallax":
                target = node.module.split(".")[1:]
            else:
                continue
            if node.module:
                found.add(".".join(target))
            for alias in node.names:  # "from . import _host" imports a module
                candidate = ".".join([*target, alias.name])
                if candidate in FLOORS:
                    found.add(candidate)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "parallax":
                    found.add(".".join(parts[1:]))
    found.discard(name)
    return {module for module in found if module in FLOORS}


def _graph() -> dict[str, set[str]]:
    return {_module_name(path): _imports(path) for path in PACKAGE.rglob("*.py")}


def test_every_module_has_a_floor() -> None:
    assert set(_graph()) == set(FLOORS), "add new modules to FLOORS and to docs/architecture.md"


def test_imports_only_go_down_or_sideways() -> None:
    upward = [
        f"{module} (floor {FLOORS[module]}) imports {target} (floor {FLOORS[target]})"
        for module, targets in _graph().items()
        for target in targets
        # a package imports its own submodules to re-export them
        if FLOORS[target] < FLOORS[module] and not target.startswith(f"{module}.")
    ]
    assert upward == []


def test_no_import_circles() -> None:
    graph = _graph()
    done: set[str] = set()
    circles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        # depth-first; a module on the current path reached again is a circle
        for target in sorted(graph[module]):
            if target in path:
                circles.append([*path[path.index(target):], target])
            elif target not in done:
                visit(target, [*path, target])
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    assert circles == []
