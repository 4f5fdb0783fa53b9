"""The curves table (``curves.csv``): every trial's per-task curve, one row per (trial, task).

A search writes it next to ``trials.csv`` (:func:`write_search_curves`, from every trial's own
``result.json``, also after Ctrl-C); the replay bench (``bench/replay.py``) reads it back
and replays searches offline. Columns: ``trial_id``, ``status``, the searched settings (one
column each, in the space's order), ``task`` (tasks done, 1..n), ``val_acc`` and ``test_acc``
(mean accuracy over the tasks seen, as reported after that task: the search's metric and its
test twin) and ``seconds`` (wall seconds of that task). An optional ``seed`` column tells apart
curves of the same settings recorded at different learner seeds.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "curves.csv"
    >>> rows = [CurveRow(trial_id="a", status="COMPLETE", params={"lr": 0.1}, task=1, val_acc=0.9,
    ...                  test_acc=0.88, seconds=2.5)]
    >>> write_curves(path, rows, searched=["lr"])
    >>> table = read_curves(path)
    >>> table.searched, table.rows[0].params, table.rows[0].val_acc
    (['lr'], {'lr': 0.1}, 0.9)
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

from marktune.mark.metrics import METRIC, TIME_ATTR
from marktune.results.evaluation_table import as_float
from marktune.results.files import (RESULT_FILE, TRIAL_DIR_PREFIX, atomic_output, last_per_task, parse_results,
                                    is_remote, task_results)

FIXED_COLUMNS = ("trial_id", "status")
VALUE_COLUMNS = ("task", "val_acc", "test_acc", "seconds")
SEED_COLUMN = "seed"


@dataclass(frozen=True)
class CurveRow:
    """One trial after one task."""

    trial_id: str
    status: str  # the trial's status at the end of the search (COMPLETE, PRUNED, ...)
    params: dict[str, Any]  # the searched settings
    task: int  # tasks done, 1..n
    val_acc: float  # mean validation ACC over the tasks seen
    test_acc: float
    seconds: float  # wall seconds of this task
    seed: int | None = None
    line: int | None = field(default=None, compare=False)  # its line in the file it was read from


@dataclass
class CurvesTable:
    searched: list[str]
    rows: list[CurveRow] = field(default_factory=list)

    def curves(self) -> dict[tuple[str, int | None], list[CurveRow]]:
        """(trial id, seed) -> its rows in task order."""
        out: dict[tuple[str, int | None], list[CurveRow]] = {}
        for row in sorted(self.rows, key=lambda r: (r.trial_id, -1 if r.seed is None else r.seed, r.task)):
            out.setdefault((row.trial_id, row.seed), []).append(row)
        return out


class CurvesError(ValueError):
    """A curves table that cannot be read: the message names the file, the row and what is wrong."""


def write_curves(path: str | Path, rows: Sequence[CurveRow], *, searched: Sequence[str]) -> None:
    """Write ``rows`` atomically; a ``seed`` column only when some row has a seed."""
    with_seed = any(r.seed is not None for r in rows)
    with atomic_output(path, newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*FIXED_COLUMNS, *searched, *VALUE_COLUMNS, *([SEED_COLUMN] if with_seed else [])])
        for r in rows:
            writer.writerow([r.trial_id, r.status, *[_cell(r.params.get(k)) for k in searched], r.task,
                             _num(r.val_acc), _num(r.test_acc), _num(r.seconds),
                             *([r.seed if r.seed is not None else ""] if with_seed else [])])


class SearchedTrial(Protocol):
    """What a curve needs of a trial (``marktune.results.summary.TrialRow`` has it)."""

    trial_id: str
    status: str
    params: dict[str, Any]


def search_curve_rows(trials: Sequence[SearchedTrial],
                      results_of: Callable[[str], Sequence[Mapping[str, Any]]], *,
                      searched: Sequence[str]) -> list[CurveRow]:
    """One row per (trial, task it finished): the trials in the order given, each one's tasks in order.

    ``results_of(trial_id)``: the trial's results, one per task (the last written, as
    :func:`marktune.results.files.task_results` gives them). The values are what the trial
    reported: ``mean_val_acc`` (the search's metric), ``mean_test_acc`` and ``task_seconds``.

    >>> from types import SimpleNamespace as T
    >>> trial = T(trial_id="a", status="PRUNED", params={"lr": 0.1})
    >>> rows = search_curve_rows([trial], lambda _: [{"tasks_done": 1, "mean_val_acc": 0.9}], searched=["lr"])
    >>> rows[0].task, rows[0].val_acc, rows[0].status, math.isnan(rows[0].seconds)
    (1, 0.9, 'PRUNED', True)
    """
    out = []
    for trial in trials:
        for result in results_of(trial.trial_id):
            out.append(CurveRow(trial_id=trial.trial_id, status=trial.status,
                                params={k: trial.params.get(k) for k in searched}, task=int(result[TIME_ATTR]),
                                val_acc=as_float(result.get(METRIC)), test_acc=as_float(result.get("mean_test_acc")),
                                seconds=as_float(result.get("task_seconds"))))
    return out


def write_search_curves(path: str | Path, trials: Sequence[SearchedTrial], *, searched: Sequence[str],
                        experiment: str | Path) -> list[CurveRow]:
    """Write the curves table at ``path`` from every trial's ``result.json`` in ``experiment``
    (its directory, or an ``s3://`` URL), ``trials`` in the order given (a search gives the order
    its trials were made in); returns its rows."""
    rows = search_curve_rows(trials, lambda trial_id: trial_results(experiment, trial_id), searched=searched)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_curves(path, rows, searched=searched)
    return rows


def trial_results(experiment: str | Path, trial_id: str) -> list[dict[str, Any]]:
    """A trial's results, one per task, from its directory in ``experiment`` (a directory or a
    URL); [] when it has none (a trial that never started)."""
    if not is_remote(str(experiment)):
        return task_results(Path(experiment) / f"{TRIAL_DIR_PREFIX}{trial_id}")
    from pyarrow import fs as pafs

    try:
        filesystem, root = pafs.FileSystem.from_uri(str(experiment))
        with filesystem.open_input_stream(f"{root}/{TRIAL_DIR_PREFIX}{trial_id}/{RESULT_FILE}") as f:
            return last_per_task(parse_results(f.readall().decode()))
    except (OSError, ValueError):
        return []


def read_curves(path: str | Path) -> CurvesTable:
    """Read a table :func:`write_curves` wrote; settings come back typed (int, float, bool, str)."""
    path = Path(path)
    with open(path, newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise CurvesError(f"{path} is empty; expected a header {', '.join(FIXED_COLUMNS)}, ...") from None
        missing = [c for c in (*FIXED_COLUMNS, *VALUE_COLUMNS) if c not in header]
        if missing:
            raise CurvesError(f"{path}: the header lacks column(s) {', '.join(missing)}")
        start, end = len(FIXED_COLUMNS), header.index(VALUE_COLUMNS[0])
        searched = header[start:end]
        table = CurvesTable(searched=searched)
        for line, cells in enumerate(reader, start=2):
            if len(cells) != len(header):
                raise CurvesError(f"{path}, line {line}: {len(cells)} cells, the header has {len(header)}")
            record = dict(zip(header, cells))

            def number(column: str, kind: Callable[[str], Any] = _float) -> Any:
                try:
                    return kind(record[column])
                except ValueError:
                    raise CurvesError(f"{path}, line {line} (trial {record['trial_id']}), column {column}: "
                                      f"{record[column]!r} is not a number") from None

            seed = number(SEED_COLUMN, int) if record.get(SEED_COLUMN) else None
            table.rows.append(CurveRow(
                trial_id=record["trial_id"], status=record["status"],
                params={k: _typed(record[k]) for k in searched}, task=number("task", int),
                val_acc=number("val_acc"), test_acc=number("test_acc"), seconds=number("seconds"),
                seed=seed, line=line))
    return table


def _cell(value: Any) -> Any:
    return "" if value is None else value


def _num(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else repr(float(value))


def _float(text: str) -> float:
    return float(text) if text != "" else math.nan


def _typed(text: str) -> Any:
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(text, text)
