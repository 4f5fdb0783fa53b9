"""A strategy replayed many times: its regret at each budget, mean and 95 % interval over the seeds.

One replay (:func:`marktune.replay.search.replay`) is one simulated search; a strategy's figure
is an :class:`Interval` over replay seeds (with held-out scoring, rotating through the seeds'
role assignments), and :func:`replay_strategies` runs a grid of strategies in ``jobs``
processes (``bench/replay.py``).

Example:
    >>> Interval.of([1.0, 2.0, 3.0])  # doctest: +ELLIPSIS
    Interval(mean=2.0, low=-0.48..., high=4.48..., n=3)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from marktune.replay.grid import Strategy
from marktune.replay.search import replay
from marktune.replay.seed_roles import SeedRoles
from marktune.replay.surrogates import Surrogate, make_surrogate
from marktune.replay.table import ReplayTable
from marktune.tune.spaces import SearchSpace

FRACTIONS = (0.25, 0.5, 0.75, 1.0)  # of a full random search's task-trainings: 75 % sits near what ASHA uses


@dataclass(frozen=True)
class Interval:
    """Mean and 95 % t interval over the replay seeds that had a value (``n`` of them)."""

    mean: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> "Interval":
        from scipy import stats

        xs = np.array([v for v in values if not math.isnan(v)], dtype=float)
        if len(xs) == 0:
            return cls(math.nan, math.nan, math.nan, 0)
        mean = float(xs.mean())
        if len(xs) < 2:
            return cls(mean, math.nan, math.nan, 1)
        half = float(stats.t.ppf(0.975, len(xs) - 1) * xs.std(ddof=1) / math.sqrt(len(xs)))
        return cls(mean, mean - half, mean + half, len(xs))


@dataclass
class StrategyResult:
    strategy: Strategy
    regrets: dict[float, Interval]  # budget fraction -> regret over seeds
    trainings: Interval  # task-trainings used, as a fraction of the budget
    wall_s: Interval
    seeds: int


def replay_strategy(*, table: ReplayTable, space: SearchSpace, strategy: Strategy, samples: int,
                    workers: int, seeds: Sequence[int], surrogate: Surrogate | None = None,
                    fractions: Sequence[float] = FRACTIONS,
                    roles: Sequence[SeedRoles] | None = None) -> StrategyResult:
    """Replays at each of ``seeds``; with ``roles`` (held-out scoring) the i-th replay takes the
    assignment ``roles[i % len(roles)]``, so the replays rotate through them."""
    if surrogate is None and strategy.proposals != "table":
        surrogate = make_surrogate(table=table, space=space)  # once, not per seed
    outcomes = [replay(table=table, space=space, strategy=strategy, samples=samples, workers=workers,
                       seed=seed, surrogate=surrogate, roles=roles[i % len(roles)] if roles else None)
                for i, seed in enumerate(seeds)]
    return StrategyResult(
        strategy=strategy,
        regrets={f: Interval.of([o.regret(f) for o in outcomes]) for f in fractions},
        trainings=Interval.of([o.task_trainings / o.budget for o in outcomes]),
        wall_s=Interval.of([o.wall_s for o in outcomes]), seeds=len(outcomes))


# what replay_strategy imports (the searcher and scheduler are Ray Tune's and Optuna's)
_REPLAY_WORKER_MODULES = ("marktune.replay.repeats", "marktune.replay.search", "marktune.tune.strategy.searcher", "marktune.tune.strategy.scheduler")


def _replay_strategy_args(args: tuple) -> StrategyResult:
    table, space, strategy, samples, workers, seeds, surrogate, roles = args
    return replay_strategy(table=table, space=space, strategy=strategy, samples=samples, workers=workers,
                           seeds=seeds, surrogate=surrogate, roles=roles)


def replay_strategies(*, table: ReplayTable, space: SearchSpace, strategies: Sequence[Strategy], samples: int,
                      workers: int, seeds: Sequence[int], surrogate: Surrogate | None = None,
                      jobs: int = 1, roles: Sequence[SeedRoles] | None = None) -> list[StrategyResult]:
    """:func:`replay_strategy` for each strategy, in ``jobs`` processes (in order)."""
    if surrogate is None and any(s.proposals != "table" for s in strategies):
        surrogate = make_surrogate(table=table, space=space)  # once, not per strategy or process
    work = [(table, space, s, samples, workers, list(seeds), surrogate, roles) for s in strategies]
    if jobs <= 1:
        return [_replay_strategy_args(w) for w in work]
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    # Not a plain fork of this process: a child of a process that has run Ray (a driver, the test
    # session) died of SIGSEGV in _raylet.so (2026-12-01), and fork is unsafe with torch's threads.
    # The fork server is a fresh interpreter that imports what a replay needs once; each worker
    # forks from it, and the server lives on for this process's later calls.
    context = get_context("forkserver")
    context.set_forkserver_preload(list(_REPLAY_WORKER_MODULES))
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        return list(pool.map(_replay_strategy_args, work))
