"""Ray's AsyncHyperBandScheduler: the bracket of a trial, its rungs, its metric (``ResumableASHA``)."""
from __future__ import annotations

def asha_bracket(scheduler, trial_id: str):
    """The bracket (a ``ray.tune.schedulers.async_hyperband._Bracket``) ASHA gave the trial in
    ``on_trial_add``."""
    return scheduler._trial_info[trial_id]


def asha_time_attr(scheduler) -> str:
    return scheduler._time_attr


def asha_metric(scheduler) -> str:
    return scheduler._metric


def asha_metric_sign(scheduler) -> float:
    """+1 when ASHA maximises its metric, -1 when it minimises (it compares metric x sign)."""
    return scheduler._metric_op


def bracket_record(bracket, trial, *, time: int | float, signed_value: float) -> str:
    """Hand a bracket one result as ASHA does live (records it at the rung it reached, once)."""
    return bracket.on_result(trial, time, signed_value)


def asha_rungs(scheduler) -> list[dict[int | float, dict[str, float]]]:
    """Per bracket: milestone -> {trial id: recorded value (signed as ASHA compares)}; copies."""
    return [{milestone: dict(recorded) for milestone, recorded in bracket._rungs}
            for bracket in scheduler._brackets]
