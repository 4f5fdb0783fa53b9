"""Replay recorded curves offline: the search's own searcher and scheduler, on simulated workers.

A replay is one search, simulated. ``workers`` trials run at a time; each task of a trial takes
the seconds its recorded curve took, so an event queue on that clock orders every report as a
real search with that many workers would. After each task the trial reports ``mean_val_acc``
(METRIC) at ``tasks_done`` (TIME_ATTR) to the same objects the search builds:

* the scheduler from :func:`marktune.tune.strategy.scheduler.make_scheduler` (ResumableASHA), through
  ``on_trial_add`` / ``on_trial_result`` / ``on_trial_complete`` in the order Tune's
  ``TuneController`` calls them (``_process_trial_result``, ``stop_trial``); it gets a minimal
  trial (:class:`ReplayedTrialHandle`: the trial id, and no results to refill) and no controller
  (ASHA reads neither further);
* the searcher, :class:`marktune.tune.strategy.searcher.MarkOptunaSearch` with Optuna's TPE or random
  sampler, its study in memory (:class:`InMemoryStudyStorage`): ``suggest``, ``on_trial_result`` for each report
  the scheduler let through, ``on_trial_complete`` with the last.

Settings the searcher proposes get a stand-in from the surrogate
(:func:`marktune.replay.surrogates.make_surrogate`, fitted once per table; by default
:class:`~marktune.replay.surrogates.ModelledCurves`): a per-seed curve the trial replays, and
what a pick of it is worth. A free worker starts the next proposal until ``samples`` trials were started.

Strategies (:class:`Strategy`): ``random`` and ``tpe``, each without pruning or with ASHA, and
``first-k``: every trial stops after its first k tasks and the pick is by its val ACC there.
Random proposals are drawn from the table itself, without replacement (a new pass over the
table once every configuration was drawn): the table of a random search without pruning *is* a
sample of what Optuna's RandomSampler proposes, so a draw from it is a random search with no
surrogate error. (``random-sampler`` goes through RandomSampler and the surrogate instead.)

Regret (:meth:`ReplayOutcome.regret`): the best final test ACC of the table minus what the
trial picked is worth (a recorded configuration's final test ACC, its seeds' mean; a modelled
stand-in's predicted one), picked by its val ACC among the trials that ran all their tasks by the
time ``fraction`` x samples x tasks task-trainings were done.

Held-out scoring (``roles``, :mod:`marktune.replay.seed_roles`): every trial runs at the roles'
search seed, the confirmation draws from its confirm seeds, and both the pick's worth and the
table's best are means over its score seeds only, so no pick is scored at a seed it was selected
at. Only configurations complete at all the roles' seeds are drawn. Without ``roles`` a pick is
worth its mean over every recorded seed (seen seeds: biased, kept for tables of one seed).

Example:
    >>> from marktune.tune.spaces import load_space
    >>> from marktune.replay.table import ReplayTable, synthetic_curves
    >>> space = load_space("fmnist")
    >>> table = ReplayTable.from_curves(synthetic_curves(space=space, configs=8, seed=0))
    >>> outcome = replay(table=table, space=space, strategy=Strategy(name="random", proposals="table"),
    ...                  samples=8, workers=2, seed=0)
    >>> outcome.regret(1.0)  # every configuration ran to the end: the best was picked
    0.0
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from ray.tune.schedulers import TrialScheduler

from marktune.mark.metrics import METRIC, TIME_ATTR
from marktune.replay.costs import Costs, ParameterCounts
from marktune.replay.grid import Strategy
from marktune.replay.seed_roles import SeedRoles
from marktune.replay.surrogates import Surrogate, make_surrogate, recorded_stand_in
from marktune.replay.table import Curve, ReplayTable
from marktune.results.confirmation import best_by_mean
from marktune.results.objectives import hypervolume_2d, nondominated_ranks
from marktune.tune.spaces import SearchSpace
from marktune.tune.strategy.strategies import SCHEDULERS, generation_size

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP  # Ray's own decisions, as the search's ASHA returns


# ---------------------------------------------------------------- the searcher and scheduler
class InMemoryStudyStorage:
    """Stands in for :class:`marktune.tune.folders.study.StudyStorage`: MarkOptunaSearch only opens it
    (and names it when pickled, which a replay never does). A journal file would cost an fsync per
    change: 2.6 of the 3.5 s of a 48-trial TPE replay."""

    url = "in-memory"
    journal = None

    def open(self):
        import optuna

        return optuna.storages.InMemoryStorage()


def replay_searcher(strategy: Strategy, *, num_tasks: int, seed: int, samples: int = 50):
    """The search's searcher with the strategy's sampler (NSGA-II's generation sized to ``samples``), in memory."""
    from marktune.tune.strategy.searcher import make_searcher

    kind = "random" if strategy.proposals == "random-sampler" else strategy.proposals
    startup = 10 if strategy.n_startup_trials is None else strategy.n_startup_trials  # Optuna's default, the search's
    return make_searcher(storage=InMemoryStudyStorage(), study_name="replay", num_tasks=num_tasks,
                         seed=seed, kind=kind, n_startup_trials=startup, constant_liar=strategy.constant_liar,
                         objectives=strategy.objectives, population=generation_size(samples))


def replay_scheduler(strategy: Strategy, *, num_tasks: int):
    """The search's scheduler (the registry's, by name), told its metric and mode as Tune's
    TuneConfig tells it; None: no pruning."""
    if not strategy.prunes:
        return None
    scheduler = SCHEDULERS[strategy.scheduler].build(num_tasks=num_tasks, grace_period=strategy.grace_period,
                                                     reduction_factor=strategy.reduction_factor,
                                                     brackets=strategy.brackets,
                                                     objectives=strategy.asha_objectives or strategy.objectives)
    scheduler.set_search_properties(METRIC, "max")  # the multi-objective ASHA keeps its own
    return scheduler


@dataclass
class ReplayedTrialHandle:
    """What ASHA reads of a Tune trial: its id; ``has_reported_at_least_once`` False tells
    ResumableASHA there are no past results to refill its rungs from."""

    trial_id: str
    has_reported_at_least_once: bool = False


# ---------------------------------------------------------------- one replay
@dataclass
class ReplayedTrial:
    trial_id: str
    config: int  # index in the table's configurations (a modelled stand-in: the one its seed noise is from)
    curve: Curve
    stop_after: int  # tasks it runs unless stopped
    worth: float  # what a pick of it is worth: the final test ACC of what it stands for
    final_shift: float = 0.0  # its final val minus its recorded seed's (a modelled stand-in's offset)
    costs: tuple[float, ...] = ()  # its cost after each task, where the replay was given costs (marktune.replay.costs)
    tasks_run: int = 0
    ended_at_s: float | None = None  # simulated clock when it ended
    ended_at_trainings: int | None = None  # task-trainings done (all trials) when it ended
    finished: bool = False  # ran all its stop_after tasks

    @property
    def value(self) -> float:
        """The val ACC it is picked by: after its last task run."""
        return self.curve.val[self.tasks_run - 1]

    @property
    def size(self) -> float:
        """Its cost after its last task (a finished trial's: the whole sequence's); NaN: none."""
        return self.costs[self.tasks_run - 1] if self.costs and self.tasks_run else math.nan


@dataclass
class ReplayOutcome:
    table: ReplayTable
    trials: list[ReplayedTrial]
    budget: int  # task-trainings of a full random search of the same sample count
    task_trainings: int = 0
    wall_s: float = 0.0
    events: list[tuple[float, str, int]] = field(default_factory=list)  # (clock, trial id, tasks done)
    study: Any = None  # the searcher's Optuna study (None for proposals drawn from the table)
    roles: SeedRoles | None = None  # held-out scoring's seeds; None: scored on every recorded seed
    reference: float = math.nan  # the table's best, as a pick is scored (set by replay)

    def pick(self, fraction: float) -> ReplayedTrial | None:
        """The finished trial of best val ACC among those that ended within ``fraction`` of the
        budget (ties: the one that ended first); None when none had."""
        limit = fraction * self.budget + 1e-9
        done = [t for t in self.trials if t.finished and t.ended_at_trainings <= limit]
        if not done:
            return None
        return max(sorted(done, key=lambda t: t.ended_at_trainings), key=lambda t: t.value)

    def regret(self, fraction: float) -> float:
        """Best final test ACC of the table minus the picked configuration's (NaN: no pick)."""
        picked = self.pick(fraction)
        return math.nan if picked is None else self._regret_of(picked)

    def _regret_of(self, trial: ReplayedTrial) -> float:
        return round(self.reference - trial.worth, 12)

    def pareto_pick(self) -> list[ReplayedTrial]:
        """What a search on (val ACC, parameters) reports: the finished trials no other finished one
        beats on both, by their final val ACC as seen."""
        done = [t for t in self.trials if t.finished]
        ranks = nondominated_ranks([(-t.value, t.size) for t in done])
        return [t for t, r in zip(done, ranks) if r == 0]

    def hypervolume_regret(self, sizes: Sequence[float], picks: Sequence[ReplayedTrial] | None = None) -> float:
        """How much of the table's own front the reported Pareto set misses, in % of the box between
        the table's best corner and its worst (least accurate, largest): the hypervolume of the
        table's configurations (3-seed mean final test ACC, cost: parameters or FLOPs; ``sizes`` in
        the table's order) minus that of the picks (by default its Pareto set), each scored by
        what it is worth."""
        worth = [worth_of(c, self.roles) for c in self.table.configs]
        reference = (-min(worth), max(sizes))
        box = (max(worth) - min(worth)) * (max(sizes) - min(sizes))
        table = hypervolume_2d([(-w, z) for w, z in zip(worth, sizes)], reference)
        picks = self.pareto_pick() if picks is None else picks
        picked = hypervolume_2d([(-t.worth, t.size) for t in picks], reference)
        return 100 * (table - picked) / box if box > 0 else math.nan

    def confirm(self, *, top: int, seeds: int, rng: np.random.Generator) -> "Confirmation":
        """The confirmation stage after the whole budget: the ``top`` finished trials by their
        (one-seed) final val ACC each run again at ``seeds`` more seeds, drawn without replacement
        from the recorded seeds of its configuration that it has not shown (fewer where fewer are
        left; with held-out scoring, from the roles' confirm seeds only); the winner is the best mean
        final val over its seeds. A modelled stand-in's extra runs keep its offset from its
        configuration. ``top`` 0: no confirmation (the plain pick)."""
        plain = self.pick(1.0)
        if plain is None:
            return Confirmation(picked=None, value=math.nan, extra_runs=0, regret=math.nan)
        if top <= 0 or seeds <= 0:
            return Confirmation(picked=plain, value=plain.value, extra_runs=0, regret=self._regret_of(plain))
        done = sorted((t for t in self.trials if t.finished), key=lambda t: t.ended_at_trainings)
        finalists = sorted(done, key=lambda t: -t.value)[:top]  # stable: ties go to the one that ended first
        seen, runs = [], 0
        for trial in finalists:
            others = [c for c in self.table.configs[trial.config].curves if c.seed != trial.curve.seed
                      and (self.roles is None or c.seed in self.roles.confirm)]
            drawn = [others[i] for i in rng.permutation(len(others))[:seeds]]
            seen.append([trial.value] + [c.val[-1] + trial.final_shift for c in drawn])
            runs += len(drawn)
        i = best_by_mean(list(enumerate(seen)))  # the live stage's rule (marktune.results.confirmation)
        if i is None:
            return Confirmation(picked=None, value=math.nan, extra_runs=runs, regret=math.nan)
        best = finalists[i]
        return Confirmation(picked=best, value=float(np.mean(seen[i])), extra_runs=runs, regret=self._regret_of(best))


@dataclass(frozen=True)
class Confirmation:
    """The pick of :meth:`ReplayOutcome.confirm`: the trial, its mean val over its seeds, the
    extra runs it took (each a whole sequence), its regret (NaN: nothing finished)."""

    picked: ReplayedTrial | None
    value: float
    extra_runs: int
    regret: float


def worth_of(config, roles: SeedRoles | None) -> float:
    """What a pick of a recorded configuration is worth: its mean final test ACC at the roles'
    score seeds (held out), or over every recorded seed without roles."""
    return config.final_test if roles is None else config.test_at(roles.score)


class _TableDraws:
    """Random proposals drawn from the table without replacement, a fresh pass when exhausted.
    (A random search's table is a sample of the random sampler's proposals: drawing from it is
    random search without the surrogate's error; see the module's text.)"""

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self._size, self._rng, self._order = size, rng, []

    def next(self) -> int:
        if not self._order:
            self._order = list(self._rng.permutation(self._size))
        return int(self._order.pop(0))


def replay(*, table: ReplayTable, space: SearchSpace, strategy: Strategy, samples: int, workers: int = 2,
           seed: int = 0, surrogate: Surrogate | None = None, trial_seed: int | None = None,
           roles: SeedRoles | None = None, costs: Costs | None = None) -> ReplayOutcome:
    """One simulated search of ``samples`` trials on ``workers`` workers (see the module's text).
    ``trial_seed``: every trial drawn from the table shows its curve at this recorded seed, as a
    live search's trials all run at the space's seed (None: each draws one of its seeds).
    ``roles``: held-out scoring (its search seed replaces ``trial_seed``). ``costs``: the second
    objective's (a :class:`~marktune.replay.costs.FlopsTable` for flops; parameters by default)."""
    if roles is not None:
        trial_seed = roles.search
    if strategy.proposals == "table":
        return _replay(table, space, strategy, samples, workers, seed, surrogate, trial_seed, roles, costs)
    import optuna

    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per trial told
    try:
        return _replay(table, space, strategy, samples, workers, seed, surrogate, trial_seed, roles, costs)
    finally:
        optuna.logging.set_verbosity(before)


def _replay(table: ReplayTable, space: SearchSpace, strategy: Strategy, samples: int, workers: int, seed: int,
            surrogate: Surrogate | None, trial_seed: int | None = None,
            roles: SeedRoles | None = None, costs: Costs | None = None) -> ReplayOutcome:
    if samples < 1 or workers < 1:
        raise ValueError("samples and workers must be at least 1")
    rng = np.random.default_rng(seed)
    if strategy.brackets > 1:  # Ray's AsyncHyperBandScheduler puts a trial in a bracket with np.random
        np.random.seed(seed)
    num_tasks = table.num_tasks
    stop_after = strategy.stop_after or num_tasks
    scheduler = replay_scheduler(strategy, num_tasks=num_tasks)
    # with held-out scoring, only configurations recorded at every seed of the roles take part
    pool = [i for i, c in enumerate(table.configs) if roles is None or c.has_seeds(roles.seeds)]
    if not pool:
        raise ValueError(f"no configuration of the table is complete at every seed of {roles}")
    outcome = ReplayOutcome(table=table, trials=[], budget=samples * num_tasks, roles=roles,
                            reference=max(worth_of(table.configs[i], roles) for i in pool))
    propose, searcher = _proposals(table, space, strategy, pool=pool, rng=rng, seed=seed, samples=samples,
                                   surrogate=surrogate, trial_seed=trial_seed)
    cost, costs = _cost(strategy, space, costs)
    queue: list[tuple[float, int, int]] = []  # (clock at the end of its next task, start order, trial)
    handles: list[ReplayedTrialHandle] = []

    def start(now: float) -> None:
        trial_id = f"{len(outcome.trials):05d}"
        settings, stand_in = propose(trial_id)
        curve, worth = stand_in.curve, stand_in.worth
        recorded = table.configs[stand_in.config]
        if roles is not None and recorded.has_seeds(roles.score):
            # held out: the recorded configuration's mean at the score seeds, moved as far as a
            # modelled stand-in's prediction moved it from the configuration's mean
            worth += worth_of(recorded, roles) - recorded.final_test
        outcome.trials.append(ReplayedTrial(trial_id=trial_id, config=stand_in.config, curve=curve,
                                            stop_after=stop_after, worth=worth,
                                            final_shift=stand_in.final_shift,
                                            costs=costs.curve(settings, tasks=num_tasks) if costs is not None else ()))
        handles.append(ReplayedTrialHandle(trial_id))
        if scheduler is not None:
            scheduler.on_trial_add(None, handles[-1])
        heapq.heappush(queue, (now + curve.seconds[0], len(outcome.trials) - 1, len(outcome.trials) - 1))

    def end(trial: ReplayedTrial, now: float, *, finished: bool) -> None:
        trial.ended_at_s, trial.ended_at_trainings, trial.finished = now, outcome.task_trainings, finished
        outcome.wall_s = max(outcome.wall_s, now)
        if len(outcome.trials) < samples:
            start(now)  # the worker it freed

    for _ in range(min(workers, samples)):
        start(0.0)
    while queue:
        now, order, i = heapq.heappop(queue)
        trial, handle = outcome.trials[i], handles[i]
        trial.tasks_run += 1
        outcome.task_trainings += 1
        k = trial.tasks_run
        outcome.events.append((now, trial.trial_id, k))
        result = {METRIC: trial.curve.val[k - 1], TIME_ATTR: k, "training_iteration": k,
                  "trial_id": trial.trial_id, **({cost.metric: trial.costs[k - 1]} if cost else {})}
        last = k >= trial.stop_after
        if _told(scheduler, searcher, handle, result, last=last):
            end(trial, now, finished=last)
        else:
            heapq.heappush(queue, (now + trial.curve.seconds[k], order, i))
    outcome.study = searcher.study if searcher is not None else None
    return outcome


def _proposals(table: ReplayTable, space: SearchSpace, strategy: Strategy, *, pool: list[int],
               rng: np.random.Generator, seed: int, samples: int, surrogate: Surrogate | None,
               trial_seed: int | None):
    """``propose(trial_id) -> (settings, stand-in)``, and the searcher that proposes (None: the
    settings are drawn from the table's ``pool``, without replacement)."""
    if strategy.proposals == "table":
        draws = _TableDraws(len(pool), rng)

        def drawn(trial_id: str):
            stand_in = recorded_stand_in(table, pool[draws.next()], rng, seed=trial_seed)
            return table.configs[stand_in.config].params, stand_in
        return drawn, None
    surrogate = surrogate if surrogate is not None else make_surrogate(table=table, space=space)
    searcher = replay_searcher(strategy, num_tasks=table.num_tasks, seed=seed, samples=samples)
    if len(strategy.objectives) > 1:  # as the search's Tuner: the searcher keeps its own metrics
        searcher.set_search_properties(None, None, space.param_space())
    else:
        searcher.set_search_properties(METRIC, "max", space.param_space())

    def suggested(trial_id: str):
        settings = searcher.suggest(trial_id)
        return settings, surrogate.stand_in(settings, rng, seed=trial_seed)
    return suggested, searcher


def _cost(strategy: Strategy, space: SearchSpace, costs: Costs | None):
    """The second objective (None: one objective) and what gives a trial's: ``costs``, else the
    parameters counted from the settings. (Costs given to a one-objective replay are recorded on
    its trials, not reported: what a bench scores its picks by.)"""
    cost = strategy.objectives[1] if len(strategy.objectives) > 1 else None
    if cost is not None and costs is None:
        if cost.name != "params":
            raise ValueError(f"a replay on {cost.name} needs its costs (marktune.replay.costs.FlopsTable)")
        costs = ParameterCounts(space)
    return cost, costs


def _told(scheduler, searcher, handle: ReplayedTrialHandle, result: dict[str, Any], *, last: bool) -> bool:
    """One result through the scheduler and the searcher as Tune passes it: the scheduler judges
    it, the searcher sees it unless it is a STOP. True: the trial ended (stopped, or ``last``)."""
    decision = scheduler.on_trial_result(None, handle, result) if scheduler is not None else CONTINUE
    if decision == STOP or last:
        if decision != STOP and searcher is not None:
            searcher.on_trial_result(handle.trial_id, result)  # a trial that returned: FIFO's CONTINUE
        if scheduler is not None:
            scheduler.on_trial_complete(None, handle, result)
        if searcher is not None:
            searcher.on_trial_complete(handle.trial_id, result=result)
        return True
    if searcher is not None:
        searcher.on_trial_result(handle.trial_id, result)
    return False
