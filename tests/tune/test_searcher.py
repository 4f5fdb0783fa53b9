"""The searcher: trials ASHA stopped are PRUNED in the study, and its checkpoint reopens the study."""
from __future__ import annotations

import doctest

from marktune.mark.metrics import METRIC, TIME_ATTR
from marktune.tune.strategy import searcher as searcher_module
from marktune.tune.strategy.searcher import make_searcher
from marktune.tune.folders.study import StudyStorage, open_study


def test_docstring_examples_run():
    failures, tried = doctest.testmod(searcher_module)
    assert tried > 0 and failures == 0


def test_searcher_checkpoint_reopens_the_study_in_its_storage(tmp_path):
    from optuna.trial import TrialState
    from ray import tune


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


def test_a_trial_told_after_the_last_checkpoint_is_not_told_again_on_resume(tmp_path):
    """The driver told the study that trial a completed, then died before Tune wrote the searcher
    checkpoint again: --resume restores the older checkpoint, Tune runs a's last task again and
    ends it again. The study keeps a COMPLETE with its value, and the search goes on."""
    from optuna.trial import TrialState
    from ray import tune

    storage = StudyStorage(journal=tmp_path / "optuna_journal.log")
    searcher = make_searcher(storage=storage, study_name="exp", num_tasks=2, seed=0)
    searcher.set_search_properties(None, None, {"lr": tune.loguniform(1e-3, 1e-1)})
    searcher.suggest("a")
    searcher.suggest("b")
    searcher.on_trial_result("a", {TIME_ATTR: 1, METRIC: 0.5})
    checkpoint = tmp_path / "searcher-state.pkl"
    searcher.save(str(checkpoint))  # the last checkpoint before the driver died
    searcher.on_trial_result("a", {TIME_ATTR: 2, METRIC: 0.7})
    searcher.on_trial_complete("a", {TIME_ATTR: 2, METRIC: 0.7})

    again = make_searcher(storage=storage, study_name="exp", num_tasks=2, seed=0)
    again.restore(str(checkpoint))
    again.on_trial_result("a", {TIME_ATTR: 2, METRIC: 0.7})  # its last task, run again
    again.on_trial_complete("a", {TIME_ATTR: 2, METRIC: 0.7})
    again.on_trial_complete("b", {TIME_ATTR: 2, METRIC: 0.6})
    by_number = {t.number: t for t in open_study(storage, "exp").trials}
    assert by_number[0].state == TrialState.COMPLETE and by_number[0].value == 0.7
    assert by_number[0].intermediate_values == {1: 0.5, 2: 0.7}
    assert by_number[1].state == TrialState.COMPLETE and by_number[1].value == 0.6


def test_a_trial_asked_after_the_last_checkpoint_is_the_next_trial_on_resume(tmp_path):
    """The driver asked the study for trial c, then died before Tune checkpointed the searcher
    (seen in the soak under load): --resume restores a searcher that never asked for it. The next
    new Tune trial takes that study trial (its settings), so the study keeps one trial per trial
    run and none stays RUNNING forever; a trial the checkpoint holds is never handed out twice."""
    from optuna.trial import TrialState
    from ray import tune

    storage = StudyStorage(journal=tmp_path / "optuna_journal.log")
    searcher = make_searcher(storage=storage, study_name="exp", num_tasks=2, seed=0)
    searcher.set_search_properties(None, None, {"lr": tune.loguniform(1e-3, 1e-1)})
    searcher.suggest("a")
    searcher.suggest("b")
    checkpoint = tmp_path / "searcher-state.pkl"
    searcher.save(str(checkpoint))  # the last checkpoint before the driver died
    lost = searcher.suggest("c")  # study trial 2: asked, never run

    again = make_searcher(storage=storage, study_name="exp", num_tasks=2, seed=1)
    again.restore(str(checkpoint))
    assert again.suggest("d") == lost  # the orphan, not a new study trial
    again.suggest("e")  # a new one
    for tid in ("a", "b", "d", "e"):
        again.on_trial_complete(tid, {TIME_ATTR: 2, METRIC: 0.5})
    trials = open_study(storage, "exp").trials
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert trials[2].params == lost


def test_random_and_tpe_samplers_behind_the_same_searcher(tmp_path):
    import optuna
    import pytest
    from ray import tune

    storage = StudyStorage(journal=tmp_path / "optuna_journal.log")
    tpe = make_searcher(storage=storage, study_name="tpe", num_tasks=2, seed=0, n_startup_trials=3)
    assert isinstance(tpe.sampler, optuna.samplers.TPESampler) and tpe.sampler._n_startup_trials == 3
    rnd = make_searcher(storage=storage, study_name="rnd", num_tasks=2, seed=0, kind="random")
    rnd.set_search_properties(None, None, {"lr": tune.loguniform(1e-3, 1e-1)})
    assert isinstance(rnd.study.sampler, optuna.samplers.RandomSampler)  # the study's own sampler
    rnd.suggest("a")
    rnd.on_trial_complete("a", {TIME_ATTR: 1, METRIC: 0.6})  # stopped early: pruned, as under TPE
    from optuna.trial import TrialState
    assert [t.state for t in open_study(storage, "rnd").trials] == [TrialState.PRUNED]
    with pytest.raises(ValueError, match="unknown searcher 'bayes'"):
        make_searcher(storage=storage, study_name="x", num_tasks=2, seed=0, kind="bayes")


def test_searcher_checkpoint_holds_no_database_password(tmp_path):
    import pickle

    from ray import tune

    searcher = make_searcher(storage=StudyStorage(journal=tmp_path / "optuna_journal.log"), study_name="exp",
                             num_tasks=3, seed=0)
    searcher.set_search_properties(None, None, {"lr": tune.loguniform(1e-3, 1e-1)})
    searcher.suggest("a")
    # as made for --optuna-storage postgresql://...: what Tune pickles (tuner.pkl, searcher-state-*.pkl)
    searcher._storage_spec = StudyStorage(url="postgresql://me:s3cret@db.invalid/studies")
    checkpoint = tmp_path / "searcher-state.pkl"
    searcher.save(str(checkpoint))
    for data in (checkpoint.read_bytes(), pickle.dumps(searcher)):
        assert b"s3cret" not in data
        assert b"postgresql://me:***@db.invalid/studies" in data


def test_each_searcher_is_the_optuna_sampler_it_names_with_its_options_spelled_out():
    import doctest

    import optuna

    from marktune.tune.strategy import samplers

    assert doctest.testmod(samplers).failed == 0
    tpe = samplers.make_sampler("tpe", seed=0, n_startup_trials=4)
    assert isinstance(tpe, optuna.samplers.TPESampler)
    assert (tpe._multivariate, tpe._group, tpe._constant_liar, tpe._n_startup_trials) == (True, False, True, 4)
    assert samplers.make_sampler("tpe", seed=0, n_startup_trials=4, constant_liar=False)._constant_liar is False
    independent = samplers.make_sampler("tpe-independent", seed=0, n_startup_trials=4)
    assert (independent._multivariate, independent._constant_liar) == (False, True)
    assert samplers.make_sampler("tpe-group", seed=0, n_startup_trials=4)._group is True
    assert isinstance(samplers.make_sampler("gp", seed=0, n_startup_trials=4), optuna.samplers.GPSampler)
    assert isinstance(samplers.make_sampler("qmc", seed=0, n_startup_trials=4), optuna.samplers.QMCSampler)
    assert isinstance(samplers.make_sampler("random", seed=0, n_startup_trials=4), optuna.samplers.RandomSampler)
    assert isinstance(samplers.make_sampler("nsga2", seed=0, n_startup_trials=4), optuna.samplers.NSGAIISampler)
    assert set(samplers.SEARCHERS) == {"tpe", "tpe-independent", "tpe-group", "gp", "qmc", "random", "nsga2"}
