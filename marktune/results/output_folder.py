"""The rule for a command's output folder: it never writes over another run's record.

``marktune.run`` (below) and ``marktune.evaluate`` (an evaluation's runs, ``--name``) follow it;
a search's own experiment folder has its rules in ``marktune.tune`` (``--resume``, its lock).

A folder holds a run's record when it has any of :data:`RECORD_FILES`. ``run --out DIR`` into
such a folder is refused before any data is loaded (:func:`check_run_folder`), naming what is
there and the three ways on: ``--resume DIR`` to continue it, a new ``--out``, or
``--overwrite``, which moves the old record aside (:func:`move_aside`: renamed, never deleted).

Example:
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "run"
    >>> check_run_folder(out)  # a new folder: nothing to refuse
    >>> out.mkdir(); _ = (out / "results.json").write_text('{"tasks_done": 5, "num_tasks": 5}')
    >>> check_run_folder(out)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    marktune.results.output_folder.RunFolderTaken: --out ...run holds another run's record (results.json: a finished run, 5 of 5 tasks); continue it with --resume ...run, give another --out, or pass --overwrite to move it aside (renamed to run.replaced-<time>, not deleted)
    >>> aside = move_aside(out, stamp="20261206-120000")
    >>> aside.name, (aside / "results.json").exists(), out.exists()
    ('run.replaced-20261206-120000', True, False)
"""
from __future__ import annotations

import json
import time
from pathlib import Path

RECORD_FILES = ("results.json", "checkpoint.pt", "config.yaml")


class RunFolderTaken(ValueError):
    """``--out`` names a folder that holds another run's record."""


def check_run_folder(out: Path) -> None:
    """Refuse ``out`` when it holds a run's record (see the module's text)."""
    found = [name for name in RECORD_FILES if (out / name).exists()]
    if not found:
        return
    raise RunFolderTaken(f"--out {out} holds another run's record ({', '.join(found)}{_progress(out)}); continue "
                         f"it with --resume {out}, give another --out, or pass --overwrite to move it aside "
                         f"(renamed to {out.name}.replaced-<time>, not deleted)")


def _progress(out: Path) -> str:
    try:
        results = json.loads((out / "results.json").read_text())
        done, total = int(results["tasks_done"]), int(results["num_tasks"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    state = "a finished run" if done >= total else "an interrupted run"
    return f": {state}, {done} of {total} tasks"


def check_evaluation_folder(out: Path, *, name: str, ignore: tuple[str, ...] = ()) -> None:
    """Refuse an evaluation's ``--name`` folder ``out`` when it holds anything (another
    evaluation's runs) but the files named in ``ignore`` (its lock)."""
    if not out.is_dir() or not [p for p in out.iterdir() if p.name not in ignore]:
        return
    raise RunFolderTaken(f"--name {name}: {out} holds another evaluation's runs; give another --name, leave "
                         f"--name out (a new <experiment>-eval folder is made), or pass --overwrite to move it "
                         f"aside (renamed to {out.name}.replaced-<time>, not deleted)")


def move_aside(out: Path, *, stamp: str | None = None) -> Path:
    """Rename ``out`` to ``<out>.replaced-<time>`` (a number added if that exists too); the new path."""
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    aside = out.with_name(f"{out.name}.replaced-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = out.with_name(f"{out.name}.replaced-{stamp}-{n}")
    out.rename(aside)
    return aside


__all__ = ["RECORD_FILES", "RunFolderTaken", "check_run_folder", "check_evaluation_folder", "move_aside"]
