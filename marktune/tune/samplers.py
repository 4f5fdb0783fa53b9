"""Which Optuna sampler proposes a search's settings: one name per sampler, each spelled out.

A search space's ``defaults.searcher`` (or ``--searcher``) names one of :data:`SEARCHERS`;
:func:`make_sampler` builds it. Every option that changes what a sampler proposes is set here
explicitly, not left to Optuna's defaults, so an upgrade of Optuna cannot change a search:

* ``tpe``: TPE, multivariate (one joint density over all settings) with the constant liar
  (a running trial counts as a bad result, so workers asking at once are not sent to the same
  place); Optuna 5.0's own defaults, written out.
* ``tpe-independent``: TPE with one density per setting (Optuna 3's default), constant liar on.
* ``tpe-group``: multivariate TPE that groups settings sampled together (``group=True``).
* ``gp``: Optuna's Gaussian-process sampler (``GPSampler``, log EI; no constant liar exists for it).
* ``qmc``: a scrambled Sobol sequence (``QMCSampler``); categorical settings drawn at random.
* ``random``: ``RandomSampler``.
* ``nsga2``: NSGA-II (``NSGAIISampler``, Optuna's defaults: population 50), for a search with
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

if TYPE_CHECKING:
    import optuna

SEARCHERS = ("tpe", "tpe-independent", "tpe-group", "gp", "qmc", "random", "nsga2")
TPE_SEARCHERS = ("tpe", "tpe-independent", "tpe-group")


def make_sampler(kind: str, *, seed: int | None, n_startup_trials: int,
                 constant_liar: bool = True) -> "optuna.samplers.BaseSampler":
    """The Optuna sampler named ``kind`` (one of :data:`SEARCHERS`), seeded with ``seed``.
    ``n_startup_trials`` random trials come first for TPE and GP; ``constant_liar`` is TPE's."""
    import warnings

    import optuna

    if kind not in SEARCHERS:
        raise ValueError(f"unknown searcher {kind!r}; one of {', '.join(SEARCHERS)}")
    with warnings.catch_warnings():  # group and QMCSampler are "experimental": a warning per search, no news
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _sampler(kind, seed=seed, n_startup_trials=n_startup_trials, constant_liar=constant_liar)


def _sampler(kind: str, *, seed: int | None, n_startup_trials: int, constant_liar: bool):
    import optuna

    if kind in TPE_SEARCHERS:
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials,
                                          multivariate=kind != "tpe-independent", group=kind == "tpe-group",
                                          constant_liar=constant_liar)
    if kind == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=n_startup_trials)
    if kind == "qmc":
        # The independent sampler (for the categorical settings) gets the seed too, so a search replays.
        return optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed,
                                          independent_sampler=optuna.samplers.RandomSampler(seed=seed),
                                          warn_independent_sampling=False, warn_asynchronous_seeding=False)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)
