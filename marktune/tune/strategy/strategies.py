"""One place for a search strategy: which Optuna sampler proposes trials, which scheduler stops them.

:data:`SAMPLERS` and :data:`SCHEDULERS` are registries, name -> entry. Each entry names its
factory (``"module:function"``, imported only when a search builds it, so reading a space file
imports neither Optuna nor Ray), says in words what it does, and which of the search's options it
reads. Everything that names a strategy reads them: the space files' checks
(:mod:`marktune.tune.spaces`), the ``--searcher``/``--scheduler`` flags and their help
(:mod:`marktune.cli.search`), the plan's first lines, the search run and the replay's grid
(:mod:`marktune.replay.search`). A name the live search accepts is a name the replay runs.

:class:`SearchStrategy` is a search's strategy as typed settings: the flags, else the space's
``defaults:``, parsed and checked once (:meth:`SearchStrategy.chosen`).

Adding a scheduler (or a sampler) is one file with its factory and one entry here;
``hyperband`` (:mod:`marktune.tune.strategy.hyperband`) was added so.

Example:
    >>> sorted(SCHEDULERS)
    ['asha', 'hyperband', 'none']
    >>> SAMPLERS["qmc"].words
    "Optuna's QMC sampler (scrambled Sobol)"
    >>> s = SearchStrategy.chosen({"searcher": "random", "n_startup_trials": 10, "constant_liar": True,
    ...                            "scheduler": "asha", "grace_period": 2, "reduction_factor": 3, "brackets": 3})
    >>> s.words(samples=32, num_tasks=5)
    "Optuna's random sampler; ASHA stops weak trials (grace period 2 tasks, reduction factor 3)"
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from marktune.results.objectives import SINGLE, Objective


class StrategyError(ValueError):
    """A strategy's name or option that the search cannot run, in words."""


def _factory(path: str) -> Callable[..., Any]:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


# ---------------------------------------------------------------- samplers
@dataclass(frozen=True, kw_only=True)
class SamplerKind:
    """An Optuna sampler the search can run, by name."""

    name: str
    words: str  # what the plan's first line calls it
    help: str  # its part of --searcher's help
    factory: str  # "module:function"(seed=, n_startup_trials=, constant_liar=) -> optuna.samplers.BaseSampler
    # what it draws at random before it models: its first n_startup_trials, a first generation of
    # `population` trials, or every trial (it never models)
    random_start: str = "n_startup_trials"
    population: int = 0  # the largest first generation, where random_start is "population" (Optuna's default)
    constant_liar: bool = False  # it reads --constant-liar

    def build(self, *, seed: int | None, n_startup_trials: int, constant_liar: bool = True,
              population: int | None = None):
        options = {"seed": seed, "n_startup_trials": n_startup_trials, "constant_liar": constant_liar}
        if self.random_start == "population":  # NSGA-II's generation size (SearchStrategy.population_for)
            options["population"] = population or self.population
        return _factory(self.factory)(**options)


_S = "marktune.tune.strategy.samplers:"
SAMPLERS: dict[str, SamplerKind] = {s.name: s for s in (
    SamplerKind(name="tpe", words="Optuna's TPE", help="multivariate TPE", factory=_S + "tpe", constant_liar=True),
    SamplerKind(name="tpe-independent", words="Optuna's TPE (one density per setting)",
                help="TPE, one density per setting", factory=_S + "tpe_independent", constant_liar=True),
    SamplerKind(name="tpe-group", words="Optuna's TPE (grouped settings)", help="TPE over groups of settings",
                factory=_S + "tpe_group", constant_liar=True),
    SamplerKind(name="gp", words="Optuna's GP sampler", help="GPSampler", factory=_S + "gp"),
    SamplerKind(name="qmc", words="Optuna's QMC sampler (scrambled Sobol)", help="scrambled Sobol",
                factory=_S + "qmc", random_start="all"),
    SamplerKind(name="random", words="Optuna's random sampler", help="random search", factory=_S + "random_search",
                random_start="all"),
    SamplerKind(name="nsga2", words="Optuna's NSGA-II", help="NSGA-II, for several --objectives",
                factory=_S + "nsga2", random_start="population", population=50),
)}


# ---------------------------------------------------------------- schedulers
@dataclass(frozen=True, kw_only=True)
class SchedulerKind:
    """A Tune scheduler the search can run (which trials stop early), by name."""

    name: str
    words: str  # what the plan's first line calls it ("" for none)
    help: str  # its part of --scheduler's help
    # "module:function"(num_tasks=, grace_period=, reduction_factor=, brackets=, objectives=) -> a
    # TrialScheduler that relocates new trials and refills what it recorded on --resume
    factory: str
    stops: bool = True  # it stops trials early (reads grace_period and reduction_factor)
    brackets: bool = False  # it reads the space's brackets
    multiobjective: str = ""  # its words with several --objectives; "" : it takes one objective only
    stopped_by: str = "stopped early"  # how the summary names a trial it stopped

    def build(self, *, num_tasks: int, grace_period: int, reduction_factor: float, brackets: int = 1,
              objectives: Sequence[Objective] = SINGLE):
        if len(objectives) > 1 and not self.multiobjective:
            raise StrategyError(f"--scheduler {self.name} ranks one objective; with several --objectives "
                                f"use one of {', '.join(n for n, s in SCHEDULERS.items() if s.multiobjective)}")
        return _factory(self.factory)(num_tasks=num_tasks, grace_period=grace_period,
                                      reduction_factor=reduction_factor, brackets=brackets, objectives=objectives)


SCHEDULERS: dict[str, SchedulerKind] = {s.name: s for s in (
    SchedulerKind(name="asha", words="ASHA", help="ASHA, stops weak trials at its rungs",
                  factory="marktune.tune.strategy.scheduler:asha", multiobjective="multi-objective ASHA (non-dominated sorting)",
                  stopped_by="stopped by ASHA"),
    SchedulerKind(name="hyperband", words="asynchronous Hyperband", brackets=True,
                  help="asynchronous Hyperband, ASHA over several brackets of grace periods",
                  factory="marktune.tune.strategy.hyperband:hyperband", stopped_by="stopped by Hyperband"),
    SchedulerKind(name="none", words="", help="no early stopping: every trial runs every task, recording its "
                  "whole curve", factory="marktune.tune.strategy.scheduler:no_stopping", stops=False,
                  multiobjective="no early stopping"),
)}


def sampler(name: str) -> SamplerKind:
    try:
        return SAMPLERS[name]
    except KeyError:
        raise StrategyError(f"unknown searcher {name!r}; one of {', '.join(SAMPLERS)}") from None


def scheduler(name: str) -> SchedulerKind:
    try:
        return SCHEDULERS[name]
    except KeyError:
        raise StrategyError(f"unknown scheduler {name!r}; one of {', '.join(SCHEDULERS)}") from None


def flag_help(registry: Mapping[str, SamplerKind | SchedulerKind]) -> str:
    """``name (its help), ...`` for a flag's help: it lists what the registry holds, so it cannot go stale."""
    return ", ".join(f"{name} ({entry.help})" for name, entry in registry.items())


def generation_size(samples: int, *, setting: int | None = None) -> int:
    """NSGA-II's generation for a search of ``samples`` trials: ``setting``, else a quarter of
    the trials, at least 2 (its crossover's parents), at most Optuna's 50."""
    if setting is not None:
        return setting
    return max(2, min(SAMPLERS["nsga2"].population, samples // 4))


# ---------------------------------------------------------------- a search's strategy, typed
# the keys of a space's defaults: that a strategy reads (the flags --searcher, --n-startup-trials,
# --constant-liar and --scheduler override the first four)
STRATEGY_KEYS = ("searcher", "n_startup_trials", "constant_liar", "scheduler", "grace_period", "reduction_factor",
                 "brackets", "population")


@dataclass(frozen=True, kw_only=True)
class SearchStrategy:
    """Which sampler proposes the trials and which scheduler stops them, with their options."""

    searcher: str = "tpe"
    n_startup_trials: int = 10  # TPE's and GP's random trials before they model
    constant_liar: bool = True  # TPE's: a running trial counts as a bad result
    scheduler: str = "asha"
    grace_period: int = 1  # the scheduler's first rung, in tasks
    reduction_factor: float = 2
    brackets: int = 3  # hyperband's
    population: int | None = None  # NSGA-II's generation; None: sized to the search (population_for)

    def __post_init__(self) -> None:
        sampler(self.searcher), scheduler(self.scheduler)  # known names, or a StrategyError
        for key, low in (("n_startup_trials", 0), ("grace_period", 1), ("reduction_factor", 2), ("brackets", 1),
                         ("population", 2)):
            value = getattr(self, key)
            if key == "population" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
                raise StrategyError(f"{key} must be a number >= {low} (got {value!r})")
        if not isinstance(self.constant_liar, bool):
            raise StrategyError(f"constant_liar must be true or false (got {self.constant_liar!r})")

    @classmethod
    def chosen(cls, defaults: Mapping[str, Any], **flags: Any) -> "SearchStrategy":
        """Each of :data:`STRATEGY_KEYS` from ``flags`` where given (not None), else from ``defaults``."""
        unknown = set(flags) - set(STRATEGY_KEYS)
        if unknown:
            raise TypeError(f"not a strategy setting: {', '.join(sorted(unknown))}")
        return cls(**{k: flags[k] if flags.get(k) is not None else defaults[k] for k in STRATEGY_KEYS if k in defaults
                      or flags.get(k) is not None})

    @property
    def sampler_kind(self) -> SamplerKind:
        return SAMPLERS[self.searcher]

    @property
    def scheduler_kind(self) -> SchedulerKind:
        return SCHEDULERS[self.scheduler]

    def check_tasks(self, tasks: int) -> str | None:
        """Why the scheduler cannot run over ``tasks`` tasks (its grace period is past them), or None."""
        if self.scheduler_kind.stops and self.grace_period > tasks:
            return f"grace_period ({self.grace_period}) exceeds the {tasks} tasks a trial runs"
        return None

    def population_for(self, samples: int) -> int:
        """NSGA-II's generation size: the setting, else a quarter of the trials (at least 2, the
        crossover's parents; at most Optuna's 50), so a search of 32 trials evolves over 4
        generations instead of staying random, as Optuna's 50 would keep any search under 50."""
        return generation_size(samples, setting=self.population)

    def make_sampler(self, *, seed: int | None, samples: int):
        return self.sampler_kind.build(seed=seed, n_startup_trials=self.n_startup_trials,
                                       constant_liar=self.constant_liar, population=self.population_for(samples))

    def make_scheduler(self, *, num_tasks: int, objectives: Sequence[Objective] = SINGLE):
        return self.scheduler_kind.build(num_tasks=num_tasks, grace_period=self.grace_period,
                                         reduction_factor=self.reduction_factor, brackets=self.brackets,
                                         objectives=objectives)

    def words(self, *, samples: int, num_tasks: int, objectives: Sequence[Objective] = SINGLE) -> str:
        """Which trials run and which stop, in words. A sampler whose random start covers every
        trial of the search is random search, and this says so."""
        kind = self.sampler_kind
        if kind.random_start == "all":
            text = kind.words
        elif kind.random_start == "population":
            population = self.population_for(samples)
            text = (f"{kind.words}, whose first generation of {population} trials is random"
                    + (f": all {samples} of these are random" if samples <= population else ""))
        elif samples <= self.n_startup_trials:
            text = (f"{kind.words}, which draws its first {self.n_startup_trials} trials at random: "
                    f"all {samples} of these are random")
        else:
            text = f"{kind.words} (its first {self.n_startup_trials} trials random)"
        if kind.constant_liar and samples > self.n_startup_trials:
            text += ", constant liar " + ("on" if self.constant_liar else "off")
        if len(objectives) > 1:
            text = (f"{len(objectives)} objectives ({', '.join(o.name for o in objectives)}: "
                    + ", ".join(f"{o.direction} {o.words}" for o in objectives) + f"); {text}")
        stopper = self.scheduler_kind
        if not stopper.stops:
            return f"{text}; no early stopping (every trial runs its {num_tasks} tasks)"
        name = stopper.multiobjective if len(objectives) > 1 else stopper.words
        brackets = f", {self.brackets} brackets" if stopper.brackets else ""
        return (f"{text}; {name} stops weak trials (grace period {self.grace_period} tasks, "
                f"reduction factor {self.reduction_factor:g}{brackets})")
