"""The replay bench's view of a curves table: recorded configurations, their surrogate, a synthetic table.

:class:`ReplayTable` groups a curves table (:mod:`marktune.results.curves`) by trial: one
:class:`RecordedConfig` per trial id, holding one complete :class:`Curve` per learner seed.
Curves that stop before the last task (trials ASHA stopped) cannot be replayed past their end
and are dropped (:attr:`ReplayTable.dropped` counts them): a table for replay comes from a search
without pruning. A configuration's *final* test ACC is the mean over its seeds' last tasks: what
a pick of it is worth; a replay draws one seed's curve per proposal, so the values a replayed
search sees are as noisy as the recorded ones.

The surrogate for settings the searcher proposes that the table lacks maps them to a recorded
configuration, which stands for them, curve and all (a replay needs whole curves). Both surrogates
work in a normalised space (log scale for ``loguniform``/``logint``, each range scaled to [0, 1]):
:class:`WeightedNearest` (the default) weights each setting by how much it moves the outcome, with
the length-scales a Gaussian process with an anisotropic RBF kernel learns on the table's final val
ACC; :class:`NearestRecorded` weights all settings alike (1 per categorical mismatch).

Example:
    >>> from marktune.tune.spaces import load_space
    >>> space = load_space("fmnist")
    >>> table = ReplayTable.from_curves(synthetic_curves(space=space, configs=6, seed=0))
    >>> len(table.configs), table.num_tasks
    (6, 5)
    >>> surrogate = NearestRecorded(table=table, space=space)
    >>> surrogate.nearest(table.configs[3].params)
    3
    >>> make_surrogate(kind="weighted", table=table, space=space).nearest(table.configs[3].params)
    3
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

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


# ---------------------------------------------------------------- the surrogates
class Surrogate(Protocol):
    """Proposed settings -> the index of the recorded configuration that stands for them."""

    name: str

    def nearest(self, params: Mapping[str, Any], *, exclude: int | None = None) -> int: ...

    def leave_one_out(self) -> tuple[float, float]: ...


def _unit(p: Param, value: Any) -> float:
    """A range setting's value in [0, 1] of its range (of its log for ``loguniform``/``logint``)."""
    value, low, high = float(value), float(p.low), float(p.high)
    if p.kind in ("loguniform", "logint"):
        value, low, high = math.log(value), math.log(low), math.log(high)
    return (value - low) / (high - low)


def _leave_one_out(finals: np.ndarray, nearest_other) -> tuple[float, float]:
    """(mean absolute error of each final val ACC predicted by ``nearest_other(i)``'s, the same
    error for predicting the mean of the others: the bar a surrogate must clear)."""
    if len(finals) < 2:
        return math.nan, math.nan
    errors, baseline = [], []
    for i in range(len(finals)):
        errors.append(abs(finals[nearest_other(i)] - finals[i]))
        baseline.append(abs((finals.sum() - finals[i]) / (len(finals) - 1) - finals[i]))
    return float(np.mean(errors)), float(np.mean(baseline))


class _ByDistance:
    """A surrogate that picks the recorded configuration at the smallest ``distances(params)``."""

    def distances(self, params: Mapping[str, Any]) -> np.ndarray:
        raise NotImplementedError

    def nearest(self, params: Mapping[str, Any], *, exclude: int | None = None) -> int:
        d = self.distances(params)
        if exclude is not None:
            d[exclude] = np.inf
        return int(np.argmin(d))  # ties: the configuration listed first


class NearestRecorded(_ByDistance):
    """Proposed settings -> the index of the nearest recorded configuration, all settings alike.

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
        return [_unit(p, params[p.name]) for p in self._ranges]

    def distances(self, params: Mapping[str, Any]) -> np.ndarray:
        """Squared distance from ``params`` to every recorded configuration."""
        here = np.array(self._coordinates(params))
        d = ((self._coords - here) ** 2).sum(axis=1) if self._ranges else np.zeros(len(self._labels))
        labels = tuple(params[p.name] for p in self._choices)
        mismatches = np.array([sum(a != b for a, b in zip(labels, other)) for other in self._labels], dtype=float)
        return d + mismatches

    def leave_one_out(self) -> tuple[float, float]:
        """(mean absolute error of the final val ACC predicted from the nearest other configuration,
        the same error for predicting the mean of the others: the bar the surrogate must clear)."""
        finals = np.array([c.final_val for c in self._table.configs])
        return _leave_one_out(finals, lambda i: self.nearest(self._table.configs[i].params, exclude=i))


class WeightedNearest(_ByDistance):
    """Proposed settings -> the index of the nearest recorded configuration, each setting weighted
    by how much it moves the final val ACC on the table.

    Features: each range setting in [0, 1] (log for log ranges), each categorical value a 0/1
    column. A Gaussian process with an anisotropic RBF kernel (times a constant, plus white noise)
    is fitted once, on the table's configurations -> their final val ACC (the seeds' mean); its
    length-scale l per feature gives the weight 1 / l**2, so the distance is the kernel's own:
    sum over features of (x - x')**2 / l**2. A setting that does not move the outcome gets a long
    length-scale and next to no weight. Deterministic: the optimiser starts from length-scale 1
    with no random restarts. Ties go to the configuration listed first.

    :meth:`leave_one_out` is honest: each configuration in turn is held out, the weights are
    fitted on the others, and it is predicted by its nearest other configuration.
    (A random forest's feature importances as weights, also tried, did worse on
    ``bench/curves/fmnist-lowdata.csv``: 12.99 points against 11.21; docs/replay.md.)
    """

    name = ("nearest recorded configuration, weighted per setting (normalised space; weights 1/l^2 from the "
            "length-scales l of an anisotropic-RBF Gaussian process fitted on the final val ACC)")

    def __init__(self, *, table: ReplayTable, space: SearchSpace) -> None:
        table.check_space(space)
        self._params: list[Param] = [space.params[name] for name in table.searched]
        self._table = table
        self._features = np.array([self._featurise(c.params) for c in table.configs])
        self._finals = np.array([c.final_val for c in table.configs])
        self._weights = self._fit(self._features, self._finals)

    def _featurise(self, params: Mapping[str, Any]) -> list[float]:
        out: list[float] = []
        for p in self._params:
            if p.kind == "choice":
                out += [float(params[p.name] == v) for v in p.values]
            else:
                out.append(_unit(p, params[p.name]))
        return out

    @staticmethod
    def _fit(features: np.ndarray, finals: np.ndarray) -> np.ndarray:
        """Per-feature weights 1 / l**2 of a GP fitted on (features, finals); all 1 where there is
        too little to fit (fewer than 3 configurations, or all alike)."""
        if len(finals) < 3 or np.ptp(finals) == 0:
            return np.ones(features.shape[1])
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel
        from threadpoolctl import threadpool_limits  # scikit-learn's own dependency

        kernel = (ConstantKernel(1.0) * RBF(length_scale=np.ones(features.shape[1]), length_scale_bounds=(1e-2, 1e3))
                  + WhiteKernel(1e-2, noise_level_bounds=(1e-6, 1.0)))
        gp = GaussianProcessRegressor(kernel=kernel, normalize_y=True, n_restarts_optimizer=0, random_state=0)
        # One BLAS thread: on matrices this small, more cost several times the fit (0.8 s against 0.13 s
        # on 2 busy cores). A length-scale at its bound is an answer (the setting does not matter).
        with threadpool_limits(limits=1), warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            gp.fit(features, finals)
        return 1.0 / np.asarray(gp.kernel_.k1.k2.length_scale, dtype=float) ** 2

    def _nearest(self, here: np.ndarray, weights: np.ndarray, candidates: np.ndarray) -> int:
        d = (((self._features[candidates] - here) ** 2) * weights).sum(axis=1)
        return int(candidates[int(np.argmin(d))])

    def distances(self, params: Mapping[str, Any]) -> np.ndarray:
        """Weighted squared distance from ``params`` to every recorded configuration."""
        here = np.array(self._featurise(params))
        return (((self._features - here) ** 2) * self._weights).sum(axis=1)

    def setting_weights(self) -> dict[str, float]:
        """Per setting, what moving across all of it costs (a range: its weight; a choice: its two
        heaviest values' weights, a mismatch between them), as a share of the sum over settings."""
        costs, column = {}, 0
        for p in self._params:
            width = len(p.values) if p.kind == "choice" else 1
            w = np.sort(self._weights[column:column + width])[::-1]
            costs[p.name] = float(w[:2].sum())
            column += width
        total = sum(costs.values()) or 1.0
        return {name: cost / total for name, cost in costs.items()}

    def leave_one_out(self) -> tuple[float, float]:
        """(mean absolute error of the final val ACC of each configuration, predicted from its
        nearest other configuration under weights fitted without it; the same error for predicting
        the mean of the others)."""
        everyone = np.arange(len(self._finals))

        def nearest_other(i: int) -> int:
            others = everyone[everyone != i]
            weights = self._fit(self._features[others], self._finals[others])
            return self._nearest(self._features[i], weights, others)

        return _leave_one_out(self._finals, nearest_other)


SURROGATES = {"weighted": WeightedNearest, "nearest": NearestRecorded}


def make_surrogate(*, kind: str = "weighted", table: ReplayTable, space: SearchSpace) -> Surrogate:
    """The surrogate named ``kind`` (a key of :data:`SURROGATES`), fitted on ``table``."""
    if kind not in SURROGATES:
        raise ValueError(f"surrogate must be one of {sorted(SURROGATES)}, not {kind!r}")
    return SURROGATES[kind](table=table, space=space)


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


__all__: Sequence[str] = ["Curve", "RecordedConfig", "ReplayTable", "ReplayTableError", "Surrogate",
                          "NearestRecorded", "WeightedNearest", "SURROGATES", "make_surrogate", "synthetic_curves",
                          "config_index"]
