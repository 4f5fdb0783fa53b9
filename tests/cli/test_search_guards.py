"""The search and evaluate commands refuse, before Ray starts, what issue 19 found: names outside
--storage, a second search of one experiment, trials no Ray can hold, seeds numpy cannot take, a
--num-cpus for someone else's cluster; they own their local Ray; a run in which every trial
errored exits non-zero. In-process, Ray never started (seconds)."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from marktune.cli import evaluate, search
from marktune.results.files import LOCK_FILE
from marktune.results.summary import TrialRow
from marktune.tune.folders.lock import ExperimentLock
from marktune.tune.plan import PlanError

T = ["--space", "digits", "--samples", "2", "--set", "epochs=1", "--set", "kb_epochs=1", "--num-cpus", "2", "-q"]


@pytest.fixture
def no_ray(monkeypatch):
    monkeypatch.setattr(search, "start_ray", lambda *a, **k: pytest.fail("Ray was started"))
    monkeypatch.setattr(evaluate, "start_ray", lambda *a, **k: pytest.fail("Ray was started"))


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/marktune-abs-name", "a/b", ".."])
def test_a_name_outside_storage_is_refused_and_nothing_is_written(tmp_path, capsys, no_ray, name):
    root = tmp_path / "root"
    storage = root / "a" / "b" / "st"
    code = search.main([*T, "--storage", str(storage), "--name", name])
    err = capsys.readouterr().err
    assert code == 2 and f"--name {name!r}: a name is one folder name" in err, err
    assert _files(tmp_path) == []
    assert not Path("/tmp/marktune-abs-name").exists()
    code = search.main(["--resume", "--storage", str(storage), "--name", name])
    assert code == 2 and "one folder name" in capsys.readouterr().err


def test_a_second_search_of_one_experiment_is_refused_with_who_holds_it(tmp_path, capsys, no_ray):
    storage = tmp_path / "st"
    with ExperimentLock(storage / "same", what="search", command="python -m marktune.search --name same"):
        before = _files(tmp_path)
        code = search.main([*T, "--storage", str(storage), "--name", "same"])
        err = capsys.readouterr().err
        assert code == 2, err
        assert f"a search (pid {os.getpid()} on host {socket.gethostname()}, started " in err
        assert "holds this experiment" in err and "`python -m marktune.search --name same`" in err
        assert _files(tmp_path) == before  # nothing written, the holder's lock kept
        code = search.main(["--resume", "--storage", str(storage), "--name", "same"])
        assert code == 2 and "holds this experiment" in capsys.readouterr().err
    assert not (storage / "same" / LOCK_FILE).exists()


def test_the_search_holds_the_lock_while_it_runs_and_releases_it(tmp_path, monkeypatch):
    storage = tmp_path / "st"
    seen = {}

    def fake_start_ray(settings):
        seen["lock"] = (storage / "x" / LOCK_FILE).read_text()
        raise PlanError("stop here")
    monkeypatch.setattr(search, "start_ray", fake_start_ray)
    assert search.main([*T, "--storage", str(storage), "--name", "x"]) == 2
    assert f'"pid": {os.getpid()}' in seen["lock"]
    assert not (storage / "x").exists()  # refused: lock released, the directory it made removed


def test_a_trial_larger_than_the_local_ray_is_refused_before_ray_starts(tmp_path, capsys, no_ray):
    code = search.main([*T, "--storage", str(tmp_path / "st"), "--cpus-per-trial", "4"])
    err = capsys.readouterr().err
    assert code == 2 and "--cpus-per-trial 4: more CPUs than this machine's Ray has (--num-cpus 2)" in err, err
    code = search.main([*T, "--storage", str(tmp_path / "st"), "--num-gpus", "1", "--gpus-per-trial", "2",
                        "--cpu-fallback"])
    err = capsys.readouterr().err
    assert code == 2 and "--gpus-per-trial 2: more GPUs than this machine's Ray has (--num-gpus 1)" in err, err
    assert not (tmp_path / "st").exists()


def test_num_cpus_with_address_is_a_clear_error(tmp_path, capsys, no_ray):
    code = search.main([*T, "--storage", str(tmp_path / "st"), "--address", "auto"])
    err = capsys.readouterr().err
    assert code == 2 and "--num-cpus size the Ray this command starts on this machine" in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("flags, said", [(["--seed", str(2**32)], "--seed 4294967296"),
                                         (["--seed", "-1"], "--seed -1"),
                                         (["--set", f"seed={2**32}"], "seed must be in"),  # the space checks'
                                         (["--set", f"data_seed={2**40}"], "data_seed must be in")])
def test_seeds_outside_numpys_range_are_refused_before_ray_starts(tmp_path, capsys, no_ray, flags, said):
    code = search.main([*T, "--storage", str(tmp_path / "st"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and said in err and "0..4294967295" in err, err


def test_run_refuses_a_seed_outside_numpys_range(capsys):
    from marktune.cli import run

    assert run.main(["--benchmark", "digits", "--seed", str(2**32)]) == 2
    assert "0..4294967295" in capsys.readouterr().err


def test_a_search_in_which_every_trial_errored_exits_non_zero_and_says_so(tmp_path, capsys, monkeypatch):
    from marktune.tune.runs.search_run import SearchRun

    monkeypatch.setattr(search, "start_ray", lambda *a, **k: None)
    monkeypatch.setattr(search, "check_cluster_resources", lambda **k: None)
    monkeypatch.setattr(search, "run_search", lambda plan: SearchRun(results=None, experiment=plan.experiment,
                                                                      study=None, states={}))
    monkeypatch.setattr(search, "prune_checkpoints", lambda experiment: 0)
    rows = [TrialRow(trial_id=f"t{i}", status="ERROR", tasks_done=0, val_acc=float("nan"), test_acc=float("nan"),
                     bwt=float("nan"), params={}, config={}, error="ConfigError: x") for i in range(2)]
    monkeypatch.setattr(search, "search_rows", lambda run, plan: rows)
    monkeypatch.setattr(search, "summarize", lambda run, plan, top, rows, confirmed: rows)
    monkeypatch.setattr(search, "confirm", lambda plan, rows: None)
    storage = tmp_path / "st"
    assert search.main([*T, "--storage", str(storage), "--name", "e"]) == 1
    assert "every trial (2 of 2) errored" in capsys.readouterr().err
    assert not (storage / "e" / LOCK_FILE).exists()
    rows[0] = TrialRow(trial_id="t0", status="COMPLETE", tasks_done=5, val_acc=0.5, test_acc=0.5, bwt=0.0,
                       params={}, config={})
    assert search.main([*T, "--storage", str(storage), "--name", "f"]) == 0


# ---------------------------------------------------------------- evaluate
def _complete_experiment(tmp_path: Path) -> Path:
    from test_evaluate_report import _digits_base, _fake_experiment

    searched = {"lr_meta": [0.01, 0.02]}
    return _fake_experiment(tmp_path / "digits-x", {"aaaa0001": ("TERMINATED", 5, 0.9),
                                                    "aaaa0002": ("TERMINATED", 5, 0.8)},
                            base=_digits_base(), searched=searched)


def test_evaluate_refuses_a_bad_name_and_an_experiment_a_search_holds(tmp_path, capsys, no_ray):
    exp = _complete_experiment(tmp_path)
    code = evaluate.main([str(exp), "--name", "../../x", "--num-cpus", "2"])
    assert code == 2 and "--name '../../x': a name is one folder name" in capsys.readouterr().err
    with ExperimentLock(exp, what="search"):
        code = evaluate.main([str(exp), "--num-cpus", "2", "--seeds", "1", "--ablations", ""])
        err = capsys.readouterr().err
        assert code == 2 and f"a search (pid {os.getpid()}" in err and "holds this experiment" in err, err
    code = evaluate.main([str(exp), "--num-cpus", "2", "--cpus-per-trial", "3"])
    assert code == 2 and "--cpus-per-trial 3: more CPUs" in capsys.readouterr().err
    assert not (exp / LOCK_FILE).exists()


def test_an_evaluation_in_which_every_run_errored_exits_non_zero(tmp_path, capsys, monkeypatch):
    exp = _complete_experiment(tmp_path)
    monkeypatch.setattr(evaluate, "start_ray", lambda *a, **k: None)
    monkeypatch.setattr(evaluate, "check_cluster_resources", lambda **k: None)
    monkeypatch.setattr(evaluate, "run_evaluation", lambda plan: [])

    def all_errored(results, plan):
        assert (exp / LOCK_FILE).exists()  # held while the runs run
        return [{**dict.fromkeys(("configuration", "kind", "source_trial", "benchmark", "settings", "device",
                                  "test_matrix"), ""), "configuration": c.label, "kind": c.kind,
                 "data_seed": plan.data_seeds[0], "seed": s, "status": "ERROR", "tasks_done": 0,
                 "tasks_total": 5, "error": "ConfigError: x", **dict.fromkeys(
                     ("heldout_test_acc", "heldout_bwt", "test_acc", "bwt", "val_acc", "wall_seconds"), float("nan")),
                 "kb_params": 0, "task_params": 0, "test_matrix": "[]", "settings": "{}"}
                for c in plan.configs for s in plan.seeds]
    monkeypatch.setattr(evaluate, "run_records", all_errored)
    code = evaluate.main([str(exp), "--num-cpus", "2", "--seeds", "1", "--ablations", ""])
    assert code == 1, capsys.readouterr()
    assert "every run (3 of 3) errored" in capsys.readouterr().err
    assert not (exp / LOCK_FILE).exists()


def test_ctrl_c_before_the_run_leaves_no_lock_behind(tmp_path, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(search, "start_ray", interrupted)
    with pytest.raises(KeyboardInterrupt):
        search.main([*T, "--storage", str(tmp_path / "st"), "--name", "x"])
    assert not (tmp_path / "st" / "x" / LOCK_FILE).exists()


@pytest.mark.parametrize("key, value, allowed", [("searcher", "bayes", "tpe, tpe-independent, tpe-group, gp, qmc, random, nsga2"),
                                                 ("scheduler", "bohb", "asha, hyperband, none")])
def test_a_bad_searcher_or_scheduler_in_a_space_file_is_refused_before_ray_starts(tmp_path, capsys, no_ray,
                                                                                  key, value, allowed):
    import yaml

    from marktune.tune.spaces import SPACES_DIR

    space = yaml.safe_load((SPACES_DIR / "digits.yaml").read_text())
    space["defaults"][key] = value
    path = tmp_path / "my_space.yaml"
    path.write_text(yaml.safe_dump(space))
    code = search.main([*T, "--space", str(path), "--storage", str(tmp_path / "st")])
    err = capsys.readouterr().err
    assert code == 2 and f"{path}: defaults.{key} must be one of {allowed} (got {value!r})" in err, err
    assert not (tmp_path / "st").exists()


def test_a_constant_liar_that_is_not_true_or_false_is_refused_before_ray_starts(tmp_path, capsys, no_ray):
    import yaml

    from marktune.tune.spaces import SPACES_DIR

    space = yaml.safe_load((SPACES_DIR / "digits.yaml").read_text())
    space["defaults"]["constant_liar"] = "sometimes"
    path = tmp_path / "my_space.yaml"
    path.write_text(yaml.safe_dump(space))
    assert search.main([*T, "--space", str(path), "--storage", str(tmp_path / "st")]) == 2
    assert "defaults.constant_liar must be true or false (got 'sometimes')" in capsys.readouterr().err
    assert not (tmp_path / "st").exists()


def test_a_bad_searcher_or_scheduler_flag_is_refused_by_argparse(capsys):
    for flag, value in (("--searcher", "bayes"), ("--scheduler", "bohb")):
        with pytest.raises(SystemExit) as stop:
            search.build_parser().parse_args(["--space", "digits", flag, value])
        assert stop.value.code == 2 and f"argument {flag}: invalid choice: '{value}'" in capsys.readouterr().err


def test_searcher_scheduler_and_startup_trials_come_from_the_space_unless_given(tmp_path):
    import yaml

    from marktune.tune.spaces import SPACES_DIR

    base = ["--storage", str(tmp_path), "--name", "x"]
    space = yaml.safe_load((SPACES_DIR / "digits.yaml").read_text())
    for key in ("searcher", "scheduler", "n_startup_trials", "confirm_top", "confirm_seeds", "why"):  # a space
        space["defaults"].pop(key, None)  # that does not say
    unsaid = tmp_path / "unsaid.yaml"
    unsaid.write_text(yaml.safe_dump(space))
    plan = search.plan_from_args(search.build_parser().parse_args(["--space", str(unsaid), *base]))
    assert (plan.searcher, plan.scheduler, plan.n_startup_trials) == ("tpe", "asha", 10)  # Optuna's default
    assert "TPE (its first 10 trials random)" in plan.strategy()
    assert plan.why() == "the space's defaults (it gives no reason)"
    assert plan.confirm_top == 0 and "no confirmation stage" in plan.strategy()  # off unless a space says
    space["defaults"].update(searcher="random", scheduler="none", n_startup_trials=4)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(space))
    plan = search.plan_from_args(search.build_parser().parse_args(["--space", str(path), *base]))
    assert (plan.searcher, plan.scheduler, plan.n_startup_trials) == ("random", "none", 4)
    assert "TPE" not in plan.strategy() and "ASHA" not in plan.strategy()
    plan = search.plan_from_args(search.build_parser().parse_args(
        ["--space", str(path), *base, "--searcher", "tpe", "--scheduler", "asha", "--n-startup-trials", "2"]))
    assert (plan.searcher, plan.scheduler, plan.n_startup_trials) == ("tpe", "asha", 2)
    with pytest.raises(PlanError, match="--n-startup-trials must be >= 0"):
        search.plan_from_args(search.build_parser().parse_args(["--space", "digits", *base, "--n-startup-trials", "-1"]))


def test_a_storage_url_out_of_reach_is_refused_before_ray_starts(capsys, no_ray):
    # an S3 endpoint where nothing listens: refused at once, as a dead network is within the timeout
    url = "s3://bucket/marktune?endpoint_override=127.0.0.1:9&scheme=http"
    assert search.main([*T, "--storage", url]) == 2
    err = capsys.readouterr().err
    assert f"--storage {url}: cannot write there" in err and "Could not connect" in err
    assert "Traceback" not in err and "--storage ./results" in err


def test_a_writable_storage_url_passes_and_keeps_nothing_of_the_probe(tmp_path):
    from marktune.tune.runs.preflight import PlanError, check_remote_storage

    check_remote_storage(f"file://{tmp_path}")
    assert list(tmp_path.iterdir()) == []  # the probe was written and deleted
    with pytest.raises(PlanError, match="no answer from this storage within 0.001 s"):
        check_remote_storage(f"file://{tmp_path}", timeout=0.001)  # no interpreter starts that fast


def test_an_evaluation_never_writes_into_another_evaluation_s_folder(tmp_path, capsys, monkeypatch):
    exp = _complete_experiment(tmp_path)
    taken = exp.parent / "mine"
    taken.mkdir()
    (taken / "run_a").mkdir()  # another evaluation's runs
    (taken / "run_a" / "result.json").write_text("{}")
    monkeypatch.setattr(evaluate, "start_ray", lambda *a, **k: pytest.fail("Ray was started"))
    code = evaluate.main([str(exp), "--num-cpus", "2", "--seeds", "1", "--ablations", "", "--name", "mine"])
    err = capsys.readouterr().err
    assert code == 2 and f"--name mine: {taken} holds another evaluation's runs" in err and "--overwrite" in err
    assert sorted(p.name for p in taken.iterdir()) == ["run_a"]  # untouched, no lock left behind

    # --overwrite: moved aside whole; while the runs run, the evaluation holds its own folder's lock
    seen = []
    monkeypatch.setattr(evaluate, "start_ray", lambda *a, **k: None)
    monkeypatch.setattr(evaluate, "check_cluster_resources", lambda **k: None)

    def run(plan):
        seen.append((Path(plan.tune_experiment) / LOCK_FILE).exists())
        raise KeyboardInterrupt  # stop here: what follows is the runs'
    monkeypatch.setattr(evaluate, "run_evaluation", run)
    with pytest.raises(KeyboardInterrupt):
        evaluate.main([str(exp), "--num-cpus", "2", "--seeds", "1", "--ablations", "", "--name", "mine", "--overwrite"])
    moved = [p for p in exp.parent.iterdir() if p.name.startswith("mine.replaced-")]
    assert len(moved) == 1 and (moved[0] / "run_a" / "result.json").exists() and seen == [True]
    assert not (taken / LOCK_FILE).exists()  # released on the way out
