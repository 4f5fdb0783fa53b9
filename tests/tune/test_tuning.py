"""The study's storage, the searcher's checkpoint, and ASHA rungs that survive --resume.

Quick tests need no Ray cluster; the slow one runs Ray Tune on a tiny function trainable and
interrupts it with SIGINT, as Ctrl-C would.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from marktune.mark.metrics import METRIC, TIME_ATTR
from marktune.tune.study import StorageError, StudyStorage, open_study


# ---------------------------------------------------------------- storage
def test_bad_storage_urls_are_clear_errors(tmp_path):
    with pytest.raises(StorageError, match="not a database URL"):
        StudyStorage(url="::not a url").check(study_name="x", resume=False)
    with pytest.raises(StorageError, match="does not exist"):
        StudyStorage(url=f"sqlite:///{tmp_path}/no/such/folder/db.sqlite").check(study_name="x", resume=False)
    # nothing listens on port 1: refused at once
    with pytest.raises(StorageError, match="cannot reach 127.0.0.1:1"):
        StudyStorage(url="postgresql://me:secret@127.0.0.1:1/studies").check(study_name="x", resume=False)


def test_a_new_search_refuses_a_study_that_exists_and_resume_needs_it(tmp_path):
    import optuna

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    optuna.create_study(study_name="taken", storage=url)
    storage = StudyStorage(url=url)
    with pytest.raises(StorageError, match="already holds a study 'taken'"):
        storage.check(study_name="taken", resume=False)
    storage.check(study_name="taken", resume=True)
    storage.check(study_name="free", resume=False)
    with pytest.raises(StorageError, match="no study 'free' to resume"):
        storage.check(study_name="free", resume=True)
    assert open_study(storage, "taken").study_name == "taken"
    # a relative SQLite path is made absolute: --resume from another folder finds the same file
    relative = StudyStorage.for_experiment(experiment_dir=tmp_path, url="sqlite:///rel.db")
    assert relative.url == f"sqlite:///{Path('rel.db').resolve()}"
    default = StudyStorage.for_experiment(experiment_dir=tmp_path / "exp", url=None)
    assert default.journal == (tmp_path / "exp" / "optuna_journal.log").resolve()


def test_bad_optuna_storage_on_the_command_line_exits_2_before_ray(tmp_path, monkeypatch, capsys):
    from marktune.cli import search

    monkeypatch.setattr(search, "start_ray", lambda *a, **k: pytest.fail("Ray was started"))
    for url, message in [("::not a url", "not a database URL"),
                         ("postgresql://me:secret@127.0.0.1:1/studies", "cannot reach 127.0.0.1:1")]:
        started = time.monotonic()
        code = search.main(["--space", "digits", "--storage", str(tmp_path / "s"), "--optuna-storage", url])
        took = time.monotonic() - started  # reported, not asserted: this machine may be loaded
        stdout, stderr = capsys.readouterr()
        out = stdout + stderr
        assert code == 2, out
        assert message in stderr and "--optuna-storage" in stderr, out
        assert "secret" not in out  # the password is not printed
        assert "Traceback" not in out and "Ray" not in out, out  # Ray never started
        assert not (tmp_path / "s").exists()  # nothing written
        print(f"{url}: exit 2 after {took:.1f} s")


# ---------------------------------------------------------------- the searcher
def test_searcher_checkpoint_reopens_the_study_in_its_storage(tmp_path):
    from optuna.trial import TrialState
    from ray import tune

    from marktune.tune.tuning import make_searcher

    storage = StudyStorage(journal=tmp_path / "optuna_journal.log")
    searcher = make_searcher(storage=storage, study_name="exp", num_tasks=3, seed=0)
    searcher.set_search_properties(None, None, {"lr": tune.loguniform(1e-3, 1e-1)})
    for tid in ("a", "b", "c"):
        searcher.suggest(tid)
    searcher.on_trial_result("a", {TIME_ATTR: 1, METRIC: 0.5})
    searcher.on_trial_complete("b", {TIME_ATTR: 1, METRIC: 0.6})  # stopped by ASHA after 1 of 3 tasks
    checkpoint = tmp_path / "searcher-state.pkl"
    searcher.save(str(checkpoint))
    assert b"optuna.study" not in checkpoint.read_bytes()  # the study is not pickled, its address is

    again = make_searcher(storage=storage, study_name="exp", num_tasks=3, seed=0)
    again.restore(str(checkpoint))
    again.on_trial_result("a", {TIME_ATTR: 2, METRIC: 0.7})
    again.on_trial_complete("a", {TIME_ATTR: 3, METRIC: 0.8})
    study = open_study(storage, "exp")  # as another process reads it
    by_number = {t.number: t for t in study.trials}
    assert by_number[0].state == TrialState.COMPLETE and by_number[0].intermediate_values == {1: 0.5, 2: 0.7, 3: 0.8}
    assert by_number[1].state == TrialState.PRUNED and by_number[1].intermediate_values == {1: 0.6}
    assert by_number[2].state == TrialState.RUNNING  # c never ran: not pruned, not complete


# ---------------------------------------------------------------- ASHA's rungs
def _trial_with_results(tmp_path: Path, trial_id: str, values: list[float]):
    folder = tmp_path / f"trial_{trial_id}"
    folder.mkdir()
    (folder / "result.json").write_text("".join(
        json.dumps({TIME_ATTR: t, METRIC: v}) + "\n" for t, v in enumerate(values, start=1)))
    return SimpleNamespace(trial_id=trial_id, local_path=str(folder), path=str(folder), status="TERMINATED")


@pytest.mark.parametrize("restorable", [True, False], ids=["ResumableASHA", "Tune's ASHA (before)"])
def test_restored_trials_refill_the_rungs(tmp_path, restorable):
    """Four trials that ran before --resume are handed to the scheduler as Tune restores them;
    a new trial then reports 0.5 after the grace period. Against the rebuilt rung (cut at the
    median, 0.75) it is stopped; against empty rungs (Tune's own ASHA) it would go on."""
    from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

    from marktune.tune.tuning import make_scheduler

    kwargs = dict(num_tasks=4, grace_period=1, reduction_factor=2)
    scheduler = (make_scheduler(**kwargs) if restorable else
                 AsyncHyperBandScheduler(time_attr=TIME_ATTR, max_t=4, grace_period=1, reduction_factor=2))
    scheduler.set_search_properties(METRIC, "max")
    past = {"p1": [0.9, 0.9, 0.9, 0.9], "p2": [0.8, 0.85, 0.9, 0.92], "p3": [0.6, 0.6], "p4": [0.7]}
    for tid, values in past.items():
        scheduler.on_trial_add(None, _trial_with_results(tmp_path, tid, values))
    new = SimpleNamespace(trial_id="new", local_path=str(tmp_path / "trial_new"), path=None, status="PENDING")
    scheduler.on_trial_add(None, new)
    action = scheduler.on_trial_result(None, new, {TIME_ATTR: 1, METRIC: 0.5})
    if restorable:
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
    else:
        assert action == TrialScheduler.CONTINUE  # the behaviour the issue reports


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
                           # turned Tune's automatic loggers off (marktune.tune.launch.prepare_tune)
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
@pytest.mark.parametrize("restorable", [True, False], ids=["ResumableASHA", "Tune's ASHA (before)"])
def test_resumed_search_keeps_pruning(tmp_path, restorable, monkeypatch):
    """After the resume, the interrupted trial reports 0.5 after the grace period, below the
    rung's cut (0.9, from the two trials that finished before the interruption): it is
    stopped there. With Tune's own ASHA the rungs are empty after the resume and it runs on."""
    from ray.tune.schedulers import AsyncHyperBandScheduler

    from marktune.tune.tuning import make_scheduler

    scheduler = (make_scheduler(num_tasks=4, grace_period=1, reduction_factor=2) if restorable else
                 AsyncHyperBandScheduler(time_attr=TIME_ATTR, max_t=4, grace_period=1, reduction_factor=2))
    # the driver writes results to its staging folder and copies them to the experiment's folder
    # with each state snapshot: every second here, as marktune.search sets it
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "1")
    tasks = _run_interrupted_then_resumed(tmp_path, scheduler)
    assert tasks[0] == 4 and tasks[1] == 4
    assert tasks[2] == (1 if restorable else 4)
