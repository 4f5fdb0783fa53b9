"""Which trials stop: ASHA on tasks done, with rungs that survive ``--resume``; or none.

The names are registered in :data:`marktune.tune.strategy.strategies.SCHEDULERS`; the factories they name
(:func:`asha`, :func:`no_stopping`; :func:`marktune.tune.strategy.hyperband.hyperband`) build them.

``--scheduler none`` (or ``scheduler: none`` in a space's defaults) is :class:`NoStopping`: Tune's
FIFO scheduler, so every trial runs to its last task and records its whole curve.

:class:`ResumableASHA` is Ray's ``AsyncHyperBandScheduler`` whose rungs a resumed search refills:
Tune never calls a scheduler's ``save``/``restore`` (ray-project/ray#30838), so every trial Tune
restores refills the rungs from the results it reported (its ``result.json``). The bookkeeping
is apart from Ray: :func:`replayable` picks a trial's results to replay (pure),
:func:`marktune.tune.runs.tune_setup.reported_results` reads them, and ``marktune.tune.ray_internals`` is the only place
that touches ASHA's brackets.

Example (Ray is imported by this module):
    >>> scheduler = make_scheduler(num_tasks=5, grace_period=1, reduction_factor=2)
    >>> sorted(scheduler.rungs()[0])  # milestones, in tasks done
    [1, 2, 4]
    >>> type(make_scheduler(num_tasks=5, grace_period=1, reduction_factor=2, kind="none")).__name__
    'NoStopping'
    >>> replayable([{"t": 2, "m": 0.5}, {"t": 1, "m": 0.4}, {"t": 3, "m": None}], time_attr="t", metric="m")
    [(1, 0.4), (2, 0.5)]
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler

from marktune.mark.metrics import TIME_ATTR
from marktune.results.objectives import SINGLE, Objective
from marktune.tune import ray_internals
from marktune.tune.strategy.strategies import scheduler as scheduler_kind
from marktune.tune.folders.state_keeper import relocate
from marktune.tune.runs.tune_setup import reported_results


def make_scheduler(*, num_tasks: int, grace_period: int, reduction_factor: float,
                   kind: str = "asha", brackets: int = 1, objectives: Sequence[Objective] = SINGLE):
    """The scheduler named ``kind`` in :data:`marktune.tune.strategy.strategies.SCHEDULERS`: asha (ASHA on
    tasks done; the metric and mode come from the Tuner's TuneConfig: METRIC, max; with several
    ``objectives``, :class:`marktune.tune.strategy.mo_asha.MultiObjectiveASHA`), hyperband (asynchronous
    Hyperband over ``brackets`` brackets), none (no early stopping; grace period and reduction
    factor unused)."""
    return scheduler_kind(kind).build(num_tasks=num_tasks, grace_period=grace_period,
                                      reduction_factor=reduction_factor, brackets=brackets, objectives=objectives)


# ---------------------------------------------------------------- the factories the registry names
def asha(*, num_tasks: int, grace_period: int, reduction_factor: float, brackets: int = 1,
         objectives: Sequence[Objective] = SINGLE):
    """ASHA on tasks done, one bracket (``brackets`` is hyperband's; a replay may pass more, as
    asynchronous Hyperband); with several ``objectives`` the multi-objective ASHA."""
    if len(objectives) > 1:
        from marktune.tune.strategy.mo_asha import MultiObjectiveASHA

        return MultiObjectiveASHA(objectives=objectives, num_tasks=num_tasks, grace_period=grace_period,
                                  reduction_factor=reduction_factor)
    return ResumableASHA(time_attr=TIME_ATTR, max_t=num_tasks, grace_period=grace_period,
                         reduction_factor=reduction_factor, brackets=brackets)


def no_stopping(**_options) -> "NoStopping":
    """No early stopping: the grace period, reduction factor and objectives are unused."""
    return NoStopping()


class NoStopping(FIFOScheduler):
    """Tune's FIFO scheduler: no trial is stopped early. Only relocates new trials on ``--resume``
    as :class:`ResumableASHA` does (a FIFO scheduler has no rungs to refill)."""

    def on_trial_add(self, tune_controller, trial) -> None:
        relocate(trial)
        super().on_trial_add(tune_controller, trial)


class ResumableASHA(AsyncHyperBandScheduler):
    """ASHA whose rungs a resumed search refills from what every trial already reported.

    Tune hands every trial it restores (finished, stopped, interrupted) to ``on_trial_add``;
    each one's reported results are replayed into its bracket, which records the value at
    each rung the trial reached exactly as it did live (recording does not depend on other
    trials). Replaying is idempotent: a rung never records a trial twice.
    """

    def on_trial_add(self, tune_controller, trial) -> None:
        relocate(trial)  # a resumed (maybe moved) experiment's new trials go into it, not the original
        super().on_trial_add(tune_controller, trial)
        self.refill(trial, reported_results(trial))

    def refill(self, trial, results: Iterable[Mapping[str, Any]]) -> None:
        """Record ``trial``'s past ``results`` (dicts with the time attribute and the metric) in
        its bracket's rungs. The trial must have been added (``on_trial_add``)."""
        bracket = ray_internals.asha_bracket(self, trial.trial_id)
        sign = ray_internals.asha_metric_sign(self)
        for time, value in replayable(results, time_attr=ray_internals.asha_time_attr(self),
                                      metric=ray_internals.asha_metric(self)):
            ray_internals.bracket_record(bracket, trial, time=time, signed_value=sign * value)

    def rungs(self) -> list[dict[int | float, dict[str, float]]]:
        """Per bracket: milestone -> {trial id: recorded value (signed as ASHA compares)}."""
        return ray_internals.asha_rungs(self)


def replayable(results: Iterable[Mapping[str, Any]], *, time_attr: str,
               metric: str) -> list[tuple[int | float, float]]:
    """(time, value) of each result that has both and a finite value, in time order (a stable
    sort: a task reported twice keeps the order written, and a rung keeps the first)."""
    ordered = sorted((r for r in results if time_attr in r and metric in r), key=lambda r: r[time_attr])
    out = []
    for result in ordered:
        value = result[metric]
        if value is None or not math.isfinite(float(value)):
            continue
        out.append((result[time_attr], float(value)))
    return out
