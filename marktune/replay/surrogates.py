"""Surrogates: what stands for settings the recorded table lacks, and how well each predicts.

A replayed searcher proposes settings that no recorded run used. A *surrogate* (:class:`Surrogate`)
gives what stands for them (:class:`StandIn`): a whole per-seed curve, and what a pick of it is
worth. All work in a normalised space (log scale for ``loguniform``/``logint``, each range scaled
to [0, 1], a 0/1 column per categorical value). :class:`ModelledCurves` (the default, ``gp``)
predicts the curve with a Gaussian process on logit ACC and adds a recorded seed's noise;
:class:`WeightedNearest` (``weighted``) replays the nearest recorded configuration, each setting
weighted by how much it moves the outcome (the length-scales a Gaussian process learns on the
table's final val ACC); :class:`NearestRecorded` (``nearest``) weights all settings alike.

How well a surrogate would predict a configuration it has not seen is measured by cross-validation
over configurations (:func:`cross_validate`: every configuration held out once, its fold's model
fitted without it; ``folds`` = the number of configurations is exact leave-one-out). Besides the
two nearest-configuration surrogates, two models predict a whole per-task val curve and its
uncertainty (:data:`CURVE_MODELS`): a random forest over the settings (the spread of its trees is
its uncertainty) and a Gaussian process (its posterior SD). :func:`score` sets each error beside
the seed-to-seed SD of the configurations predicted (docs/replay.md gives the figures).

Example:
    >>> from marktune.tune.spaces import load_space
    >>> from marktune.replay.table import ReplayTable, synthetic_curves
    >>> space = load_space("fmnist")
    >>> table = ReplayTable.from_curves(synthetic_curves(space=space, configs=6, seed=0))
    >>> NearestRecorded(table=table, space=space).nearest(table.configs[3].params)
    3
    >>> make_surrogate(kind="weighted", table=table, space=space).nearest(table.configs[3].params)
    3
"""
from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import numpy as np

from marktune.replay.table import Curve, ReplayTable
from marktune.tune.spaces import Param, SearchSpace

DEFAULT_FOLDS = 10


@dataclass(frozen=True)
class StandIn:
    """What a replayed trial of proposed settings runs: a per-seed curve, what a pick of it is worth
    (the final test ACC of the configuration, its seeds' mean), the recorded configuration behind
    the curve."""

    config: int
    curve: Curve
    worth: float
    final_shift: float = 0.0  # its final val minus the recorded seed's (a modelled stand-in's prediction offset)


class Surrogate(Protocol):
    """Proposed settings -> what stands for them in a replay."""

    name: str

    def nearest(self, params: Mapping[str, Any], *, exclude: int | None = None) -> int: ...

    def stand_in(self, params: Mapping[str, Any], rng: np.random.Generator, *,
                 seed: int | None = None) -> StandIn: ...

    def leave_one_out(self, *, folds: int = DEFAULT_FOLDS) -> tuple[float, float]: ...


def recorded_stand_in(table: ReplayTable, index: int, rng: np.random.Generator, *,
                      seed: int | None = None) -> StandIn:
    """Recorded configuration ``index`` as it is: one of its seeds' curves, drawn (the one of
    ``seed`` where it has one: every trial of a live search runs at the space's one seed), worth
    its mean."""
    config = table.configs[index]
    at_seed = [c for c in config.curves if seed is not None and c.seed == seed]
    if at_seed:
        curve = at_seed[0]
    else:
        curve = config.curves[int(rng.integers(len(config.curves)))] if len(config.curves) > 1 else config.curves[0]
    return StandIn(config=index, curve=curve, worth=config.final_test)


def _unit(p: Param, value: Any) -> float:
    """A range setting's value in [0, 1] of its range (of its log for ``loguniform``/``logint``)."""
    value, low, high = float(value), float(p.low), float(p.high)
    if p.kind in ("loguniform", "logint"):
        value, low, high = math.log(value), math.log(low), math.log(high)
    return (value - low) / (high - low)


def featurise(params: Sequence[Param], setting: Mapping[str, Any]) -> list[float]:
    """A setting as model features: each range in [0, 1] of its range (log for log ranges), each
    categorical value a 0/1 column."""
    out: list[float] = []
    for p in params:
        if p.kind == "choice":
            out += [float(setting[p.name] == v) for v in p.values]
        else:
            out.append(_unit(p, setting[p.name]))
    return out


def table_features(table: ReplayTable, space: SearchSpace) -> tuple[np.ndarray, np.ndarray]:
    """(features per configuration, its seeds' mean val curve: configurations x tasks)."""
    table.check_space(space)
    params = [space.params[name] for name in table.searched]
    x = np.array([featurise(params, c.params) for c in table.configs], dtype=float)
    y = np.array([np.mean([cv.val for cv in c.curves], axis=0) for c in table.configs], dtype=float)
    return x, y


def fold_of(n: int, folds: int, *, seed: int = 0) -> np.ndarray:
    """Each of ``n`` configurations' fold in 0 .. folds-1 (a seeded shuffle; folds >= n: one each)."""
    folds = max(2, min(folds, n))
    order = np.random.default_rng(seed).permutation(n)
    out = np.empty(n, dtype=int)
    out[order] = np.arange(n) % folds
    return out


@contextmanager
def _quiet_single_thread() -> Iterator[None]:
    """One BLAS thread (on matrices this small, more cost several times the fit: 0.8 s against
    0.13 s on 2 busy cores), and no ConvergenceWarning: a length-scale at its bound is an answer
    (the setting does not matter)."""
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits  # scikit-learn's own dependency

    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def fit_gp(x: np.ndarray, y: np.ndarray):
    """A Gaussian process with an anisotropic RBF kernel (times a constant, plus white noise) on
    (x, y); ``y`` may have several columns (one kernel for all). Deterministic: the optimiser starts
    from length-scale 1 with no random restarts."""
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

    kernel = (ConstantKernel(1.0) * RBF(length_scale=np.ones(x.shape[1]), length_scale_bounds=(1e-2, 1e3))
              + WhiteKernel(1e-2, noise_level_bounds=(1e-6, 1.0)))
    gp = GaussianProcessRegressor(kernel=kernel, normalize_y=True, n_restarts_optimizer=0, random_state=0)
    with _quiet_single_thread():
        gp.fit(x, y)
    return gp


def gp_weights(x: np.ndarray, finals: np.ndarray) -> np.ndarray:
    """Per-feature weights 1 / l**2 from the length-scales l of :func:`fit_gp` on the final val
    ACC; all 1 where there is too little to fit (fewer than 3 configurations, or all alike)."""
    if len(finals) < 3 or np.ptp(finals) == 0:
        return np.ones(x.shape[1])
    return length_scale_weights(fit_gp(x, finals))


def length_scale_weights(gp) -> np.ndarray:
    """1 / l**2 for the per-feature length-scales l of a GP :func:`fit_gp` fitted: the kernel's own distance."""
    return 1.0 / np.asarray(gp.kernel_.k1.k2.length_scale, dtype=float) ** 2


# ---------------------------------------------------------------- the replay's surrogates
class NearestRecorded:
    """Proposed settings -> the index of the nearest recorded configuration, all settings alike.

    Each range setting becomes a coordinate in [0, 1] (its log for ``loguniform``/``logint``);
    a categorical setting adds 1 to the squared distance where it differs. Ties go to the
    configuration listed first, so a replay is deterministic.
    """

    name = "nearest recorded configuration (normalised space: log for log ranges, 0/1 per categorical mismatch)"

    def __init__(self, *, table: ReplayTable, space: SearchSpace) -> None:
        self._table = table
        self._x, self._y = table_features(table, space)
        # one-hot columns differ in two places per mismatch: half weight keeps 1 per mismatch
        params = [space.params[name] for name in table.searched]
        self._weights = np.array([w for p in params for w in ([0.5] * len(p.values) if p.kind == "choice" else [1.0])])
        self._params = params

    def distances(self, params: Mapping[str, Any]) -> np.ndarray:
        """Weighted squared distance from ``params`` to every recorded configuration."""
        here = np.array(featurise(self._params, params))
        return (((self._x - here) ** 2) * self._weights).sum(axis=1)

    def nearest(self, params: Mapping[str, Any], *, exclude: int | None = None) -> int:
        d = self.distances(params)
        if exclude is not None:
            d[exclude] = np.inf
        return int(np.argmin(d))  # ties: the configuration listed first

    def stand_in(self, params: Mapping[str, Any], rng: np.random.Generator, *,
                 seed: int | None = None) -> StandIn:
        """The nearest recorded configuration, one of its seeds' curves (``seed``'s where it has it)."""
        return recorded_stand_in(self._table, self.nearest(params), rng, seed=seed)

    def leave_one_out(self, *, folds: int = DEFAULT_FOLDS) -> tuple[float, float]:
        """(mean absolute error of the final val ACC predicted from the nearest other configuration,
        the same error for predicting the mean of the others: the bar the surrogate must clear).
        Exact leave-one-out whatever ``folds`` says: nothing is fitted, so it costs nothing more."""
        model = NearestModel(weighted=False, fixed_weights=self._weights)
        return _final_errors(self._y[:, -1], cross_validate(model, self._x, self._y, folds=len(self._y)).mean[:, -1])


class WeightedNearest(NearestRecorded):
    """Proposed settings -> the index of the nearest recorded configuration, each setting weighted
    by how much it moves the final val ACC on the table.

    The weights are 1 / l**2 for the length-scales l of :func:`fit_gp` fitted once on the table's
    configurations -> their final val ACC (the seeds' mean), so the distance is the kernel's own.
    A setting that does not move the outcome gets a long length-scale and next to no weight.

    :meth:`leave_one_out` is honest: the weights for a held-out configuration are fitted without
    its fold (``folds`` fits in all, not one per configuration: on the 400-configuration digits
    table one fit takes seconds), and it is predicted by its nearest other configuration.
    (A random forest's feature importances as weights, also tried, did worse on the former
    24-configuration fmnist-lowdata table: 12.99 points against 11.21.)
    """

    name = ("nearest recorded configuration, weighted per setting (normalised space; weights 1/l^2 from the "
            "length-scales l of an anisotropic-RBF Gaussian process fitted on the final val ACC)")

    def __init__(self, *, table: ReplayTable, space: SearchSpace) -> None:
        super().__init__(table=table, space=space)
        self._weights = gp_weights(self._x, self._y[:, -1])

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

    def leave_one_out(self, *, folds: int = DEFAULT_FOLDS) -> tuple[float, float]:
        """(mean absolute error of each configuration's final val ACC, predicted from its nearest
        other configuration under weights fitted without its fold; the same error for predicting
        the mean of the others)."""
        return _final_errors(self._y[:, -1], cross_validate(NearestModel(weighted=True), self._x, self._y,
                                                            folds=folds).mean[:, -1])


class ModelledCurves(WeightedNearest):
    """Proposed settings -> the curve a Gaussian process on logit ACC predicts for them, with the
    seed noise of the nearest recorded configuration.

    One :class:`GaussianProcessModel` is fitted on the table, configurations -> their seeds' mean
    val curve and final test ACC (one kernel for all). A stand-in's val curve is the prediction
    plus the deviation of one seed's curve of the nearest recorded configuration (under the
    GP's own weights 1/l**2) from that configuration's mean, so a replayed trial sees seed noise
    as the recorded ones do; its seconds are that curve's; it is worth the predicted final test
    ACC. The nearest configuration uses the same weights. A prediction may exceed the table's best
    (a regret below 0): the table's best is itself a mean of a few noisy seeds.
    """

    name = ("Gaussian process on logit ACC (anisotropic RBF) predicting the mean val curve and final test ACC, "
            "plus one seed's deviation of the nearest recorded configuration under its length-scales")

    def __init__(self, *, table: ReplayTable, space: SearchSpace) -> None:
        NearestRecorded.__init__(self, table=table, space=space)
        tests = np.array([[c.final_test] for c in table.configs])
        self._gp = fit_gp(self._x, logit(np.hstack([self._y, tests])))
        self._weights = length_scale_weights(self._gp)

    def predict(self, params: Mapping[str, Any]) -> tuple[np.ndarray, float]:
        """(the predicted mean val curve, the predicted final test ACC)."""
        with _quiet_single_thread():
            mean = expit(np.asarray(self._gp.predict(np.array([featurise(self._params, params)])))[0])
        return mean[:-1], float(mean[-1])

    def stand_in(self, params: Mapping[str, Any], rng: np.random.Generator, *,
                 seed: int | None = None) -> StandIn:
        val, test = self.predict(params)
        recorded = recorded_stand_in(self._table, self.nearest(params), rng, seed=seed)
        noise = np.array(recorded.curve.val) - self._y[recorded.config]
        curve = Curve(val=tuple(float(v) for v in np.clip(val + noise, 0.0, 1.0)), test=recorded.curve.test,
                      seconds=recorded.curve.seconds, seed=recorded.curve.seed)
        return StandIn(config=recorded.config, curve=curve, worth=test,
                       final_shift=float(val[-1] - self._y[recorded.config, -1]))

    def leave_one_out(self, *, folds: int = DEFAULT_FOLDS) -> tuple[float, float]:
        """(mean absolute error of each configuration's final val ACC predicted by the GP fitted
        without its fold; the same error for predicting the mean of the others)."""
        return _final_errors(self._y[:, -1], cross_validate(GaussianProcessModel(), self._x, self._y,
                                                            folds=folds).mean[:, -1])


SURROGATES = {"gp": ModelledCurves, "weighted": WeightedNearest, "nearest": NearestRecorded}


def make_surrogate(*, kind: str = "gp", table: ReplayTable, space: SearchSpace) -> Surrogate:
    """The surrogate named ``kind`` (a key of :data:`SURROGATES`), fitted on ``table``."""
    if kind not in SURROGATES:
        raise ValueError(f"surrogate must be one of {sorted(SURROGATES)}, not {kind!r}")
    return SURROGATES[kind](table=table, space=space)


def _final_errors(truth: np.ndarray, predicted: np.ndarray) -> tuple[float, float]:
    if len(truth) < 2:
        return math.nan, math.nan
    return float(np.mean(np.abs(predicted - truth))), float(np.mean(np.abs(_mean_of_others(truth) - truth)))


def _mean_of_others(values: np.ndarray) -> np.ndarray:
    """Each value's prediction by the mean of all the others: the bar a surrogate must clear."""
    return (values.sum() - values) / (len(values) - 1)


# ---------------------------------------------------------------- predicting curves, cross-validated
@dataclass
class Prediction:
    """Per configuration and task: the predicted mean val ACC and its SD (NaN: no uncertainty)."""

    mean: np.ndarray
    sd: np.ndarray


class CurveModel(Protocol):
    """Fitted on (features, mean val curves), predicts curves and their SD for new features."""

    name: str

    def fit_predict(self, x_fit: np.ndarray, y_fit: np.ndarray, x_new: np.ndarray) -> Prediction: ...


@dataclass
class NearestModel:
    """The nearest configuration's curve (``weighted``: under :func:`gp_weights` fitted on the
    fitting set); no uncertainty. A configuration is never its own neighbour."""

    weighted: bool = True
    fixed_weights: np.ndarray | None = None  # unweighted: per feature (None: all 1)

    @property
    def name(self) -> str:
        return "weighted nearest" if self.weighted else "nearest"

    def fit_predict(self, x_fit, y_fit, x_new) -> Prediction:
        return _nearest_curves(x_fit, y_fit, x_new, self.weights(x_fit, y_fit))

    def weights(self, x_fit: np.ndarray, y_fit: np.ndarray) -> np.ndarray:
        if self.weighted:
            return gp_weights(x_fit, y_fit[:, -1])
        return np.ones(x_fit.shape[1]) if self.fixed_weights is None else self.fixed_weights


def _nearest_curves(x_fit, y_fit, x_new, weights) -> Prediction:
    d = (((x_new[:, None, :] - x_fit[None, :, :]) ** 2) * weights).sum(axis=2)
    mean = y_fit[np.argmin(d, axis=1)]
    return Prediction(mean=mean, sd=np.full_like(mean, math.nan))


@dataclass
class ForestModel:
    """A random forest over the settings, all tasks' val ACC at once; the SD of its trees'
    predictions is its uncertainty."""

    trees: int = 200
    min_samples_leaf: int = 2
    name: str = "random forest"

    def fit_predict(self, x_fit, y_fit, x_new) -> Prediction:
        from sklearn.ensemble import RandomForestRegressor

        forest = RandomForestRegressor(n_estimators=self.trees, min_samples_leaf=self.min_samples_leaf,
                                       max_features=0.5, random_state=0, n_jobs=1)
        forest.fit(x_fit, y_fit)
        per_tree = np.stack([tree.predict(x_new) for tree in forest.estimators_])  # trees x new x tasks
        return Prediction(mean=per_tree.mean(axis=0).reshape(len(x_new), -1),
                          sd=per_tree.std(axis=0).reshape(len(x_new), -1))


LOGIT_EPS = 1e-3  # accuracies are clipped to [eps, 1 - eps] before the logit


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, LOGIT_EPS, 1 - LOGIT_EPS)
    return np.log(p / (1 - p))


def expit(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


@dataclass
class GaussianProcessModel:
    """:func:`fit_gp` on the whole curves (one kernel for all tasks); its posterior SD is its
    uncertainty. ``logit`` (the default): fitted on the logit of the accuracies and mapped back
    (the SD through the logistic's slope): near 1, where the good configurations crowd, a step in
    accuracy is a long way in logit, and the middling configurations' large seed noise no longer
    sets one noise level for all (on fmnist-lowdata's top quarter: error 1.07 points against 2.58
    raw; docs/replay.md)."""

    logit: bool = True

    @property
    def name(self) -> str:
        return "Gaussian process on logit ACC" if self.logit else "Gaussian process"

    def fit_predict(self, x_fit, y_fit, x_new) -> Prediction:
        gp = fit_gp(x_fit, logit(y_fit) if self.logit else y_fit)
        with _quiet_single_thread():
            mean, sd = gp.predict(x_new, return_std=True)
        mean = np.asarray(mean).reshape(len(x_new), -1)
        sd = np.asarray(sd).reshape(len(x_new), -1)
        if sd.shape[1] == 1 and mean.shape[1] > 1:
            sd = np.repeat(sd, mean.shape[1], axis=1)
        if self.logit:
            mean = expit(mean)
            sd = sd * mean * (1 - mean)
        return Prediction(mean=mean, sd=sd)


CURVE_MODELS: dict[str, Callable[[], CurveModel]] = {
    "nearest": lambda: NearestModel(weighted=False),  # (1 per one-hot column: 2 per categorical mismatch)
    "weighted": lambda: NearestModel(weighted=True),
    "forest": ForestModel,
    "gp-raw": lambda: GaussianProcessModel(logit=False),
    "gp": GaussianProcessModel,
}


def cross_validate(model: CurveModel, x: np.ndarray, y: np.ndarray, *, folds: int = DEFAULT_FOLDS,
                   seed: int = 0) -> Prediction:
    """Every configuration predicted by ``model`` fitted without its fold (``folds`` >= the
    number of configurations: exact leave-one-out). A nearest-configuration model fitted on a
    fold's complement may pick any configuration but the held-out one as neighbour: its
    neighbours come from every other configuration, its weights from the other folds."""
    n = len(y)
    mean, sd = np.full(y.shape, math.nan), np.full(y.shape, math.nan)
    fold = fold_of(n, folds, seed=seed)
    for f in np.unique(fold):
        held, fit = np.flatnonzero(fold == f), np.flatnonzero(fold != f)
        if isinstance(model, NearestModel):
            weights = model.weights(x[fit], y[fit])
            for i in held:
                others = np.flatnonzero(np.arange(n) != i)
                p = _nearest_curves(x[others], y[others], x[i:i + 1], weights)
                mean[i], sd[i] = p.mean[0], p.sd[0]
            continue
        p = model.fit_predict(x[fit], y[fit], x[held])
        mean[held], sd[held] = p.mean, p.sd
    return Prediction(mean=mean, sd=sd)


def seed_sd(table: ReplayTable, which: np.ndarray | None = None, *, task: int | None = None) -> float:
    """The seed-to-seed SD of one configuration's val ACC after ``task`` (default: the last),
    pooled (root of the mean per-configuration variance, ddof 1) over the configurations
    ``which`` (default: all) that have two seeds or more; NaN without any."""
    k = (task or table.num_tasks) - 1
    chosen = range(len(table.configs)) if which is None else which
    var = [float(np.var([cv.val[k] for cv in table.configs[i].curves], ddof=1))
           for i in chosen if len(table.configs[i].curves) >= 2]
    return math.sqrt(float(np.mean(var))) if var else math.nan


@dataclass(frozen=True)
class Score:
    """A cross-validated surrogate's errors (ACC, mean absolute) beside the noise, over a subset."""

    subset: str
    configs: int
    final_error: float  # |predicted - recorded mean| of the final val ACC
    curve_error: float  # the same, averaged over every task of the curve
    mean_of_others_error: float  # predicting the final by the mean of the others: the bar to clear
    seed_sd: float  # pooled seed-to-seed SD of the final val ACC of these configurations
    coverage: float  # share of finals within 2 predicted SD (NaN: no uncertainty)

    @property
    def ratio(self) -> float:
        """final_error / seed_sd: the goal is at most 1.5."""
        return self.final_error / self.seed_sd if self.seed_sd > 0 else math.nan


def score(table: ReplayTable, y: np.ndarray, prediction: Prediction, *, top: float = 0.0) -> Score:
    """The errors of ``prediction`` over all configurations (``top`` 0), or over the best
    ``1 - top`` of them by recorded final val (``top`` 0.75: the top quarter, where a search's
    decisions are made); each still predicted without its fold."""
    finals = y[:, -1]
    which = np.flatnonzero(finals >= np.quantile(finals, top)) if top > 0 else np.arange(len(finals))
    others_mean = _mean_of_others(finals)
    sd = prediction.sd[which, -1]
    inside = np.abs(prediction.mean[which, -1] - finals[which]) <= 2 * sd
    return Score(subset="all" if top == 0 else f"top {100 * (1 - top):.0f} %", configs=len(which),
                 final_error=float(np.mean(np.abs(prediction.mean[which, -1] - finals[which]))),
                 curve_error=float(np.mean(np.abs(prediction.mean[which] - y[which]))),
                 mean_of_others_error=float(np.mean(np.abs(others_mean[which] - finals[which]))),
                 seed_sd=seed_sd(table, which),
                 coverage=float(np.mean(inside)) if np.all(np.isfinite(sd)) else math.nan)


__all__: Sequence[str] = ["Surrogate", "StandIn", "recorded_stand_in", "NearestRecorded", "WeightedNearest",
                          "ModelledCurves", "SURROGATES", "make_surrogate", "logit", "expit",
                          "featurise", "table_features", "fit_gp", "gp_weights", "length_scale_weights", "fold_of", "Prediction",
                          "CurveModel", "NearestModel", "ForestModel", "GaussianProcessModel", "CURVE_MODELS",
                          "cross_validate", "seed_sd", "Score", "score", "DEFAULT_FOLDS"]
