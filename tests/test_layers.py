"""The package's layers, checked from the source: imports only run down, and privates stay home.

Layers, bottom to top: data < mark < results < runners < tune < replay < cli (docs/architecture.md). All
but ``runners`` are subpackages of ``marktune``; ``runners`` (what each trial actor runs) is a
top-level package of its own. A module may import its own layer or a lower one; the
``python -m marktune.X`` shims at the top may import cli.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "marktune"
RUNNERS = ROOT / "runners"
LAYERS = ["data", "mark", "results", "runners", "tune", "replay", "cli"]
TOP_LEVEL = ("marktune", "runners")  # the installed packages (pyproject.toml)
MODULES = sorted([*PACKAGE.rglob("*.py"), *RUNNERS.rglob("*.py")])


def _layer(module: str) -> int:
    """The layer of a dotted module (runners.*, marktune.<layer>.*; the shims at marktune's top
    are above cli)."""
    parts = module.split(".")
    if parts[0] == "runners":
        return LAYERS.index("runners")
    if len(parts) >= 2 and parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    return len(LAYERS)


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, names taken from it, line) for every marktune or runners import, function-local
    ones too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] in TOP_LEVEL:
            names = [a.name for a in node.names]
            if node.module in TOP_LEVEL or node.module.count(".") == 1 and node.module.split(".")[1] in LAYERS:
                # `from marktune.mark import learner`: the modules named are what is imported
                found += [(f"{node.module}.{n}", [], node.lineno) for n in names]
            else:
                found.append((node.module, names, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] in TOP_LEVEL]
    return found


def test_the_layers_are_what_the_docs_say():
    assert sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()) \
        == sorted(layer for layer in LAYERS if layer != "runners")
    assert (RUNNERS / "__init__.py").exists()


def test_the_runners_are_installed_with_the_package():
    """Every Ray worker imports the runner as it imports marktune: from the installed packages."""
    import tomllib

    found = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert all(any(f"{top}*" == pattern for pattern in found["include"]) for top in TOP_LEVEL), found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_only_run_down(path):
    here = _layer(_module_name(path))
    up = [f"line {line}: {module}" for module, _, line in _imports(path) if _layer(module) > here]
    assert not up, f"{path.relative_to(ROOT)} imports a higher layer: {up}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_name_is_imported_from_another_module(path):
    private = [f"line {line}: {module}.{name}" for module, names, line in _imports(path)
               for name in names if name.startswith("_") and not name.startswith("__")]
    assert not private, f"{path.relative_to(ROOT)} takes private names: {private}"


def test_no_module_imports_itself_back_through_another():
    """No circle between two modules (A imports B and B imports A, at any depth of the call)."""
    graph: dict[str, set[str]] = {}
    for path in MODULES:
        name = _module_name(path)
        graph[name] = {m for m, _, _ in _imports(path) if m != name}
    circles = sorted({tuple(sorted((a, b))) for a, deps in graph.items() for b in deps
                      if a in graph.get(b, set())})
    assert not circles, f"import circles: {circles}"


# ---------------------------------------------------------------- sizes that read
MODULE_LIMIT = 400  # lines: a module a reader takes in at once (issue 49)
# not split yet, each at most its size when the limit came in: they may shrink, never grow (none left)
OVER_THE_LIMIT: dict[str, int] = {}


def test_no_module_grows_past_the_limit():
    over = {}
    for path in MODULES:
        lines = len(path.read_text().splitlines())
        name = (path.relative_to(PACKAGE) if path.is_relative_to(PACKAGE) else path.relative_to(ROOT)).as_posix()
        allowed = OVER_THE_LIMIT.get(name, MODULE_LIMIT)
        if lines > allowed:
            over[name] = (lines, allowed)
    assert not over, (f"over {MODULE_LIMIT} lines (or past the size they had when the limit came in): "
                      + ", ".join(f"{n} {lines} > {allowed}" for n, (lines, allowed) in over.items())
                      + "; split what a reader would look for by name")
    shrunk = [n for n, size in OVER_THE_LIMIT.items() if len((PACKAGE / n).read_text().splitlines()) <= MODULE_LIMIT]
    assert not shrunk, f"{', '.join(shrunk)} now within {MODULE_LIMIT} lines: take them off OVER_THE_LIMIT"
