"""Which trials stop when the search has several objectives: ASHA ranked by non-dominated sorting.

:class:`MultiObjectiveASHA` is the stopping variant of ASHA with tasks as the time unit (rungs at
grace period x eta^k tasks, below the last task), as Ray's ``AsyncHyperBandScheduler`` runs it for
one objective, but a trial reaching a rung is ranked with every trial recorded there by
:func:`marktune.results.objectives.nondominated_order` (fronts, then the epsilon-net), and
continues when its position is within the top 1/eta (:func:`~marktune.results.objectives.keeps`,
Syne Tune's MOASHA rule; Schmucker et al., 2021). Ray Tune has no multi-objective scheduler: its
ASHA takes one metric.

The bookkeeping is :class:`_Rungs`, apart from Tune. Like :class:`marktune.tune.strategy.scheduler.ResumableASHA`
it refills its rungs on ``--resume`` from what every restored trial reported (Tune never calls a
scheduler's save/restore), so a resumed search stops what the first would have stopped.

Example (Ray is imported by this module):
    >>> from marktune.results.objectives import parse_objectives
    >>> rungs = _Rungs(parse_objectives("val_acc,params"), num_tasks=5, grace_period=1, reduction_factor=3)
    >>> rungs.milestones
    [1, 3]
    >>> [rungs.decide(t, 1, {"mean_val_acc": v, "total_params": 1000}) for t, v in
    ...  [("a", 0.9), ("b", 0.8), ("c", 0.7), ("d", 0.95)]]
    ['CONTINUE', 'STOP', 'STOP', 'CONTINUE']
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from marktune.mark.metrics import TIME_ATTR
from marktune.results.objectives import Objective, keeps, minimised, nondominated_order, objective_values
from marktune.tune.folders.state_keeper import relocate
from marktune.tune.runs.tune_setup import reported_results

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


class _Rungs:
    """Milestone -> {trial id: its objective values there}, and the decision at each rung."""

    def __init__(self, objectives: Sequence[Objective], *, num_tasks: int, grace_period: int,
                 reduction_factor: float) -> None:
        self.objectives = tuple(objectives)
        self.reduction_factor = reduction_factor
        self.milestones: list[int] = []
        t = grace_period
        while t < num_tasks:  # the last task is the end, not a rung
            self.milestones.append(int(t))
            t *= reduction_factor
        self.recorded: dict[int, dict[str, tuple[float, ...]]] = {m: {} for m in self.milestones}

    def decide(self, trial_id: str, tasks_done: int, result: Mapping[str, Any]) -> str:
        """Record the trial at the highest rung it reached and has not been recorded at, and
        say whether it continues. A result without every objective (a NaN) is not recorded."""
        values = objective_values(result, self.objectives)
        if values is None:
            return CONTINUE
        for milestone in reversed(self.milestones):
            if tasks_done < milestone:
                continue
            recorded = self.recorded[milestone]
            if trial_id in recorded:
                return CONTINUE  # decided at this rung already (a resumed trial reporting again)
            recorded[trial_id] = values
            ids = list(recorded)
            order = nondominated_order(minimised([recorded[i] for i in ids], self.objectives))
            position = order.index(ids.index(trial_id))
            return CONTINUE if keeps(position, len(ids), self.reduction_factor) else STOP
        return CONTINUE

    def refill(self, trial_id: str, results: Iterable[Mapping[str, Any]]) -> None:
        """Record a restored trial's past results at the rungs it reached, as it was recorded live
        (recording does not depend on the other trials; deciding again is not needed: Tune
        restores a stopped trial as stopped)."""
        for result in sorted((r for r in results if TIME_ATTR in r), key=lambda r: r[TIME_ATTR]):
            values = objective_values(result, self.objectives)
            if values is None:
                continue
            for milestone in self.milestones:
                if int(result[TIME_ATTR]) == milestone:
                    self.recorded[milestone].setdefault(trial_id, values)


class MultiObjectiveASHA(FIFOScheduler):
    """MO-ASHA on tasks done; see the module's text."""

    def __init__(self, *, objectives: Sequence[Objective], num_tasks: int, grace_period: int,
                 reduction_factor: float) -> None:
        super().__init__()
        self.rungs = _Rungs(objectives, num_tasks=num_tasks, grace_period=grace_period,
                            reduction_factor=reduction_factor)
        self.num_tasks = num_tasks

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # its objectives are its own: the Tuner's single metric does not apply

    def on_trial_add(self, tune_controller, trial) -> None:
        relocate(trial)  # a resumed (maybe moved) experiment's new trials go into it
        super().on_trial_add(tune_controller, trial)
        self.rungs.refill(trial.trial_id, reported_results(trial))

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        tasks_done = int(result.get(TIME_ATTR, 0))
        if tasks_done >= self.num_tasks:
            return CONTINUE  # its last task: it ends by itself
        return self.rungs.decide(trial.trial_id, tasks_done, result)

    def debug_string(self) -> str:
        return "MultiObjectiveASHA: " + ", ".join(f"rung {m}: {len(r)} trials" for m, r in self.rungs.recorded.items())
