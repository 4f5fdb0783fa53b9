"""The package's layers, checked from the source: imports only run down, and privates stay home.

Layers, bottom to top: data < mark < results < tune < cli (docs/architecture.md). A module may
import its own layer or a lower one; the ``python -m marktune.X`` shims at the top may import cli.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "marktune"
LAYERS = ["data", "mark", "results", "tune", "cli"]
MODULES = sorted(PACKAGE.rglob("*.py"))


def _layer(module: str) -> int:
    """The layer of a dotted marktune module (the shims at the package's top are above cli)."""
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    return len(LAYERS)


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, names taken from it, line) for every marktune import, function-local ones too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "marktune":
            names = [a.name for a in node.names]
            if node.module in ("marktune",) or node.module.count(".") == 1 and node.module.split(".")[1] in LAYERS:
                # `from marktune.mark import learner`: the modules named are what is imported
                found += [(f"{node.module}.{n}", [], node.lineno) for n in names]
            else:
                found.append((node.module, names, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "marktune"]
    return found


def test_the_layers_are_what_the_docs_say():
    assert sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()) \
        == sorted(LAYERS)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_only_run_down(path):
    here = _layer(_module_name(path))
    up = [f"line {line}: {module}" for module, _, line in _imports(path) if _layer(module) > here]
    assert not up, f"{path.relative_to(PACKAGE.parent)} imports a higher layer: {up}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_private_name_is_imported_from_another_module(path):
    private = [f"line {line}: {module}.{name}" for module, names, line in _imports(path)
               for name in names if name.startswith("_") and not name.startswith("__")]
    assert not private, f"{path.relative_to(PACKAGE.parent)} takes private names: {private}"


def test_no_module_imports_itself_back_through_another():
    """No circle between two modules (A imports B and B imports A, at any depth of the call)."""
    graph: dict[str, set[str]] = {}
    for path in MODULES:
        name = _module_name(path)
        graph[name] = {m for m, _, _ in _imports(path) if m != name}
    circles = sorted({tuple(sorted((a, b))) for a, deps in graph.items() for b in deps
                      if a in graph.get(b, set())})
    assert not circles, f"import circles: {circles}"
