"""Read a search's experiment back from its folder: Tune's state, each trial's files, the search's own records.

:func:`load_experiment` builds an :class:`~marktune.results.experiment.Experiment` from
``experiment_state-*.json`` (Tune's), each ``trial_<id>/`` (``params.json``, ``result.json``),
and, when present, ``trials.csv`` and ``marktune_search.json`` (the search's); a trial Tune ran
whose folder is gone is MISSING. Nothing here needs Ray.
"""
from __future__ import annotations

import csv
import glob
import json
import os
from pathlib import Path
from typing import Any

from marktune.mark.config import ConfigError, MarkConfig
from marktune.results.confirmation import ConfirmationError, read_confirmation
from marktune.results.experiment import Experiment, ExperimentError, Trial
from marktune.results.files import (PARAMS_FILE, RUNTIME_KEY, STATE_GLOB, TRIAL_DIR_PREFIX, TRIALS_TABLE,
                                    checkpoint_tasks, is_remote, task_results)
from marktune.results.status import LIVE_TUNE_STATUSES, TrialStatus, decide_status


def load_experiment(path: str | os.PathLike) -> Experiment:
    """Read an experiment directory; raise ExperimentError when it is missing or foreign."""
    root = _local_directory(path)
    states = sorted(glob.glob(str(root / STATE_GLOB)))
    trial_dirs = sorted(p for p in root.glob(f"{TRIAL_DIR_PREFIX}*") if (p / PARAMS_FILE).is_file())
    if not states and not trial_dirs:
        raise ExperimentError(
            f"{root} is not a marktune search experiment: it has no experiment_state-*.json and no "
            "trial_*/params.json. Give the directory <storage>/<name> that `python -m marktune.search` made.")

    state = _read_state(Path(states[-1])) if states else {}
    trials = _trials_in_folders(root, trial_dirs)
    with_folder = set(trials)
    for tid, info in state.items():
        if info.get("trainable_name") not in (None, "train_mark_sequence"):
            raise ExperimentError(f"{root} is not a marktune search experiment: its trials run "
                                  f"{info.get('trainable_name')!r}, not train_mark_sequence")
        if tid not in trials:
            config = info.get("config") or {}
            if not isinstance(config, dict):
                config = {}
            trials[tid] = _trial(tid, config, [])
        trial = trials[tid]
        trial.tune_status = str(info.get("status") or "")
        if info.get("error_filename"):
            trial.error = _error_text(root, info)
    if not trials:
        raise ExperimentError(f"{root}: the search has not started any trial yet")

    num_tasks = _num_tasks(trials.values())
    for trial in trials.values():
        trial.status = _status(trial, num_tasks, has_state=bool(state))
        if trial.trial_id not in with_folder and trial.tune_status in ("TERMINATED", "ERROR"):
            trial.status = "MISSING"  # it ran, and its record is gone: not a trial that stopped early
            trial.error = f"its folder {TRIAL_DIR_PREFIX}{trial.trial_id} is missing from {root}"
        if trial.status == "ERROR" and not trial.error:
            trial.error = _error_text(root / f"{TRIAL_DIR_PREFIX}{trial.trial_id}", {})

    searched = _searched(root, state)
    if searched is None:  # no state and no trials.csv: the settings that vary
        searched = _varying(trials.values())
    benchmarks = {t.config.get("benchmark") for t in trials.values() if t.config}
    if len(benchmarks) != 1:
        raise ExperimentError(f"{root}: trials disagree on the benchmark ({sorted(map(str, benchmarks))})")
    exp = Experiment(path=root, name=root.name, trials=list(trials.values()), searched=searched,
                     num_tasks=num_tasks, benchmark=str(benchmarks.pop()), space_name=None,
                     has_state=bool(state))
    try:  # checked once here: what reads it later trusts it
        read_confirmation(root, complete={t.trial_id: t.config for t in trials.values() if t.status == "COMPLETE"})
    except ConfirmationError as err:
        raise ExperimentError(str(err)) from None
    return exp


def _local_directory(path: str | os.PathLike) -> Path:
    """The experiment directory, absolute; a remote URL, a missing path or a file refused in words."""
    text = str(path)
    if is_remote(text):
        raise ExperimentError(f"{text}: give a local directory (copy it down first, e.g. "
                              f"`aws s3 sync {text} results/{text.rstrip('/').rsplit('/', 1)[-1]}`)")
    root = Path(text).expanduser()
    if not root.exists():
        raise ExperimentError(f"no experiment directory at {root}")
    if not root.is_dir():
        raise ExperimentError(f"{root} is a file, not an experiment directory")
    return root.resolve()


def _trials_in_folders(root: Path, trial_dirs: list[Path]) -> dict[str, Trial]:
    """Each trial folder's trial (settings, task results, checkpoints); a folder whose params.json
    runners.mark_sequence did not write makes the directory foreign."""
    trials: dict[str, Trial] = {}
    for tdir in trial_dirs:
        try:
            params = json.loads((tdir / PARAMS_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            params = None
        if not isinstance(params, dict) or "benchmark" not in params or RUNTIME_KEY not in params:
            raise ExperimentError(
                f"{root} is not a marktune search experiment: {tdir.name}/{PARAMS_FILE} has no "
                f"'benchmark' and '{RUNTIME_KEY}' (it was not made by runners.mark_sequence)")
        tid = tdir.name[len(TRIAL_DIR_PREFIX):]
        trials[tid] = _trial(tid, params, task_results(tdir))
        trials[tid].checkpoint_tasks = checkpoint_tasks(tdir)
    return trials


def _trial(tid: str, params: dict[str, Any], results: list[dict[str, Any]]) -> Trial:
    return Trial(trial_id=tid, status="", config=MarkConfig.settings_of(params),
                 runtime=dict(params.get(RUNTIME_KEY) or {}), results=results)


def _read_state(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ExperimentError(f"{path} cannot be read: {err}") from None
    out = {}
    for item in data.get("trial_data") or []:
        try:
            info = json.loads(item[0])
            run = json.loads(item[1]) if len(item) > 1 else {}
        except (TypeError, ValueError, IndexError):
            continue
        tid = str(info.get("trial_id"))
        out[tid] = {"status": info.get("status"), "trainable_name": info.get("trainable_name"),
                    "config": info.get("config"), "evaluated_params": info.get("evaluated_params"),
                    "error_filename": run.get("error_filename"), "relative_logdir": info.get("relative_logdir")}
    return out


def _num_tasks(trials) -> int:
    for t in trials:
        for r in reversed(t.results):
            if r.get("num_tasks"):
                return int(r["num_tasks"])
    for t in trials:
        if t.config:
            try:
                return MarkConfig.from_dict(t.config).tasks
            except ConfigError:
                continue
    return 0


def _status(trial: Trial, num_tasks: int, *, has_state: bool) -> str:
    # without Tune's state an ASHA stop cannot be told from an interruption: both read as unfinished;
    # a trial Tune's state does not list and that never reported is missing, one that did is pruned
    interrupted = (trial.tune_status in LIVE_TUNE_STATUSES or not has_state
                   or (not trial.results and not trial.tune_status))
    return decide_status(errored=trial.tune_status == "ERROR" or bool(trial.error), tasks_done=trial.tasks_done,
                         num_tasks=num_tasks, interrupted=interrupted, never_reported=TrialStatus.MISSING).value


def _error_text(root: Path, info: dict[str, Any]) -> str:
    name = info.get("error_filename") or "error.txt"
    rel = info.get("relative_logdir")
    candidates = [root / name] + ([root / rel / name] if rel else [])
    for path in candidates:
        try:
            lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
        except OSError:
            continue
        return lines[-1] if lines else "error"
    return "error (no error file)"


def _searched(root: Path, state: dict[str, dict[str, Any]]) -> list[str] | None:
    for info in state.values():
        params = info.get("evaluated_params")
        if isinstance(params, dict) and params:
            return list(params)
    table = root / TRIALS_TABLE
    if table.is_file():
        with open(table, newline="") as f:
            head = next(csv.reader(f), [])
        if "bwt" in head and "error" in head:
            return head[head.index("bwt") + 1: head.index("error")]
    return None


def _varying(trials) -> list[str]:
    configs = [t.config for t in trials if t.config]
    keys = sorted({k for c in configs for k in c})
    return [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]
