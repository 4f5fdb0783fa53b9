"""The replay bench's view of a curves table: recorded configurations, their surrogate, a synthetic table.

:class:`ReplayTable` groups a curves table (:mod:`marktune.results.curves`) by trial: one
:class:`RecordedConfig` per trial id, holding one complete :class:`Curve` per learner seed.
Curves that stop before the last task (trials ASHA stopped) cannot be replayed past their end
and are dropped (:attr:`ReplayTable.dropped` counts them): a table for replay comes from a search
without pruning. A configuration's *final* test ACC is the mean over its seeds' last tasks: what
a pick of it is worth; a replay draws one seed's curve per proposal, so the values a replayed
search sees are as noisy as the recorded ones.

:class:`NearestRecorded` is the surrogate for settings the searcher proposes that the table lacks:
the recorded configuration nearest in a normalised space (log scale for ``loguniform``/``logint``,
each range scaled to [0, 1], 1 per categorical mismatch) stands for it, curve and all.

Example:
    >>> from marktune.tune.spaces import load_space
    >>> space = load_space("fmnist")
    >>> table = ReplayTable.from_curves(synthetic_curves(space=space, configs=6, seed=0))
    >>> len(table.configs), table.num_tasks
    (6, 5)
    >>> surrogate = NearestRecorded(table=table, space=space)
    >>> surrogate.nearest(table.configs[3].params)
    3
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from marktune.results.curves import CurveRow, CurvesTable
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

    def val_after(self, tasks: int) -> float:
        """Mean over seeds of the val ACC after ``tasks`` tasks (a rung's value)."""
        return float(np.mean([c.val[tasks - 1] for c in self.curves]))


class ReplayTableError(ValueError):
    """A curves table the bench cannot replay (no complete curve, settings the space lacks)."""


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


# ---------------------------------------------------------------- the surrogate
class NearestRecorded:
    """Proposed settings -> the index of the nearest recorded configuration.

    Each range setting becomes a coordinate in [0, 1] (its log for ``loguniform``/``logint``);
    a categorical setting adds 1 to the squared distance where it differs. Ties go to the
    configuration listed first, so a replay is deterministic.
    """

    name = "nearest recorded configuration (normalised space: log for log ranges, 0/1 per categorical mismatch)"

    def __init__(self, *, table: ReplayTable, space: SearchSpace) -> None:
        table.check_space(space)
        self._params: list[Param] = [space.params[name] for name in table.searched]
        self._ranges = [p for p in self._params if p.kind != "choice"]
        self._choices = [p for p in self._params if p.kind == "choice"]
        self._table = table
        self._coords = np.array([self._coordinates(c.params) for c in table.configs]).reshape(
            len(table.configs), len(self._ranges))
        self._labels = [tuple(c.params[p.name] for p in self._choices) for c in table.configs]

    def _coordinates(self, params: Mapping[str, Any]) -> list[float]:
        out = []
        for p in self._ranges:
            value, low, high = float(params[p.name]), float(p.low), float(p.high)
            if p.kind in ("loguniform", "logint"):
                value, low, high = math.log(value), math.log(low), math.log(high)
            out.append((value - low) / (high - low))
        return out

    def distances(self, params: Mapping[str, Any]) -> np.ndarray:
        """Squared distance from ``params`` to every recorded configuration."""
        here = np.array(self._coordinates(params))
        d = ((self._coords - here) ** 2).sum(axis=1) if self._ranges else np.zeros(len(self._labels))
        labels = tuple(params[p.name] for p in self._choices)
        mismatches = np.array([sum(a != b for a, b in zip(labels, other)) for other in self._labels], dtype=float)
        return d + mismatches

    def nearest(self, params: Mapping[str, Any], *, exclude: int | None = None) -> int:
        d = self.distances(params)
        if exclude is not None:
            d[exclude] = np.inf
        return int(np.argmin(d))

    def leave_one_out(self) -> tuple[float, float]:
        """(mean absolute error of the final val ACC predicted from the nearest other configuration,
        the same error for predicting the mean of the others: the bar the surrogate must clear)."""
        finals = np.array([c.final_val for c in self._table.configs])
        if len(finals) < 2:
            return math.nan, math.nan
        errors, baseline = [], []
        for i, config in enumerate(self._table.configs):
            errors.append(abs(finals[self.nearest(config.params, exclude=i)] - finals[i]))
            baseline.append(abs((finals.sum() - finals[i]) / (len(finals) - 1) - finals[i]))
        return float(np.mean(errors)), float(np.mean(baseline))


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


__all__: Sequence[str] = ["Curve", "RecordedConfig", "ReplayTable", "ReplayTableError", "NearestRecorded",
                          "synthetic_curves", "config_index"]
