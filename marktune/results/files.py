"""The files of a search's experiment directory: their names, and the one reader of each.

An experiment directory (``<storage>/<name>``) holds, as Tune and the search write them:

* ``marktune_search.json`` (:data:`SETTINGS_FILE`): the search's settings (space, ``--set``,
  protocol, study); :func:`read_settings`.
* ``trial_<id>/`` (:data:`TRIAL_DIR_PREFIX`): ``params.json`` (:data:`PARAMS_FILE`, the trial's
  config, with the runtime settings under :data:`RUNTIME_KEY`) and ``result.json``
  (:data:`RESULT_FILE`: one JSON line per finished task); :func:`read_results`,
  :func:`parse_results`.
* ``experiment_state-*.json`` (:data:`STATE_GLOB`), ``trials.csv``, ``best_config.yaml``.

Example:
    >>> parse_results('{"tasks_done": 1, "mean_val_acc": 0.5}\\n{"tasks_done": 2, "mean_va')
    [{'tasks_done': 1, 'mean_val_acc': 0.5}]
    >>> last_per_task([{"tasks_done": 2, "v": 1}, {"tasks_done": 1}, {"tasks_done": 2, "v": 2}])
    [{'tasks_done': 1}, {'tasks_done': 2, 'v': 2}]
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from marktune.mark.metrics import TIME_ATTR

SETTINGS_FILE = "marktune_search.json"  # the search's settings, where the search writes them
RESULT_FILE = "result.json"  # a trial's reported results, one JSON line per finished task
PARAMS_FILE = "params.json"  # a trial's config, as Tune wrote it
TRIAL_DIR_PREFIX = "trial_"  # trial_<id>: one directory per trial
STATE_GLOB = "experiment_state-*.json"  # Tune's experiment state, one file per snapshot
TRIALS_TABLE = "trials.csv"  # written by the search at its end
BEST_CONFIG_FILE = "best_config.yaml"  # the best complete trial, written by the search at its end
RUNTIME_KEY = "marktune_runtime"  # a trial config's runtime settings (as marktune.tune.trainable reads them)


def read_settings(experiment_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The search's ``marktune_search.json`` as a dict, or None (none written, unreadable, not a mapping)."""
    try:
        data = json.loads((Path(experiment_dir) / SETTINGS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def parse_results(text: str) -> list[dict[str, Any]]:
    """The results in a ``result.json``'s text, in the order written: every JSON line that is a
    mapping with a task count. A torn last line (the writer killed mid-write) is skipped."""
    out = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and TIME_ATTR in record:
            out.append(record)
    return out


def read_results(path: str | os.PathLike) -> list[dict[str, Any]]:
    """:func:`parse_results` of the file at ``path``; [] when it cannot be read."""
    try:
        text = Path(path).read_text()
    except OSError:
        return []
    return parse_results(text)


def last_per_task(results: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One result per task, the last written, in task order.

    A retried trial (its worker lost) reports its tasks again from its checkpoint."""
    by_task: dict[int, dict[str, Any]] = {}
    for record in results:
        by_task[int(record[TIME_ATTR])] = record
    return [by_task[k] for k in sorted(by_task)]


def task_results(trial_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """A trial directory's results, one per task (:func:`last_per_task` of its ``result.json``)."""
    return last_per_task(read_results(Path(trial_dir) / RESULT_FILE))
