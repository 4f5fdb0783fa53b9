"""Settings as features, folds, and the Gaussian-process fits the replay's surrogates and curve models share.

Every setting maps to [0, 1] (log scale for ``loguniform``/``logint``; a 0/1 column per
categorical value); :func:`fold_of` splits configurations into cross-validation folds;
:func:`fit_gp` fits scikit-learn's Gaussian process with one length-scale per feature, whose
inverse (:func:`gp_weights`) says how much each setting moves the outcome.
"""
from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from marktune.replay.table import ReplayTable
from marktune.tune.spaces import Param, SearchSpace

DEFAULT_FOLDS = 10


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
def quiet_single_thread() -> Iterator[None]:
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
    with quiet_single_thread():
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


def mean_of_others(values: np.ndarray) -> np.ndarray:
    """Each value's prediction by the mean of all the others: the bar a surrogate must clear."""
    return (values.sum() - values) / (len(values) - 1)
