"""Models that predict a configuration's whole per-task val curve, cross-validated over configurations.

:data:`CURVE_MODELS`: the nearest recorded configuration (weighted by the GP's length-scales), a
random forest (the spread of its trees is its uncertainty) and a Gaussian process on logit ACC
(its posterior SD). :func:`cross_validate` holds every configuration out once; :func:`score` sets
each error beside the seed-to-seed SD of the configurations predicted (docs/replay.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from marktune.replay.features import DEFAULT_FOLDS, mean_of_others, quiet_single_thread, fit_gp, fold_of, gp_weights
from marktune.replay.table import ReplayTable


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
        with quiet_single_thread():
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
    others_mean = mean_of_others(finals)
    sd = prediction.sd[which, -1]
    inside = np.abs(prediction.mean[which, -1] - finals[which]) <= 2 * sd
    return Score(subset="all" if top == 0 else f"top {100 * (1 - top):.0f} %", configs=len(which),
                 final_error=float(np.mean(np.abs(prediction.mean[which, -1] - finals[which]))),
                 curve_error=float(np.mean(np.abs(prediction.mean[which] - y[which]))),
                 mean_of_others_error=float(np.mean(np.abs(others_mean[which] - finals[which]))),
                 seed_sd=seed_sd(table, which),
                 coverage=float(np.mean(inside)) if np.all(np.isfinite(sd)) else math.nan)
