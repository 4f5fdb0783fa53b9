"""The multi-objective ASHA's rung decisions and its refill on --resume."""
import doctest

from marktune.results.objectives import parse_objectives
from marktune.tune.strategy import mo_asha
from marktune.tune.strategy.mo_asha import CONTINUE, STOP, MultiObjectiveASHA, _Rungs
from marktune.tune.strategy.scheduler import make_scheduler

OBJ = parse_objectives("val_acc,params")


def _result(tasks, val, params):
    return {"tasks_done": tasks, "mean_val_acc": val, "total_params": params}


def test_docstring_examples_run():
    assert doctest.testmod(mo_asha).failed == 0


def test_a_smaller_model_survives_a_rung_where_one_objective_would_stop_it():
    rungs = _Rungs(OBJ, num_tasks=5, grace_period=1, reduction_factor=2)
    assert rungs.milestones == [1, 2, 4]
    assert rungs.decide("big", 1, _result(1, 0.95, 900_000)) == CONTINUE  # the first one recorded
    # dominated by "big" (less accurate, bigger): second of 2, within the top half
    assert rungs.decide("mid", 1, _result(1, 0.93, 910_000)) == CONTINUE
    # the least accurate of 3, but 9x smaller: non-dominated, second in the order, kept (ranked on
    # accuracy alone it would be last of 3 and stopped)
    assert rungs.decide("small", 1, _result(1, 0.90, 100_000)) == CONTINUE
    # dominated by all: last of 4
    assert rungs.decide("worst", 1, _result(1, 0.80, 960_000)) == STOP
    # at rung 2 the ranking starts again from the trials that reach it
    assert rungs.decide("small", 2, _result(2, 0.91, 100_000)) == CONTINUE
    assert rungs.decide("small", 2, _result(2, 0.91, 100_000)) == CONTINUE  # decided once per rung
    assert rungs.decide("nan", 1, _result(1, float("nan"), 1)) == CONTINUE and "nan" not in rungs.recorded[1]
    assert rungs.decide("late", 4, _result(4, 0.5, 1)) == CONTINUE  # first at rung 4 (never at rungs below)


def test_a_resumed_search_refills_the_rungs_and_decides_as_the_first_would_have():
    live = _Rungs(OBJ, num_tasks=5, grace_period=1, reduction_factor=2)
    history = {"big": [_result(1, 0.95, 900_000), _result(2, 0.96, 900_000)],
               "small": [_result(1, 0.90, 100_000)], "worse": [_result(1, 0.85, 950_000)]}
    for tid, results in history.items():
        for r in results:
            live.decide(tid, r["tasks_done"], r)
    resumed = _Rungs(OBJ, num_tasks=5, grace_period=1, reduction_factor=2)
    for tid, results in history.items():
        resumed.refill(tid, results)
    assert resumed.recorded == live.recorded
    newcomer = _result(1, 0.84, 960_000)  # dominated by all three: last of 4, stopped by either
    assert resumed.decide("new", 1, newcomer) == live.decide("new", 1, newcomer) == STOP
    # without the refill a resumed search would keep it (alone at its rung)
    assert _Rungs(OBJ, num_tasks=5, grace_period=1, reduction_factor=2).decide("new", 1, newcomer) == CONTINUE


def test_the_search_gets_the_multi_objective_asha_only_with_several_objectives():
    one = make_scheduler(num_tasks=5, grace_period=1, reduction_factor=2)
    several = make_scheduler(num_tasks=5, grace_period=1, reduction_factor=2, objectives=OBJ)
    assert type(one).__name__ == "ResumableASHA" and isinstance(several, MultiObjectiveASHA)
    assert type(make_scheduler(num_tasks=5, grace_period=1, reduction_factor=2, kind="none",
                               objectives=OBJ)).__name__ == "NoStopping"
    assert several.on_trial_result(None, type("T", (), {"trial_id": "x"})(), _result(5, 0.1, 1)) == CONTINUE
