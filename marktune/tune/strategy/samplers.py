"""Which Optuna sampler proposes a search's settings: one name per sampler, each spelled out.

A search space's ``defaults.searcher`` (or ``--searcher``) names one of :data:`SEARCHERS`, the
registry :data:`marktune.tune.strategy.strategies.SAMPLERS`; :func:`make_sampler` builds it from the
factory its entry names (one function below each). Every option that changes what a sampler proposes is set here
explicitly, not left to Optuna's defaults, so an upgrade of Optuna cannot change a search:

* ``tpe``: TPE, multivariate (one joint density over all settings) with the constant liar
  (a running trial counts as a bad result, so workers asking at once are not sent to the same
  place); Optuna 5.0's own defaults, written out.
* ``tpe-independent``: TPE with one density per setting (Optuna 3's default), constant liar on.
* ``tpe-group``: multivariate TPE that groups settings sampled together (``group=True``).
* ``gp``: Optuna's Gaussian-process sampler (``GPSampler``, log EI; no constant liar exists for it).
* ``qmc``: a scrambled Sobol sequence (``QMCSampler``); categorical settings drawn at random.
* ``random``: ``RandomSampler``.
* ``nsga2``: NSGA-II (``NSGAIISampler``; its generation sized to the search, a quarter of the
  trials from 2 to Optuna's 50, or the space's ``population``), for a search with
  several ``--objectives``; TPE handles several objectives too (Optuna's MOTPE).

``constant_liar`` (a space default and ``--constant-liar``/``--no-constant-liar``) applies to the
TPE samplers only. The replay bench (``bench/replay.py``, docs/replay.md) measured them side by side.

Example:
    >>> type(make_sampler("qmc", seed=0, n_startup_trials=10)).__name__
    'QMCSampler'
    >>> make_sampler("tpe", seed=0, n_startup_trials=4, constant_liar=False)._constant_liar
    False
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from marktune.tune.strategy.strategies import SAMPLERS, sampler

if TYPE_CHECKING:
    import optuna

SEARCHERS = tuple(SAMPLERS)  # the names, registered in marktune.tune.strategy.strategies
TPE_SEARCHERS = tuple(name for name, kind in SAMPLERS.items() if kind.constant_liar)


def make_sampler(kind: str, *, seed: int | None, n_startup_trials: int, constant_liar: bool = True,
                 population: int | None = None) -> "optuna.samplers.BaseSampler":
    """The Optuna sampler named ``kind`` (one of :data:`SEARCHERS`), seeded with ``seed``.
    ``n_startup_trials`` random trials come first for TPE and GP; ``constant_liar`` is TPE's;
    ``population`` NSGA-II's generation size (None: Optuna's 50)."""
    import warnings

    import optuna

    entry = sampler(kind)
    with warnings.catch_warnings():  # group and QMCSampler are "experimental": a warning per search, no news
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return entry.build(seed=seed, n_startup_trials=n_startup_trials, constant_liar=constant_liar,
                           population=population)


# ---------------------------------------------------------------- the factories the registry names
def _tpe(*, seed, n_startup_trials, constant_liar, multivariate: bool, group: bool):
    import optuna

    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials, multivariate=multivariate,
                                      group=group, constant_liar=constant_liar)


def tpe(*, seed, n_startup_trials, constant_liar):
    return _tpe(seed=seed, n_startup_trials=n_startup_trials, constant_liar=constant_liar, multivariate=True,
                group=False)


def tpe_independent(*, seed, n_startup_trials, constant_liar):
    return _tpe(seed=seed, n_startup_trials=n_startup_trials, constant_liar=constant_liar, multivariate=False,
                group=False)


def tpe_group(*, seed, n_startup_trials, constant_liar):
    return _tpe(seed=seed, n_startup_trials=n_startup_trials, constant_liar=constant_liar, multivariate=True,
                group=True)


def gp(*, seed, n_startup_trials, constant_liar):
    import optuna

    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=n_startup_trials)


def qmc(*, seed, n_startup_trials, constant_liar):
    import optuna

    # The independent sampler (for the categorical settings) gets the seed too, so a search replays.
    return optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed,
                                      independent_sampler=optuna.samplers.RandomSampler(seed=seed),
                                      warn_independent_sampling=False, warn_asynchronous_seeding=False)


def nsga2(*, seed, n_startup_trials, constant_liar, population):
    import optuna

    return optuna.samplers.NSGAIISampler(seed=seed, population_size=population)


def random_search(*, seed, n_startup_trials, constant_liar):
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)
