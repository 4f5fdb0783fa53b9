"""End-to-end searches on real data and on Ray with fake GPUs (slow: about a minute each)."""
import csv
from pathlib import Path

import pytest
import torch
import yaml

from marktune import run, search

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def digits_search(tmp_path_factory):
    """One real search on scikit-learn's digits: 6 trials, tiny epochs, 2 CPUs."""
    storage = tmp_path_factory.mktemp("storage")
    argv = ["--space", "digits", "--samples", "6", "--storage", str(storage), "--name", "digits",
            "--num-cpus", "2", "--cpus-per-trial", "1", "--seed", "0", "-q"]
    results, rows, experiment, searcher, plan = _search(argv)
    return {"rows": rows, "experiment": Path(experiment), "study": searcher.study, "plan": plan}


def test_asha_stopped_trials_reach_optuna_as_pruned(digits_search):
    from optuna.trial import TrialState

    rows, study = digits_search["rows"], digits_search["study"]
    num_tasks = digits_search["plan"].num_tasks
    assert len(rows) == 6
    stopped = [r for r in rows if r.status == "PRUNED"]
    complete = [r for r in rows if r.status == "COMPLETE"]
    assert stopped, "ASHA stopped no trial"
    assert complete, "no trial ran every task"
    assert all(r.tasks_done < num_tasks for r in stopped)
    states = [t.state for t in study.trials]
    assert states.count(TrialState.PRUNED) == len(stopped)
    assert states.count(TrialState.COMPLETE) == len(complete)
    for t in study.trials:
        # intermediate values at step = tasks done, for every task a trial ran
        assert sorted(t.intermediate_values) == list(range(1, len(t.intermediate_values) + 1))
        if t.state == TrialState.COMPLETE:
            assert len(t.intermediate_values) == num_tasks
            assert t.value == pytest.approx(t.intermediate_values[num_tasks])
        else:
            assert len(t.intermediate_values) < num_tasks


def test_outputs_best_config_and_trials_csv(digits_search, tmp_path):
    experiment, rows = digits_search["experiment"], digits_search["rows"]
    with open(experiment / "trials.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 6 and {r["status"] for r in table} <= {"COMPLETE", "PRUNED"}
    best = yaml.safe_load((experiment / "best_config.yaml").read_text())
    best_row = max((r for r in rows if r.status == "COMPLETE"), key=lambda r: r.val_acc)
    assert best["trial_id"] == best_row.trial_id  # selected on validation, not test
    # best_config.yaml runs as it is with marktune.run (two tasks to keep it short)
    code = run.main(["--config", str(experiment / "best_config.yaml"), "--set", "num_tasks=2",
                     "--out", str(tmp_path / "rerun"), "-q", "--device", "cpu"])
    assert code == 0
    assert (tmp_path / "rerun" / "results.json").is_file()


def test_tensorboard_has_per_task_scalars_and_hparams(digits_search):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    experiment, rows = digits_search["experiment"], digits_search["rows"]
    searched = set(digits_search["plan"].space.params)
    for row in rows:
        trial_dir = experiment / f"trial_{row.trial_id}"
        acc = EventAccumulator(str(trial_dir), size_guidance={"tensors": 0, "scalars": 0})
        acc.Reload()
        steps = [e.step for e in acc.Scalars("sequence/mean_val_acc")]
        assert steps == list(range(1, row.tasks_done + 1))
        assert [e.step for e in acc.Scalars("per_task/val_acc_task_0")] == steps
        assert "accuracy_matrix/validation" in acc.Tags()["images"]
        plugin = acc.PluginTagToContent("hparams")
        from tensorboard.plugins.hparams import plugin_data_pb2
        infos = [plugin_data_pb2.HParamsPluginData.FromString(v) for v in plugin.values()]
        session = [i.session_start_info for i in infos if i.HasField("session_start_info")]
        assert session and searched <= set(session[0].hparams)
        assert session[0].hparams["status"].string_value == row.status


def _space_file(tmp_path, *, fixed, search_params, samples):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({
        "benchmark": "synthetic",
        "fixed": {"num_tasks": 2, "epochs": 2, "meta_epochs": 1, "mini_tasks": 2, "inner_steps": 2,
                  "kb_width": 8, "latent_dim": 16, "fe_channels": 8, "batch_size": 32,
                  "synthetic_images_per_class": 60, **fixed},
        "search": search_params,
        "defaults": {"samples": samples, "grace_period": 2, "reduction_factor": 2},
    }))
    return path


def _search(argv):
    """Plan, start a local Ray, search, summarize; Ray is shut down whatever happens."""
    import ray

    args = search.build_parser().parse_args(argv)
    plan = search.plan_from_args(args)
    search.start_ray(args)
    try:
        results, experiment, searcher = search.run_search(plan, args)
        rows = search.summarize(results, plan, experiment, top=10)
    finally:
        ray.shutdown()
    return results, rows, experiment, searcher, plan


def _run(argv):
    results, rows, *_ = _search(argv)
    return results, rows


def test_fractional_fake_gpus_pack_four_trials_on_the_device_the_runner_picks(tmp_path):
    # long enough trials (about 10 s each) that the start-up stagger of actors cannot hide overlap
    space = _space_file(tmp_path, fixed={"synthetic_images_per_class": 300, "num_tasks": 3, "epochs": 3},
                        search_params={"lr_meta": {"type": "loguniform", "low": 0.001, "high": 0.1}}, samples=4)
    results, rows = _run(["--space", str(space), "--storage", str(tmp_path / "s"), "--name", "gpu",
                          "--num-cpus", "4", "--num-gpus", "1", "--gpus-per-trial", "0.25",
                          "--cpus-per-trial", "1", "--cpu-fallback", "-q"])
    assert len(rows) == 4 and all(r.status == "COMPLETE" for r in rows)
    spans = []
    for result in results:
        history = result.metrics_dataframe
        # a fake GPU id: the CPU where torch sees no CUDA, the real GPU 0 on a CUDA host
        assert set(history["device"]) == {"cuda:0" if torch.cuda.is_available() else "cpu"}
        spans.append((history["task_started_at"].min(), history["task_finished_at"].max()))
    # all four trials were running at one moment: the latest start precedes the earliest end
    assert max(s for s, _ in spans) < min(e for _, e in spans), spans


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA host the GPU trial can use CUDA: nothing fails")
def test_a_gpu_trial_that_cannot_use_cuda_errors_at_once_with_the_reason(tmp_path):
    space = _space_file(tmp_path, fixed={"num_tasks": 2},
                        search_params={"lr_meta": {"type": "loguniform", "low": 0.001, "high": 0.1}}, samples=1)
    results, rows = _run(["--space", str(space), "--storage", str(tmp_path / "s"), "--name", "nocuda",
                          "--num-cpus", "2", "--num-gpus", "1", "--gpus-per-trial", "0.5", "--max-failures", "0",
                          "-q"])  # a declared (fake) GPU and no --cpu-fallback
    assert [r.status for r in rows] == ["ERROR"]
    assert "GpuUnusableError" in rows[0].error or "cannot use CUDA" in rows[0].error, rows[0].error
    assert rows[0].tasks_done == 0  # it failed before training anything


def test_nan_trial_errors_with_a_reason_and_the_search_goes_on(tmp_path, capsys):
    space = _space_file(tmp_path, fixed={"grad_clip": 1.0e30},
                        search_params={"lr_task": {"type": "choice", "values": [0.05, 1.0e30]}}, samples=4)
    results, rows = _run(["--space", str(space), "--storage", str(tmp_path / "s"), "--name", "nan",
                          "--num-cpus", "2", "--max-failures", "0", "--seed", "2", "-q"])  # TPE seed 2 draws both values
    errored = [r for r in rows if r.status == "ERROR"]
    fine = [r for r in rows if r.status == "COMPLETE"]
    assert errored and fine, [(r.status, r.params) for r in rows]
    assert all(r.params["lr_task"] == 1.0e30 for r in errored)
    assert all("NonFiniteLossError" in r.error or "loss became" in r.error for r in errored)
    assert "loss became" in capsys.readouterr().out
