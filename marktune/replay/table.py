"""The replay bench's view of a curves table: its checks, its recorded configurations, a synthetic table.

:func:`check_table` refuses a table a bench cannot trust before any work starts (an empty
setting, a setting outside the space, a task gap, an accuracy that is not a number), naming the
row and the column; runs that ended in an error are a result, not a fault, and it lists them.

:class:`ReplayTable` groups a curves table (:mod:`marktune.results.curves`) by trial: one
:class:`RecordedConfig` per trial id, holding one complete :class:`Curve` per learner seed.
Curves that stop before the last task (trials ASHA stopped) cannot be replayed past their end
and are dropped (:attr:`ReplayTable.dropped` counts them): a table for replay comes from a search
without pruning. A configuration's *final* test ACC is the mean over its seeds' last tasks: what
a pick of it is worth; a replay draws one seed's curve per proposal, so the values a replayed
search sees are as noisy as the recorded ones.

What stands for settings the table lacks is :mod:`marktune.replay.surrogates`.

Example:
    >>> from marktune.tune.spaces import load_space
    >>> space = load_space("fmnist")
    >>> curves = synthetic_curves(space=space, configs=6, seed=0)
    >>> check_table(curves, space, source="synthetic").errored
    []
    >>> table = ReplayTable.from_curves(curves)
    >>> len(table.configs), table.num_tasks
    (6, 5)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from marktune.results.curves import CurveRow, CurvesTable, read_curves
from marktune.tune.spaces import Param, SearchSpace


@dataclass(frozen=True)
class Curve:
    """One recorded run of a configuration: per task (1..n), val and test ACC and seconds."""

    val: tuple[float, ...]
    test: tuple[float, ...]
    seconds: tuple[float, ...]
    seed: int | None = None


@dataclass(frozen=True)
class RecordedConfig:
    """One configuration of the table and its recorded curves (one per seed)."""

    key: str  # the trial id that recorded it
    params: dict[str, Any]
    curves: tuple[Curve, ...]

    @property
    def final_test(self) -> float:
        return float(np.mean([c.test[-1] for c in self.curves]))

    @property
    def final_val(self) -> float:
        return float(np.mean([c.val[-1] for c in self.curves]))

    def test_at(self, seeds: Sequence[int]) -> float:
        """Mean final test ACC over its curves at ``seeds`` (NaN where it has none there): what a
        pick is worth when scored on held-out seeds."""
        finals = [c.test[-1] for c in self.curves if c.seed in seeds]
        return float(np.mean(finals)) if finals else math.nan

    def has_seeds(self, seeds: Sequence[int]) -> bool:
        """Whether it holds a complete curve at every one of ``seeds``."""
        return set(seeds) <= {c.seed for c in self.curves}

    def val_after(self, tasks: int) -> float:
        """Mean over seeds of the val ACC after ``tasks`` tasks (a rung's value)."""
        return float(np.mean([c.val[tasks - 1] for c in self.curves]))


class ReplayTableError(ValueError):
    """A curves table the bench cannot replay (no complete curve, settings the space lacks, a
    row :func:`check_table` refuses)."""


@dataclass(frozen=True)
class ErroredRun:
    """A recorded run that ended in an error: a result of the table, reported, not replayed."""

    trial_id: str
    seed: int | None
    status: str
    tasks_done: int  # tasks it finished before the error

    def __str__(self) -> str:
        seed = "" if self.seed is None else f" seed {self.seed}"
        return f"{self.trial_id}{seed}: {self.status} after {self.tasks_done} task(s)"


@dataclass(frozen=True)
class TableCheck:
    """What :func:`check_table` found and let through."""

    runs: int
    errored: list[ErroredRun]


def check_table(curves: CurvesTable, space: SearchSpace, *, source: str,
                blank_ids: Sequence[str] = (), min_configs: int = 2) -> TableCheck:
    """Refuse a table a bench cannot trust, with a :class:`ReplayTableError` naming the row (its
    line in ``source``, the trial, seed and task) and the column:

    * a settings cell that is empty (``blank_ids``: trials whose settings are blank on purpose,
      as the separation bench's default configuration) or missing from the table;
    * a setting outside the space (a range's value outside it or not a number, a choice's value
      not among its values);
    * a task gap: a curve's tasks must be 1, 2, ... without a hole or a repeat, none past the
      space's task count. A run that failed in its first task is one row with task 0 and empty
      accuracies, its status ``ERROR...``;
    * an accuracy that is not a number in [0, 1] (``read_curves`` refuses text already);
    * fewer than ``min_configs`` configurations that ran every task (a header-only table).

    Runs whose status says ERROR are listed (:attr:`TableCheck.errored`), not refused.
    """
    missing = [name for name in space.params if name not in curves.searched]
    if missing:
        raise ReplayTableError(f"{source}: no column for the space's setting(s) {', '.join(missing)}; give the "
                               f"space the table was recorded in (it searched {', '.join(curves.searched)})")
    params = [space.params[name] for name in curves.searched if name in space.params]
    num_tasks = space.default_trial_config().tasks
    runs = curves.curves()
    errored = []
    for (trial_id, seed), rows in runs.items():
        for row in rows:
            where = _where(source, row)
            if trial_id not in blank_ids:
                for p in params:
                    problem = _outside(p, row.params.get(p.name))
                    if problem:
                        raise ReplayTableError(f"{where}, column {p.name}: {problem}")
            if row.task == 0 and row.status.startswith("ERROR") and len(rows) == 1:
                continue  # failed in its first task: nothing recorded
            for column in ("val_acc", "test_acc"):
                value = getattr(row, column)
                if not 0.0 <= value <= 1.0:  # NaN fails too
                    raise ReplayTableError(f"{where}, column {column}: {value!r} is not an accuracy in [0, 1]")
        tasks = [r.task for r in rows]
        done = 0 if tasks == [0] else len(tasks)
        if tasks != [0] and tasks != list(range(1, len(tasks) + 1)):
            gap = next(r for i, r in enumerate(rows, start=1) if r.task != i)
            raise ReplayTableError(f"{_where(source, gap)}, column task: the curve's tasks are {tasks}; a curve "
                                   "holds tasks 1, 2, ... in order, each once (a task is missing or repeated)")
        if done > num_tasks:
            raise ReplayTableError(f"{_where(source, rows[-1])}, column task: task {rows[-1].task} is past the "
                                   f"space's {num_tasks} tasks")
        if rows[-1].status.startswith("ERROR"):
            errored.append(ErroredRun(trial_id=trial_id, seed=seed, status=rows[-1].status, tasks_done=done))
    last = max((r.task for rows in runs.values() for r in rows), default=num_tasks)  # the table's task count
    complete = {trial_id for (trial_id, _), rows in runs.items()
                if rows and rows[-1].task == last and not rows[-1].status.startswith("ERROR")}
    if len(complete - set(blank_ids)) < min_configs:  # a header-only table, or one configuration
        raise ReplayTableError(f"{source}: {len(complete - set(blank_ids))} configuration(s) ran all {last} "
                               f"tasks; a replay chooses among at least {min_configs} (record more with "
                               "bench/separation.py --configs N)")
    return TableCheck(runs=len(runs), errored=errored)


def read_checked_table(path, space: SearchSpace) -> ReplayTable:
    """The curves table at ``path``, checked against ``space`` (:func:`check_table`) before any
    work, as a :class:`ReplayTable`; raises ReplayTableError, CurvesError or OSError."""
    curves = read_curves(path)
    check_table(curves, space, source=str(path))
    return ReplayTable.from_curves(curves)


def _where(source: str, row: CurveRow) -> str:
    line = f", line {row.line}" if row.line is not None else ""
    seed = "" if row.seed is None else f" seed {row.seed}"
    return f"{source}{line} (trial {row.trial_id}{seed} task {row.task})"


def _outside(p: Param, value: Any) -> str | None:
    """Why ``value`` is not a value of ``p``'s, or None."""
    if value is None:
        return "empty; every row needs its searched settings"
    if p.kind == "choice":
        return None if value in p.values else f"{value!r} is not one of {list(p.values)}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return f"{value!r} is not a number"
    if not float(p.low) <= float(value) <= float(p.high):
        return f"{value!r} is outside the space's range [{p.low}, {p.high}]"
    if p.kind in ("int", "logint") and float(value) != int(value):
        return f"{value!r} is not a whole number"
    return None


@dataclass
class ReplayTable:
    searched: list[str]
    configs: list[RecordedConfig]
    num_tasks: int
    dropped: int = 0  # curves that stop before the last task

    @classmethod
    def from_curves(cls, table: CurvesTable) -> "ReplayTable":
        curves = table.curves()
        if not curves:
            raise ReplayTableError("the curves table has no rows")
        num_tasks = max(r.task for rows in curves.values() for r in rows)
        by_trial: dict[str, list[tuple[dict[str, Any], Curve]]] = {}
        dropped = 0
        for (trial_id, seed), rows in curves.items():
            tasks = [r.task for r in rows]
            values = [v for r in rows for v in (r.val_acc, r.test_acc, r.seconds)]
            if tasks != list(range(1, num_tasks + 1)) or not all(math.isfinite(v) for v in values):
                dropped += 1
                continue
            curve = Curve(val=tuple(r.val_acc for r in rows), test=tuple(r.test_acc for r in rows),
                          seconds=tuple(r.seconds for r in rows), seed=seed)
            by_trial.setdefault(trial_id, []).append((rows[0].params, curve))
        if not by_trial:
            raise ReplayTableError(f"no curve of the table reaches task {num_tasks} with every value "
                                   "recorded; a replay needs complete curves (a search without pruning)")
        configs = [RecordedConfig(key=key, params=dict(items[0][0]), curves=tuple(c for _, c in items))
                   for key, items in by_trial.items()]
        return cls(searched=list(table.searched), configs=configs, num_tasks=num_tasks, dropped=dropped)

    @property
    def best_final_test(self) -> float:
        return max(c.final_test for c in self.configs)

    def check_space(self, space: SearchSpace) -> None:
        """The table's searched settings must be the space's (the searcher proposes the space's)."""
        if sorted(self.searched) != sorted(space.params):
            raise ReplayTableError(f"the table searched {sorted(self.searched)}, the space {space.path} "
                                   f"searches {sorted(space.params)}; give the space the table was recorded in")

    def rung_tau(self) -> list[tuple[int, float, float]]:
        """Per task k < n: (k, Kendall's tau of val after k against final val, against final test),
        over the table's configurations (seeds averaged)."""
        from scipy.stats import kendalltau

        final_val = [c.final_val for c in self.configs]
        final_test = [c.final_test for c in self.configs]
        out = []
        for k in range(1, self.num_tasks):
            rung = [c.val_after(k) for c in self.configs]
            out.append((k, float(kendalltau(rung, final_val).statistic),
                        float(kendalltau(rung, final_test).statistic)))
        return out


# ---------------------------------------------------------------- a synthetic table
def synthetic_curves(*, space: SearchSpace, configs: int, seed: int, num_tasks: int = 5,
                     noise: float = 0.01) -> CurvesTable:
    """A table to try the bench on: ``configs`` random settings of ``space``, each with a quality
    that is a smooth function of its normalised settings, a first task that predicts it only
    partly (forgetting differs per configuration) and seconds that grow with the settings."""
    rng = np.random.default_rng(seed)
    params = list(space.params.values())
    weights = rng.normal(size=len(params))
    rows: list[CurveRow] = []
    for i in range(configs):
        setting, unit = {}, []
        for p in params:
            value, u = _draw(p, rng)
            setting[p.name], unit = value, unit + [u]
        quality = float(np.tanh(np.dot(weights, np.array(unit) - 0.5)))  # in (-1, 1)
        final = 0.80 + 0.08 * quality
        first = 0.95 - 0.04 * rng.random()  # the first task is easy for all: a weak rung
        per_task = 2.0 + 4.0 * float(np.mean(unit))
        for k in range(1, num_tasks + 1):
            w = (k - 1) / max(num_tasks - 1, 1)
            mean = (1 - w) * first + w * final
            val = float(np.clip(mean + rng.normal(scale=noise), 0, 1))
            test = float(np.clip(mean + rng.normal(scale=noise), 0, 1))
            rows.append(CurveRow(trial_id=f"s{i:03d}", status="TERMINATED", params=setting, task=k,
                                 val_acc=round(val, 4), test_acc=round(test, 4),
                                 seconds=round(per_task * (1 + 0.2 * rng.random()), 2)))
    return CurvesTable(searched=[p.name for p in params], rows=rows)


def _draw(p: Param, rng: np.random.Generator) -> tuple[Any, float]:
    """A random value of ``p`` and its position in [0, 1]."""
    if p.kind == "choice":
        j = int(rng.integers(len(p.values)))
        return p.values[j], j / max(len(p.values) - 1, 1)
    u = float(rng.random())
    log = p.kind in ("loguniform", "logint")
    low, high = (math.log(p.low), math.log(p.high)) if log else (p.low, p.high)
    value = low + u * (high - low)
    value = math.exp(value) if log else value
    if p.kind in ("int", "logint"):
        value = int(min(max(round(value), p.low), p.high))
    return value, u


def config_index(table: ReplayTable, key: str) -> int:
    """The index of the configuration recorded by trial ``key``."""
    for i, config in enumerate(table.configs):
        if config.key == key:
            return i
    raise KeyError(key)


__all__: Sequence[str] = ["Curve", "RecordedConfig", "ReplayTable", "ReplayTableError", "ErroredRun", "TableCheck",
                          "check_table", "synthetic_curves", "config_index"]
