"""The rule for a command's output folder: it never writes over another run's record.

``marktune.run`` (below), ``marktune.evaluate`` (an evaluation's runs, ``--name``) and
``marktune.report`` (``--out``, :func:`check_report_file`) follow it; a search's own experiment
folder has its rules beside this module (:mod:`marktune.tune.folders`).

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
    marktune.tune.folders.output.RunFolderTaken: --out ...run holds another run's record (results.json: a finished run, 5 of 5 tasks); continue it with --resume ...run, give another --out, or pass --overwrite to move it aside (renamed to run.replaced-<time>, not deleted)
    >>> aside = move_aside(out, stamp="20261206-120000")
    >>> aside.name, (aside / "results.json").exists(), out.exists()
    ('run.replaced-20261206-120000', True, False)
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from marktune.results.files import SETTINGS_FILE  # a search's settings: the folder is an experiment

RECORD_FILES = ("results.json", "checkpoint.pt", "config.yaml")
REPORT_TITLE = "<title>marktune report:"  # what the head of a page marktune.report wrote holds


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


def check_report_file(out: Path, *, experiment: Path) -> None:
    """Refuse ``report --out FILE`` when FILE is a folder or a file that marktune.report did not
    write, or when FILE's folder holds another run's record or another experiment (the
    experiment's own folder is where its report goes by default)."""
    def refuse(what: str) -> None:
        raise RunFolderTaken(f"--out {out}: {what}; give another --out (a new .html file), or leave --out out "
                             f"to write {experiment / 'report.html'}")

    if out.is_dir():
        refuse("is a folder")
    if out.exists():
        try:
            with open(out, encoding="utf-8", errors="replace") as f:
                head = f.read(4096)
        except OSError as err:
            refuse(f"cannot be read ({err.strerror})")
        if REPORT_TITLE not in head:
            refuse("exists and is not a marktune report (it would be replaced)")
    folder = out.parent
    if folder.resolve() == experiment.resolve():
        return
    found = [name for name in (*RECORD_FILES, SETTINGS_FILE) if (folder / name).exists()]
    if found:
        refuse(f"{folder} holds another {'experiment' if SETTINGS_FILE in found else 'run'}'s record "
               f"({', '.join(found)})")


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


__all__ = ["RECORD_FILES", "RunFolderTaken", "check_run_folder", "check_evaluation_folder", "check_report_file",
           "move_aside"]
