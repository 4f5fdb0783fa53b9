"""ASHA rungs that survive --resume.

Quick tests need no Ray cluster; the slow one runs Ray Tune on a tiny function trainable and
interrupts it with SIGINT, as Ctrl-C would.
"""
from __future__ import annotations

import doctest
import json
import os
import signal
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from marktune.mark.metrics import METRIC, TIME_ATTR
from marktune.tune.strategy import scheduler as scheduler_module
from marktune.tune.strategy.scheduler import make_scheduler
from marktune.tune.runs.tune_setup import reported_results


def test_docstring_examples_run():
    failures, tried = doctest.testmod(scheduler_module)
    assert tried > 0 and failures == 0


def _trial_with_results(tmp_path: Path, trial_id: str, values: list[float]):
    folder = tmp_path / f"trial_{trial_id}"
    folder.mkdir()
    (folder / "result.json").write_text("".join(
        json.dumps({TIME_ATTR: t, METRIC: v}) + "\n" for t, v in enumerate(values, start=1)))
    return SimpleNamespace(trial_id=trial_id, local_path=str(folder), path=str(folder), status="TERMINATED")


def test_restored_trials_refill_the_rungs(tmp_path):
    """Four trials that ran before --resume are handed to the scheduler as Tune restores them;
    a new trial then reports 0.5 after the grace period. Against the rebuilt rung (cut at the
    median, 0.75) it is stopped."""
    from ray.tune.schedulers import TrialScheduler

    scheduler = make_scheduler(num_tasks=4, grace_period=1, reduction_factor=2)
    scheduler.set_search_properties(METRIC, "max")
    past = {"p1": [0.9, 0.9, 0.9, 0.9], "p2": [0.8, 0.85, 0.9, 0.92], "p3": [0.6, 0.6], "p4": [0.7]}
    for tid, values in past.items():
        scheduler.on_trial_add(None, _trial_with_results(tmp_path, tid, values))
    new = SimpleNamespace(trial_id="new", local_path=str(tmp_path / "trial_new"), path=None, status="PENDING")
    scheduler.on_trial_add(None, new)
    action = scheduler.on_trial_result(None, new, {TIME_ATTR: 1, METRIC: 0.5})
    rungs = scheduler.rungs()[0]
    # every trial at the rungs it reached, exactly as ASHA recorded them live
    assert rungs[1] == {"p1": 0.9, "p2": 0.8, "p3": 0.6, "p4": 0.7, "new": 0.5}
    assert rungs[2] == {"p1": 0.9, "p2": 0.85, "p3": 0.6}
    assert rungs[4] == {"p1": 0.9, "p2": 0.92}
    # replaying again (Tune re-adds a retried trial) records nothing twice
    (tmp_path / "again").mkdir()
    scheduler.on_trial_add(None, _trial_with_results(tmp_path / "again", "p1", [0.1, 0.1]))
    assert scheduler.rungs()[0][1]["p1"] == 0.9
    assert action == TrialScheduler.STOP


def test_reported_results_skip_a_torn_last_line_and_a_trial_that_never_reported(tmp_path):
    trial = _trial_with_results(tmp_path, "t", [0.5, 0.6])
    with open(Path(trial.local_path) / "result.json", "a") as f:
        f.write('{"tasks_done": 3, "mean_va')  # the driver killed mid-write
    assert [r[TIME_ATTR] for r in reported_results(trial)] == [1, 2]
    assert reported_results(SimpleNamespace(has_reported_at_least_once=False)) == []


# ---------------------------------------------------------------- end to end on Tune
def _trainable(config):
    """Reports config["values"] task by task. The trial marked "interrupt" waits until the other
    two have finished, then sends SIGINT to the driver once (as Ctrl-C would), before it reports
    anything, and waits to be stopped."""
    from ray import tune

    marker = Path(config["marker"])
    if config["interrupt"] and not marker.exists():
        def finished() -> int:  # trials whose last task the driver has written down
            return sum(f'"{TIME_ATTR}": 4' in p.read_text() for p in Path(config["experiment"]).glob("*/result.json"))

        deadline = time.time() + 300
        while finished() < 2 and time.time() < deadline:
            time.sleep(0.2)
        marker.write_text("interrupted")
        os.kill(config["driver_pid"], signal.SIGINT)
        time.sleep(300)
    for t, value in enumerate(config["values"], start=1):
        tune.report({TIME_ATTR: t, METRIC: value})


def _run_interrupted_then_resumed(tmp_path: Path, scheduler) -> dict[str, list[int]]:
    """Two good trials finish, the third interrupts the run (SIGINT) before it reports; the run is
    restored (Tuner.restore, as --resume does) and the third runs. Returns the tasks each trial
    (by row: 0 and 1 good, 2 the interrupted one) reported."""
    import ray
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from marktune.mark.metrics import METRIC as metric

    # the two good trials tie at every rung, so neither stops the other whichever comes first
    configs = [{"values": [0.9, 0.9, 0.9, 0.9], "interrupt": False},
               {"values": [0.9, 0.9, 0.9, 0.95], "interrupt": False},
               {"values": [0.5, 0.5, 0.5, 0.5], "interrupt": True}]
    param_space = {"row": tune.grid_search([0, 1, 2]), "values": tune.sample_from(lambda c: configs[c["row"]]["values"]),
                   "interrupt": tune.sample_from(lambda c: configs[c["row"]]["interrupt"]),
                   "marker": str(tmp_path / "marker"), "experiment": str(tmp_path / "s" / "exp"),
                   "driver_pid": os.getpid()}
    # the trainable lives in this test file, which Ray's workers cannot import: ship it by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(address="local", num_cpus=1, include_dashboard=False, ignore_reinit_error=True)
    try:
        # all three at once (0.3 CPU each): the interrupting one waits for the other two
        trainable = tune.with_resources(_trainable, {"cpu": 0.3})
        tuner = tune.Tuner(trainable, param_space=param_space,
                           # result.json explicitly: another test in this process may have
                           # turned Tune's automatic loggers off (marktune.cli.search.prepare_tune)
                           run_config=tune.RunConfig(name="exp", storage_path=str(tmp_path / "s"), verbose=0,
                                                     callbacks=[JsonLoggerCallback()]),
                           tune_config=tune.TuneConfig(metric=metric, mode="max", scheduler=scheduler))
        first = tuner.fit()
        assert (tmp_path / "marker").exists(), "the interrupting trial never ran"
        assert len([r for r in first if r.metrics and r.metrics.get(TIME_ATTR) == 4]) == 2
        restored = tune.Tuner.restore(str(tmp_path / "s" / "exp"), trainable=trainable, resume_unfinished=True)
        results = restored.fit()
    finally:
        ray.shutdown()
    return {r.config["row"]: int(r.metrics.get(TIME_ATTR, 0)) for r in results}


@pytest.mark.slow
@pytest.mark.mostly_waiting
def test_resumed_search_keeps_pruning(tmp_path, monkeypatch):
    """After the resume, the interrupted trial reports 0.5 after the grace period, below the
    rung's cut (0.9, from the two trials that finished before the interruption): it is
    stopped there."""
    scheduler = make_scheduler(num_tasks=4, grace_period=1, reduction_factor=2)
    # the driver writes results to its staging folder and copies them to the experiment's folder
    # with each state snapshot: every second here, as marktune.search sets it
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "1")
    tasks = _run_interrupted_then_resumed(tmp_path, scheduler)
    assert tasks[0] == 4 and tasks[1] == 4
    assert tasks[2] == 1


def test_no_stopping_never_stops_a_trial_that_asha_would():
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    trials = [SimpleNamespace(trial_id=str(i), storage=None, has_reported_at_least_once=False) for i in range(3)]
    asha = make_scheduler(num_tasks=3, grace_period=1, reduction_factor=2)
    fifo = make_scheduler(num_tasks=3, grace_period=1, reduction_factor=2, kind="none")
    assert isinstance(fifo, FIFOScheduler)
    decisions = {"asha": [], "none": []}
    for kind, scheduler in (("asha", asha), ("none", fifo)):
        scheduler.set_search_properties(METRIC, "max")
        for trial, value in zip(trials, (0.9, 0.8, 0.1)):
            scheduler.on_trial_add(None, trial)
            decisions[kind].append(scheduler.on_trial_result(None, trial, {TIME_ATTR: 1, METRIC: value}))
    assert TrialScheduler.STOP in decisions["asha"]  # the same values: ASHA stops the weakest
    assert decisions["none"] == [TrialScheduler.CONTINUE] * 3
