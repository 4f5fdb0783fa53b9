"""Which command owns a folder: a search experiment, an evaluation's runs or a run's output.

Each command writes :data:`MARKER` into its folder before anything else (:func:`claim`), and
never writes into, moves or renames a folder that another kind of command owns, ``--overwrite``
or not (:func:`check_kind`). Folders written before the marker existed are still known by their
files: a search's settings file (``marktune_search.json``, written before its first trial) makes a
search experiment, a run's ``results.json``/``checkpoint.pt``/``config.yaml`` a run.

Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp()) / "exp"
    >>> claim(folder, "search"); folder_kind(folder)
    'search'
    >>> check_kind(folder, "run", flag="--out")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    marktune.tune.folders.ownership.FolderOwned: --out ...exp is a search experiment (...); marktune.run never writes into, moves or renames it, --overwrite or not: give another --out
"""
from __future__ import annotations

import json
from pathlib import Path

from marktune.results.files import OWNER_FILE, SETTINGS_FILE

MARKER = OWNER_FILE  # JSON: {"kind": one of KINDS}
KINDS = {"search": "a search experiment", "evaluation": "an evaluation's runs", "run": "a run's output"}
COMMANDS = {"search": "marktune.search", "evaluation": "marktune.evaluate", "run": "marktune.run"}
RUN_FILES = ("results.json", "checkpoint.pt", "config.yaml")  # what a run writes (marktune.cli.run)


class FolderOwned(ValueError):
    """A folder another kind of command owns."""


def folder_kind(path: Path) -> str | None:
    """The kind of command that owns ``path`` (None: no command's, or not a folder)."""
    path = Path(path)
    if not path.is_dir():
        return None
    try:
        kind = json.loads((path / MARKER).read_text()).get("kind")
        if kind in KINDS:
            return kind
    except (OSError, ValueError, AttributeError):
        pass
    if (path / SETTINGS_FILE).is_file():  # (Tune's state alone does not tell: an evaluation has it too)
        return "search"
    if any((path / name).exists() for name in RUN_FILES):
        return "run"
    return None


def _evidence(path: Path, kind: str) -> str:
    if (path / MARKER).is_file():
        return f"its {MARKER} says so"
    if kind == "search":
        return f"it holds {SETTINGS_FILE}"
    return "it holds " + ", ".join(n for n in RUN_FILES if (path / n).exists())


def check_kind(path: Path, kind: str, *, flag: str) -> None:
    """Refuse ``path`` when a command of another kind owns it (see the module's text)."""
    found = folder_kind(path)
    if found is None or found == kind:
        return
    raise FolderOwned(f"{flag} {path} is {KINDS[found]} ({_evidence(Path(path), found)}); {COMMANDS[kind]} never writes into, "
                      f"moves or renames it, --overwrite or not: give another {flag}")


def check_not_inside(path: Path, *, flag: str, itself: bool = True) -> None:
    """Refuse ``path`` when a folder above it (and, with ``itself``, ``path`` too) is owned by a
    command: a folder nested in an experiment or a run would mix two records."""
    for folder in ((Path(path),) if itself else ()) + tuple(Path(path).parents):
        found = folder_kind(folder)
        if found is not None:
            where = "is" if folder == Path(path) else f"lies inside {folder}, which is"
            raise FolderOwned(f"{flag} {path} {where} {KINDS[found]} ({_evidence(folder, found)}); give {flag} a "
                              "folder of its own")


def claim(path: Path, kind: str) -> None:
    """Make ``path`` (and its parents) and mark it as ``kind``'s, refusing a folder another kind owns."""
    check_kind(path, kind, flag="folder")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if not (path / MARKER).is_file():
        (path / MARKER).write_text(json.dumps({"kind": kind}) + "\n")


__all__ = ["MARKER", "KINDS", "FolderOwned", "folder_kind", "check_kind", "check_not_inside", "claim"]
