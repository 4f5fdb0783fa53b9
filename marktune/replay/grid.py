"""What a replayed search runs: its :class:`Strategy` (proposals and pruning), and the grids of them.

A strategy's names are the live search's: samplers and schedulers come from the registries of
:mod:`marktune.tune.strategy.strategies` (``tests/tune/test_strategies.py`` holds the two to the same
names). :func:`standard_strategies` is ``bench/replay.py``'s default set; :func:`benchmark_strategies`
the grid of every proposal under every scheduler (``--grid``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from marktune.results.objectives import SINGLE, Objective
from marktune.tune.strategy.strategies import SAMPLERS, SCHEDULERS

# "table": random search drawn from the table; "random-sampler": Optuna's RandomSampler through the
# surrogate; any other: that searcher (marktune.tune.strategy.samplers) through the surrogate
PROPOSALS = ("table", "random-sampler", *[s for s in SAMPLERS if s != "random"])


@dataclass(frozen=True)
class Strategy:
    """How a replayed search proposes and stops trials."""

    name: str
    proposals: str  # one of PROPOSALS: "table" (random, drawn from the table), "random-sampler", a searcher
    grace_period: int | None = None  # ASHA's; None: no pruning
    reduction_factor: float | None = None
    stop_after: int | None = None  # first-k: every trial stops after this many tasks
    n_startup_trials: int | None = None  # TPE's and GP's random start; None: Optuna's default (10)
    constant_liar: bool = True  # TPE's
    scheduler: str = "asha"  # which stops trials when it prunes: a name of marktune.tune.strategy.strategies.SCHEDULERS
    brackets: int = 1  # hyperband's (Ray's AsyncHyperBandScheduler's brackets)
    # what the searcher and ASHA rank on: val_acc alone, or val_acc and a cost, params or flops
    # (the multi-objective study and ASHA of marktune.results.objectives; a table holds no
    # forgetting, and seconds are not a setting's property; marktune.replay.costs)
    objectives: tuple[Objective, ...] = SINGLE
    asha_objectives: tuple[Objective, ...] | None = None  # what ASHA ranks on, if not ``objectives``

    def __post_init__(self) -> None:
        if self.proposals not in PROPOSALS:
            raise ValueError(f"proposals must be one of {PROPOSALS}, not {self.proposals!r}")
        if (self.grace_period is None) != (self.reduction_factor is None):
            raise ValueError("ASHA needs both grace_period and reduction_factor")
        if self.scheduler not in SCHEDULERS or not SCHEDULERS[self.scheduler].stops:
            raise ValueError(f"scheduler must be one that stops trials, of {', '.join(SCHEDULERS)}; "
                             f"no pruning is grace_period None (got {self.scheduler!r})")
        if any(o.name not in ("val_acc", "params", "flops") for o in self.objectives):
            raise ValueError("a replay ranks on val_acc and params or flops only: the tables hold neither "
                             "forgetting nor a setting's seconds")

    @property
    def prunes(self) -> bool:
        return self.grace_period is not None


def standard_strategies(*, num_tasks: int, tpe_startups: Sequence[int | None] = (None,)) -> list[Strategy]:
    """Random and TPE (once per ``n_startup_trials`` in ``tpe_startups``; None: Optuna's 10), each
    without pruning and with ASHA (grace 1 and 2 x reduction 2 and 3), then first-k for
    k = 1 .. tasks - 1."""
    labelled = [("table", "random", None)]
    labelled += [("tpe", "tpe" if len(tpe_startups) == 1 else f"tpe s{startup or 10}", startup)
                 for startup in tpe_startups]
    out = []
    for proposals, label, startup in labelled:
        out.append(Strategy(name=label, proposals=proposals, n_startup_trials=startup))
        for grace in (1, 2):
            for factor in (2, 3):
                if grace <= num_tasks:
                    out.append(Strategy(name=f"{label} + asha g{grace} r{factor}", proposals=proposals,
                                        grace_period=grace, reduction_factor=factor, n_startup_trials=startup))
    out += [Strategy(name=f"first-{k}", proposals="table", stop_after=k) for k in range(1, num_tasks)]
    return out


# (label, proposals, constant liar) of the benchmark grid: each sampler, TPE with and without the liar
BENCHMARK_PROPOSALS = (("random", "table", True), ("random-sampler", "random-sampler", True), ("qmc", "qmc", True),
                       ("tpe", "tpe", True), ("tpe no-liar", "tpe", False),
                       ("tpe-independent", "tpe-independent", True), ("tpe-group", "tpe-group", True),
                       ("gp", "gp", True))
# (scheduler, grace period, reduction factor), names of marktune.tune.strategy.strategies.SCHEDULERS as the live
# search takes them: no pruning, ASHA at grace 1/2 x eta 2/3, asynchronous Hyperband (the spaces' 3 brackets)
BENCHMARK_SCHEDULERS = (("none", None, None), ("asha", 1, 2), ("asha", 1, 3), ("asha", 2, 2), ("asha", 2, 3),
                        ("hyperband", 1, 2))
HYPERBAND_BRACKETS = 3  # marktune.tune.spaces.DEFAULTS' brackets


def scheduler_label(name: str, grace: int | None, factor: float | None) -> str:
    """``asha g1 r2``; "" for none (a strategy's name is its proposals' label + " + " this)."""
    return "" if grace is None else f"{name} g{grace} r{factor:g}"


def benchmark_strategies(*, num_tasks: int, n_startup_trials: int | None = None,
                         proposals: Sequence[str] | None = None,
                         schedulers: Sequence[str] | None = None) -> list[Strategy]:
    """The benchmark grid: every proposal of :data:`BENCHMARK_PROPOSALS` (or those labelled in
    ``proposals``) under every scheduler of :data:`BENCHMARK_SCHEDULERS` (or those labelled in
    ``schedulers``, "" for none) whose grace period fits the tasks, then first-k for
    k = 1 .. tasks - 1 (unless ``proposals`` leaves out "first-k")."""
    out = []
    for label, kind, liar in BENCHMARK_PROPOSALS:
        if proposals is not None and label not in proposals:
            continue
        for scheduler, grace, factor in BENCHMARK_SCHEDULERS:
            suffix = scheduler_label(scheduler, grace, factor)
            if schedulers is not None and suffix not in schedulers:
                continue
            if grace is None or grace < num_tasks:
                out.append(Strategy(name=label + (f" + {suffix}" if suffix else ""), proposals=kind,
                                    grace_period=grace, reduction_factor=factor,
                                    scheduler="asha" if grace is None else scheduler,
                                    brackets=HYPERBAND_BRACKETS if scheduler == "hyperband" else 1,
                                    n_startup_trials=n_startup_trials, constant_liar=liar))
    if proposals is None or "first-k" in proposals:
        out += [Strategy(name=f"first-{k}", proposals="table", stop_after=k) for k in range(1, num_tasks)]
    return out
