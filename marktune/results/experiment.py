"""A finished or interrupted search as read from its experiment directory (no Ray needed).

:class:`Experiment` and its :class:`Trial` s, as
:func:`marktune.results.experiment_reader.load_experiment` reads them; shared by
``python -m marktune.evaluate`` and ``python -m marktune.report``. What is read:

* ``trial_<id>/params.json``: the trial's config as Tune wrote it (learner settings plus
  ``marktune_runtime``); ``trial_<id>/result.json``: one JSON line per finished task.
* ``experiment_state-*.json`` (the newest): each trial's status (``RUNNING``, ``PENDING``,
  ``TERMINATED``, ``ERROR``), its error file and the names of the searched settings
  (``evaluated_params``). Trials listed there without a directory or a result never reported.
* ``trials.csv`` (written by the search at its end) when present: its columns between
  ``bwt`` and ``error`` name the searched settings too.

A trial's status here: ``COMPLETE`` (reported every task), ``PRUNED`` (stopped early by ASHA),
``ERROR``, ``RUNNING`` (unfinished: the search was interrupted while it ran or waited),
``MISSING`` (never reported anything).

The search space (``Experiment.space``, ``space_name``, ``overrides``) is left unset here:
spaces live a layer up, and ``marktune.tune.spaces.recognise_space`` (or
``load_experiment_with_space``) fills them in.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from marktune.mark.config import MarkConfig
from marktune.mark.metrics import METRIC, TIME_ATTR
from marktune.results.confirmation import read_confirmation
from marktune.results.files import BEST_CONFIG_FILE, TRIAL_DIR_PREFIX, read_settings
from marktune.results.noise import SeedNoise, Ties, find_ties, scored_from_result
from marktune.results.objectives import (SINGLE, Objective, ObjectiveError, minimised, nondominated_ranks,
                                         objective_values, parse_objectives)


class ExperimentError(ValueError):
    """The directory is missing or is not a marktune search; the message says which."""


@dataclass
class Trial:
    trial_id: str
    status: str  # COMPLETE, PRUNED, ERROR, RUNNING, MISSING
    config: dict[str, Any]  # learner settings only (MarkConfig keys)
    runtime: dict[str, Any]
    results: list[dict[str, Any]] = field(default_factory=list)  # one per reported task
    error: str = ""
    tune_status: str = ""  # as experiment_state says
    checkpoint_tasks: int = 0  # tasks its newest checkpoint holds (0: unknown, or none)

    @property
    def tasks_done(self) -> int:
        return int(self.results[-1].get(TIME_ATTR, 0)) if self.results else 0

    def last(self, key: str) -> float:
        if not self.results:
            return math.nan
        value = self.results[-1].get(key)
        return float(value) if isinstance(value, (int, float)) else math.nan

    @property
    def val_acc(self) -> float:
        return self.last(METRIC)

    @property
    def test_acc(self) -> float:
        return self.last("mean_test_acc")

    @property
    def bwt(self) -> float:
        return self.last("bwt_test")

    def curve(self) -> list[float]:
        """Mean validation accuracy after each recorded task (the search metric); see :meth:`points`."""
        return [value for _, value in self.points()]

    def points(self) -> list[tuple[int, float]]:
        """(task number, mean validation accuracy after it) for each recorded task: a task whose
        row is lost (a deleted or cut ``result.json``) is absent, not shifted."""
        return [(int(r[TIME_ATTR]), float(r[METRIC])) for r in self.results if METRIC in r]

    def missing_tasks(self) -> list[int]:
        """Task numbers up to the last recorded one (or its checkpoint's) without a recorded result."""
        recorded = {int(r[TIME_ATTR]) for r in self.results}
        return [t for t in range(1, max(self.tasks_done, self.checkpoint_tasks) + 1) if t not in recorded]

    def matrix(self, split: str = "test") -> list[list[float]]:
        """The accuracy matrix as reported so far: row t-1 = after task t (empty where lost)."""
        rows: list[list[float]] = [[] for _ in range(self.tasks_done)]
        for r in self.results:
            rows[int(r[TIME_ATTR]) - 1] = list(r.get(f"{split}_row") or [])
        return rows


@dataclass
class Experiment:
    path: Path
    name: str
    trials: list[Trial]
    searched: list[str]
    num_tasks: int
    benchmark: str
    # the search space, once marktune.tune.spaces.recognise_space has recognised it (else None)
    space_name: str | None
    space: Any = None  # marktune.tune.spaces.SearchSpace or None
    overrides: dict[str, Any] = field(default_factory=dict)  # shared settings that differ from the space's
    has_state: bool = True
    running: str = ""  # who runs the search now (the caller reads the experiment's lock); "" when none

    def by_status(self, *statuses: str) -> list[Trial]:
        return [t for t in self.trials if t.status in statuses]

    def ranked(self) -> list[Trial]:
        """Complete trials first (best validation first), then the others, as the search's table."""
        order = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "ERROR": 3, "MISSING": 4}
        return sorted(self.trials, key=lambda t: (order.get(t.status, 9), -t.tasks_done,
                                                  -(t.val_acc if math.isfinite(t.val_acc) else -1)))

    def best_complete(self, k: int = 1) -> list[Trial]:
        done = [t for t in self.trials if t.status == "COMPLETE" and math.isfinite(t.val_acc)]
        # a tie on validation ACC (common on easy benchmarks) goes to the trial the search wrote
        # into best_config.yaml, so that "best 1" everywhere is the configuration that file holds
        chosen = _best_config_trial(self.path)
        # after a confirmation stage its finalists come first, best mean over their seeds first
        confirmed = read_confirmation(self.path)
        ranking = {tid: i for i, tid in enumerate(confirmed.verdict.get("ranking", []) if confirmed else [])}
        return sorted(done, key=lambda t: (ranking.get(t.trial_id, len(ranking)), -t.val_acc,
                                           t.trial_id != chosen))[:k]

    def missing_winner(self) -> str:
        """Why the search's winner cannot be evaluated: best_config.yaml or the confirmation names
        a trial whose record is gone (its folder deleted); '' when it is there."""
        confirmed = read_confirmation(self.path)
        named = [(_best_config_trial(self.path), BEST_CONFIG_FILE)]
        if confirmed is not None and confirmed.verdict.get("winner"):
            named.append((str(confirmed.verdict["winner"]), "confirmation.json"))
        present = {t.trial_id for t in self.trials if t.status != "MISSING"}
        for tid, where in named:
            if tid and tid not in present:
                return (f"{self.path}: {where} names trial {tid} as the search's winner, but its folder "
                        f"{TRIAL_DIR_PREFIX}{tid} is missing; restore it (from a backup or the cluster's storage) "
                        "before evaluating: no other trial is evaluated in its place")
        return ""

    def objectives(self) -> tuple[Objective, ...]:
        """What the search optimised (its ``marktune_search.json``; val_acc alone when it says nothing)."""
        try:
            return parse_objectives((read_settings(self.path) or {}).get("objectives"))
        except ObjectiveError:
            return SINGLE

    def pareto_set(self) -> list[Trial]:
        """A multi-objective search's complete trials no other beats on every objective (by their
        last reported values), most accurate first; [] for a single-objective search."""
        objectives = self.objectives()
        if len(objectives) < 2:
            return []
        done = [(t, objective_values(t.results[-1], objectives)) for t in self.by_status("COMPLETE") if t.results]
        done = [(t, v) for t, v in done if v is not None]
        ranks = nondominated_ranks(minimised([v for _, v in done], objectives))
        return sorted((t for (t, _), r in zip(done, ranks) if r == 0), key=lambda t: -t.val_acc)

    def seeds_used(self) -> set[int]:
        """Every seed the search saw: its trials' and its confirmation stage's."""
        confirmed = read_confirmation(self.path)
        return ({int(t.config.get("seed", 0)) for t in self.trials if t.config}
                | set(confirmed.seeds if confirmed else ()))

    def ties(self) -> Ties | None:
        """The complete trials within the noise of the best (``marktune.results.noise``), with the
        recognised space's seed-to-seed SD (unknown without one); None without a complete trial."""
        noise = self.space.noise if self.space is not None else SeedNoise()
        best = self.best_complete(1)
        return find_ties([scored_from_result(t.trial_id, t.results[-1] if t.results else None)
                          for t in self.by_status("COMPLETE")],
                         seed_sd=noise.seed_sd, measured=noise.measured,
                         best=best[0].trial_id if best else None)

    def missing_note(self) -> str:
        """One line naming trials that are not finished, or '' when all are."""
        parts = []
        running = self.by_status("RUNNING")
        missing = self.by_status("MISSING")
        if running:
            parts.append(f"{len(running)} unfinished (still RUNNING/PENDING when the search stopped: "
                         f"{', '.join(t.trial_id for t in running)})")
        gone = [t for t in missing if t.error.startswith("its folder")]
        missing = [t for t in missing if t not in gone]
        if missing:
            parts.append(f"{len(missing)} never reported a result ({', '.join(t.trial_id for t in missing)})")
        if gone:
            parts.append(f"{len(gone)} ran but their folders are missing ({', '.join(t.trial_id for t in gone)})")
        lost = [t for t in self.trials if t.missing_tasks()]
        if lost:
            parts.append("recorded results missing for " + ", ".join(
                f"{t.trial_id} (tasks {task_ranges(t.missing_tasks())} of "
                f"{max(t.tasks_done, t.checkpoint_tasks)}: its result.json lacks them)"
                for t in lost))
        if not parts:
            return ""
        if self.running:  # not interrupted: it goes on
            return f"search still running ({self.running}): " + "; ".join(parts)
        return ("interrupted search: " if running or missing else "") + "; ".join(parts)

    def shared_settings(self) -> dict[str, Any]:
        """Settings every trial shares, minus the searched ones."""
        configs = [t.config for t in self.trials if t.config]
        if not configs:
            return {}
        common = {}
        for key, value in configs[0].items():
            if key in self.searched:
                continue
            if all(key in c and same_setting(c[key], value) for c in configs[1:]):
                common[key] = value
        return common

    def default_config(self) -> tuple[MarkConfig, str]:
        """The space's default configuration, and the rule that made it.

        * A recognised space: ``space.default_trial_config(overrides)``, where the overrides
          are the trials' shared settings that differ from the space file's fixed ones (the
          search's ``--set``). Without ``--set`` this is ``load_space(name).default_trial_config()``.
        * No recognised space: the trials' shared settings with the learner's (MarkConfig's)
          defaults for every searched setting.
        """
        if self.space is not None:
            return (self.space.default_trial_config(self.overrides),
                    f"space {self.space_name}: its fixed settings"
                    + (f" with the search's overrides {self.overrides}" if self.overrides else "")
                    + ", searched settings at the space's fixed values or the learner's defaults")
        return (MarkConfig.from_dict(self.shared_settings()),
                "no space file matches the trials: their shared settings, learner defaults for "
                f"the searched ones ({', '.join(self.searched)})")

    def runtime(self) -> dict[str, Any]:
        for t in self.trials:
            if t.runtime:
                return dict(t.runtime)
        return {}


# ------------------------------------------------------------------ helpers
def task_ranges(numbers: list[int]) -> str:
    """``1-2, 4`` for [1, 2, 4]."""
    out, start = [], None
    for i, n in enumerate(numbers):
        if start is None:
            start = n
        if i + 1 == len(numbers) or numbers[i + 1] != n + 1:
            out.append(f"{start}" if start == n else f"{start}-{n}")
            start = None
    return ", ".join(out)


def same_setting(a: Any, b: Any) -> bool:
    """Whether two values of one setting are equal (floats up to rounding)."""
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-12)
        except (TypeError, ValueError):
            return False
    return a == b


def _best_config_trial(root: Path) -> str:
    """The trial id in the search's best_config.yaml, or '' (none written, or unreadable)."""
    import yaml

    try:
        data = yaml.safe_load((root / BEST_CONFIG_FILE).read_text())
    except (OSError, yaml.YAMLError):
        return ""
    return str(data.get("trial_id", "")) if isinstance(data, dict) else ""
