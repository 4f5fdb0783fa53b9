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
over configurations (:mod:`marktune.replay.curve_models`); the settings' features and the GP fits
they share are :mod:`marktune.replay.features`.

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
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from marktune.replay.curve_models import GaussianProcessModel, NearestModel, cross_validate, expit, logit
from marktune.replay.features import (DEFAULT_FOLDS, mean_of_others, quiet_single_thread, featurise, fit_gp,
                                      gp_weights, length_scale_weights, table_features)
from marktune.replay.table import Curve, ReplayTable
from marktune.tune.spaces import SearchSpace



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
        with quiet_single_thread():
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
    return float(np.mean(np.abs(predicted - truth))), float(np.mean(np.abs(mean_of_others(truth) - truth)))


__all__: Sequence[str] = ["Surrogate", "StandIn", "recorded_stand_in", "NearestRecorded", "WeightedNearest",
                          "ModelledCurves", "SURROGATES", "make_surrogate"]
