"""``--resume --name X``: the settings a search started with come back from the experiment."""
from __future__ import annotations

import pytest

from marktune.cli import search
from marktune.cli.search import SearchError
from marktune.tune.folders.search_settings import save_settings


def _args(argv):
    args = search.build_parser().parse_args(argv)
    return search.apply_saved_settings(args, search.given_flags(argv))


def test_resume_takes_space_samples_and_seed_from_the_experiment(tmp_path):
    start = _args(["--space", "digits", "--samples", "3", "--seed", "7", "--set", "epochs=1",
                   "--storage", str(tmp_path), "--name", "x"])
    plan = search.plan_from_args(start)
    save_settings(plan, str(tmp_path / "x"))

    resumed = _args(["--resume", "--name", "x", "--storage", str(tmp_path)])
    assert (resumed.space, resumed.samples, resumed.seed, resumed.overrides) == ("digits", 3, 7, ["epochs=1"])
    assert search.plan_from_args(resumed).samples == 3
    # the same values given again are fine; different ones are refused, naming the flag
    assert _args(["--resume", "--name", "x", "--storage", str(tmp_path), "--samples", "3"]).samples == 3
    with pytest.raises(SearchError, match="--samples 3"):
        _args(["--resume", "--name", "x", "--storage", str(tmp_path), "--samples", "8"])
    with pytest.raises(SearchError, match="--space 'digits'"):
        _args(["--resume", "--name", "x", "--storage", str(tmp_path), "--space", "fmnist"])


def test_resume_without_saved_settings_keeps_the_flags(tmp_path):
    (tmp_path / "old").mkdir()
    args = _args(["--resume", "--name", "old", "--storage", str(tmp_path), "--samples", "5"])
    assert args.samples == 5 and args.space == "fmnist"


def test_resume_refuses_another_max_failures(tmp_path):
    start = _args(["--space", "digits", "--max-failures", "3", "--storage", str(tmp_path), "--name", "x"])
    save_settings(search.plan_from_args(start), str(tmp_path / "x"))
    assert _args(["--resume", "--name", "x", "--storage", str(tmp_path)]).max_failures == 3
    with pytest.raises(SearchError, match="--max-failures 3"):
        _args(["--resume", "--name", "x", "--storage", str(tmp_path), "--max-failures", "1"])


def test_resume_keeps_no_reuse_actors(tmp_path):
    # Tune restores its TuneConfig (reuse_actors among it) from the experiment: another value would be ignored
    start = _args(["--space", "digits", "--no-reuse-actors", "--storage", str(tmp_path), "--name", "x"])
    assert search.plan_from_args(start).reuse_actors is False
    save_settings(search.plan_from_args(start), str(tmp_path / "x"))
    resumed = _args(["--resume", "--name", "x", "--storage", str(tmp_path)])
    assert resumed.reuse_actors is False and search.plan_from_args(resumed).reuse_actors is False
    with pytest.raises(SearchError, match="started with --no-reuse-actors, not --reuse-actors"):
        _args(["--resume", "--name", "x", "--storage", str(tmp_path), "--reuse-actors"])
    assert search.plan_from_args(_args(["--space", "digits"])).reuse_actors is True  # the default


def test_resume_takes_the_optuna_storage_and_never_writes_its_password(tmp_path):
    db = f"sqlite:///{tmp_path / 'studies.db'}"
    start = _args(["--space", "digits", "--storage", str(tmp_path), "--name", "x", "--optuna-storage", db])
    save_settings(search.plan_from_args(start), str(tmp_path / "x"))
    resumed = _args(["--resume", "--name", "x", "--storage", str(tmp_path)])
    assert resumed.optuna_storage == db
    assert search.plan_from_args(resumed).study_storage.url == db
    with pytest.raises(SearchError, match="keeps its Optuna study in sqlite"):
        _args(["--resume", "--name", "x", "--storage", str(tmp_path), "--optuna-storage", "sqlite:///other.db"])

    secret = "postgresql://me:hunter2@db.example:5432/studies"
    start = _args(["--space", "digits", "--storage", str(tmp_path), "--name", "y", "--optuna-storage", secret])
    save_settings(search.plan_from_args(start), str(tmp_path / "y"))
    assert "hunter2" not in (tmp_path / "y" / "marktune_search.json").read_text()
    with pytest.raises(SearchError, match="give --optuna-storage again with the password"):
        _args(["--resume", "--name", "y", "--storage", str(tmp_path)])
    again = _args(["--resume", "--name", "y", "--storage", str(tmp_path), "--optuna-storage", secret])
    assert again.optuna_storage == secret


def test_default_study_is_a_journal_in_the_experiment(tmp_path):
    plan = search.plan_from_args(_args(["--space", "digits", "--storage", str(tmp_path), "--name", "z"]))
    assert plan.study_storage.journal == (tmp_path / "z" / "optuna_journal.log").resolve()
    assert search.resume_command(plan) == f"python -m marktune.search --resume --name z --storage {tmp_path.resolve()}"


def test_resume_keeps_the_searcher_the_scheduler_and_tpes_startup_trials(tmp_path):
    start = _args(["--space", "digits", "--searcher", "random", "--scheduler", "none", "--n-startup-trials", "3",
                   "--storage", str(tmp_path), "--name", "x"])
    save_settings(search.plan_from_args(start), str(tmp_path / "x"))
    resumed = _args(["--resume", "--name", "x", "--storage", str(tmp_path)])
    plan = search.plan_from_args(resumed)
    assert (plan.searcher, plan.scheduler, plan.n_startup_trials) == ("random", "none", 3)
    for flag, value, saved in (("--searcher", "tpe", "'random'"), ("--scheduler", "asha", "'none'"),
                               ("--n-startup-trials", "10", "3")):
        with pytest.raises(SearchError, match=f"started with {flag} {saved}, not"):
            _args(["--resume", "--name", "x", "--storage", str(tmp_path), flag, value])


def test_objectives_are_checked_before_ray_and_kept_on_resume(tmp_path):
    import json

    from marktune.tune.folders.search_settings import SETTINGS_FILE

    def plan(*argv):
        return search.plan_from_args(_args(["--space", "digits", "--storage", str(tmp_path), *argv]))

    several = plan("--name", "mo", "--objectives", "val_acc,params")
    assert [o.name for o in several.objectives] == ["val_acc", "params"] and several.confirm_top == 0
    assert "multi-objective ASHA" in several.strategy() and "Pareto set" in several.strategy()
    for bad, said in (("val_acc,size", "unknown objective 'size'"), ("val_acc,params,params", "given twice"),
                      ("params", "must include val_acc")):
        with pytest.raises(SearchError, match=said):
            plan("--name", "bad", "--objectives", bad)
    with pytest.raises(SearchError, match="--confirm-top picks one winner"):
        plan("--name", "bad", "--objectives", "val_acc,params", "--confirm-top", "3")
    # a single-objective experiment cannot be resumed as a multi-objective one (another study)
    save_settings(plan("--name", "one"), str(tmp_path / "one"))
    with pytest.raises(SearchError, match="--objectives 'val_acc'"):
        _args(["--resume", "--name", "one", "--storage", str(tmp_path), "--objectives", "val_acc,params"])
    save_settings(several, str(tmp_path / "mo"))
    assert _args(["--resume", "--name", "mo", "--storage", str(tmp_path)]).objectives == "val_acc,params"
    spaced = _args(["--resume", "--name", "mo", "--storage", str(tmp_path), "--objectives", "val_acc, params"])
    assert [o.name for o in search.plan_from_args(spaced).objectives] == ["val_acc", "params"]
    # nor one from before --objectives existed (its settings do not name them)
    old = json.loads((tmp_path / "one" / SETTINGS_FILE).read_text())
    old.pop("objectives")
    (tmp_path / "one" / SETTINGS_FILE).write_text(json.dumps(old))
    with pytest.raises(SearchError, match="--objectives 'val_acc'"):
        _args(["--resume", "--name", "one", "--storage", str(tmp_path), "--objectives", "val_acc,params"])
