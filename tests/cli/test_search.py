"""End-to-end searches on real data and on Ray with fake GPUs (slow: about a minute each)."""
import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import search_in_process
from marktune.cli import run; from marktune.cli import search
from marktune.results.summary import TrialRow

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def digits_search(tmp_path_factory):
    """One real search on scikit-learn's digits (6 trials, 2 CPUs), run as a user runs it: the
    command in its own process, with the default output (no -q, no --verbose)."""
    storage = tmp_path_factory.mktemp("storage")
    # the space's confirmation stage, cut to 2 runs (its default is 6): what it does is the same
    argv = ["--space", "digits", "--samples", "6", "--storage", str(storage), "--name", "digits",
            "--num-cpus", "2", "--cpus-per-trial", "1", "--seed", "0", "--confirm-top", "2", "--confirm-seeds", "1"]
    proc = subprocess.run([sys.executable, "-m", "marktune.search", *argv], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    experiment = storage / "digits"
    args = search.build_parser().parse_args(argv)
    plan = search.plan_from_args(args)
    with open(experiment / "trials.csv") as f:
        table = list(csv.DictReader(f))
    rows = [TrialRow(trial_id=r["trial_id"], status=r["status"], tasks_done=int(r["tasks_done"]),
                     val_acc=float(r["val_acc"]), test_acc=float(r["test_acc"]), bwt=float(r["bwt"]),
                     params={k: r[k] for k in plan.space.params}, config={}) for r in table]
    return {"rows": rows, "experiment": experiment, "plan": plan, "stdout": proc.stdout, "stderr": proc.stderr}


def _journal_study(experiment: Path, name: str):
    """The study as a fresh process sees it: from the journal file, with nothing else."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(experiment / "optuna_journal.log")))
    return optuna.load_study(study_name=name, storage=storage)


def test_asha_stopped_trials_reach_optuna_as_pruned(digits_search):
    from optuna.trial import TrialState

    rows = digits_search["rows"]
    study = _journal_study(digits_search["experiment"], "digits")  # named after the experiment
    assert not (digits_search["experiment"] / "optuna_study.pkl").exists()  # no end-of-run pickle
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
    # each trial's values are the ones its row reports (same trial, same numbers)
    finals = sorted(round(t.intermediate_values[max(t.intermediate_values)], 4) for t in study.trials)
    assert finals == sorted(round(r.val_acc, 4) for r in rows)


STATUS = re.compile(r"^\[marktune\] (\d+) complete, (\d+) pruned, (\d+) errored, (\d+) running, (\d+) pending "
                    r"of (\d+) trials; (\d+)/(\d+) tasks; elapsed \S+; ETA .+$")


def test_progress_prints_status_lines_and_no_ray_tables(digits_search):
    out, rows = digits_search["stdout"], digits_search["rows"]
    num_tasks = digits_search["plan"].num_tasks
    lines = out.splitlines()
    status = [STATUS.match(ln) for ln in lines if STATUS.match(ln)]
    assert len(status) >= len(rows), out[-3000:]  # one at each trial's end, at least
    last = [int(g) for g in status[-1].groups()]
    complete = sum(r.status == "COMPLETE" for r in rows)
    pruned = sum(r.status == "PRUNED" for r in rows)
    tasks = sum(r.tasks_done for r in rows)
    assert last == [complete, pruned, 0, 0, 0, 6, tasks, tasks]
    # counts only grow, and trials never outnumber the total
    finished = [int(m.group(1)) + int(m.group(2)) for m in status]
    assert finished == sorted(finished) and finished[-1] == 6
    # one line per finished task of every trial
    task_lines = [ln for ln in lines if re.match(r"^\[marktune\] \w+ task \d+/%d: " % num_tasks, ln)]
    assert len(task_lines) == tasks
    # Ray's trial tables (boxes drawn with these characters) only with --verbose
    assert not any(ch in out for ch in "╭╰│"), out[:3000]
    assert "Trial status:" not in out
    assert "optuna-dashboard " in out


def test_outputs_best_config_and_trials_csv(digits_search, tmp_path):
    experiment, rows = digits_search["experiment"], digits_search["rows"]
    with open(experiment / "trials.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 6 and {r["status"] for r in table} <= {"COMPLETE", "PRUNED"}
    best = yaml.safe_load((experiment / "best_config.yaml").read_text())
    winner = [r["trial_id"] for r in table if r["confirmed"] == "winner"]
    assert best["trial_id"] == winner[0]  # the confirmation's winner (test_the_confirmation_stage_...)
    # best_config.yaml runs as it is with marktune.run (two tasks to keep it short)
    code = run.main(["--config", str(experiment / "best_config.yaml"), "--set", "num_tasks=2",
                     "--out", str(tmp_path / "rerun"), "-q", "--device", "cpu"])
    assert code == 0
    assert (tmp_path / "rerun" / "results.json").is_file()


def test_curves_csv_holds_every_finished_task_of_every_trial_as_its_result_json(digits_search):
    from marktune.results.curves import read_curves
    from marktune.results.files import task_results

    experiment, rows, plan = digits_search["experiment"], digits_search["rows"], digits_search["plan"]
    assert f"curves.csv (every trial's values after every task): {experiment / 'curves.csv'}" in digits_search["stdout"]
    table = read_curves(experiment / "curves.csv")
    assert table.searched == list(plan.space.params)
    expected = []
    for row in sorted(rows, key=lambda r: r.trial_id):
        reported = task_results(experiment / f"trial_{row.trial_id}")
        assert [int(r["tasks_done"]) for r in reported] == list(range(1, row.tasks_done + 1))
        assert {r["precision"] for r in reported} == {"fp32"}  # the precision each task ran in, recorded
        expected += [(row.trial_id, row.status, int(r["tasks_done"]), r["mean_val_acc"], r["mean_test_acc"],
                      r["task_seconds"]) for r in reported]
    seen = [(r.trial_id, r.status, r.task, r.val_acc, r.test_acc, r.seconds) for r in table.rows]
    assert sorted(seen) == sorted(expected) and len(seen) == sum(r.tasks_done for r in rows)
    # the settings are each trial's (trials.csv has them too)
    with open(experiment / "trials.csv") as f:
        settings = {r["trial_id"]: r for r in csv.DictReader(f)}
    for r in table.rows:
        assert {k: str(v) for k, v in r.params.items()} == {k: settings[r.trial_id][k] for k in r.params}


def test_the_confirmation_stage_reruns_the_top_trials_at_more_seeds_and_names_the_best_mean(digits_search):
    """The confirmation stage (here the top 2 at 1 more seed): Ray runs of the finalists'
    configurations at seed 1; the winner is the best mean val ACC over the 2 seeds, and every
    output (confirmation.json, trials.csv, the summary, best_config.yaml) says so."""
    import json

    experiment, plan, out = digits_search["experiment"], digits_search["plan"], digits_search["stdout"]
    assert (plan.confirm_top, plan.confirm_seeds) == (2, 1)
    with open(experiment / "trials.csv") as f:
        table = {r["trial_id"]: r for r in csv.DictReader(f)}
    complete = sorted((r for r in table.values() if r["status"] == "COMPLETE"), key=lambda r: -float(r["val_acc"]))
    finalists = [r["trial_id"] for r in complete[:2]]
    record = json.loads((experiment / "confirmation.json").read_text())
    assert [f["trial_id"] for f in record["finalists"]] == finalists and record["seeds"] == [1]
    # each run: the finalist's own settings at the new seed, run to the last task
    runs = {}
    for params in (experiment / "confirmation").glob("confirm_*/params.json"):
        config = json.loads(params.read_text())
        trial = json.loads((experiment / f"trial_{config['confirm_of']}" / "params.json").read_text())
        assert {k: v for k, v in config.items() if k in trial and k != "seed"} == \
            {k: v for k, v in trial.items() if k != "seed"}
        results = [json.loads(line) for line in (params.parent / "result.json").read_text().splitlines()]
        assert results[-1]["tasks_done"] == plan.num_tasks
        runs[(config["confirm_of"], config["seed"])] = results[-1]["mean_val_acc"]
    assert sorted(runs) == sorted((t, 1) for t in finalists)
    seen = {r["trial_id"]: r["vals"] for r in record["results"]}  # exact (trials.csv rounds to 4 places)
    assert all(abs(seen[t][0] - float(table[t]["val_acc"])) < 1e-4 and seen[t][1] == runs[(t, 1)] for t in finalists)
    means = {t: sum(seen[t]) / 2 for t in finalists}
    winner = max(finalists, key=lambda t: (means[t], -finalists.index(t)))  # a tie: the better one-seed value
    assert record["winner"] == winner
    assert table[winner]["confirmed"] == "winner" and int(table[winner]["confirm_seeds"]) == 2
    assert abs(float(table[winner]["confirm_val_mean"]) - means[winner]) < 1e-4  # written to 4 places
    assert {table[t]["confirmed"] for t in finalists} == {"winner", "finalist"}
    assert all(r["confirmed"] == "" for t, r in table.items() if t not in finalists)
    assert f"the winner is {winner}, mean val ACC {means[winner]:.4f}" in out
    assert ("[marktune] why: your flags (--samples 6, --confirm-top 2, --confirm-seeds 1; the space's default is "
            "32, 3, 2)") in out  # not the space's reason
    assert yaml.safe_load((experiment / "best_config.yaml").read_text())["trial_id"] == winner


def test_trials_reuse_the_ray_actors_of_finished_ones_by_default(digits_search):
    """6 trials, 2 at a time: a trial starts in the process of one that ended (Tune's reuse_actors),
    so the search runs in fewer processes than trials; each trial keeps its process throughout."""
    from marktune.results.files import task_results

    experiment, rows = digits_search["experiment"], digits_search["rows"]
    pids = {}
    for row in rows:
        reported = {r["pid"] for r in task_results(experiment / f"trial_{row.trial_id}")}
        assert len(reported) == 1, (row.trial_id, reported)
        pids[row.trial_id] = reported.pop()
    assert len(set(pids.values())) < len(rows), pids


@pytest.mark.mostly_waiting
def test_without_asha_every_trial_runs_to_the_end_and_random_search_uses_optunas_random_sampler(tmp_path, capsys):
    """Sequential trials (the same on every machine), grace period 1; Optuna's RandomSampler at
    seed 6 draws lr_task 0.05, 0.05, then 1e-7 (which learns nothing): ASHA stops the third trial
    after its second task (it does when --scheduler none is ignored). With --scheduler none
    every trial runs its 3 tasks and its whole curve is in curves.csv. With --no-reuse-actors
    each trial has a process of its own."""
    import json

    from optuna.trial import TrialState

    from marktune.results.curves import read_curves
    from marktune.results.files import task_results

    space = _space_file(tmp_path, fixed={"num_tasks": 3, "synthetic_images_per_class": 100},
                        search_params={"lr_task": {"type": "choice", "values": [0.05, 1.0e-7]}},
                        samples=3, grace_period=1)
    argv = ["--space", str(space), "--storage", str(tmp_path / "s"), "--name", "full", "--num-cpus", "2",
            "--max-concurrent", "1", "--seed", "6", "-q", "--searcher", "random", "--scheduler", "none",
            "--no-reuse-actors"]
    _, rows, experiment, study, plan = _search(argv)
    out = capsys.readouterr().out
    assert sorted(r.params["lr_task"] for r in rows) == [1.0e-7, 0.05, 0.05]  # the draws ASHA would prune
    assert [r.status for r in rows] == ["COMPLETE"] * 3 and all(r.tasks_done == 3 for r in rows)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert "strategy: Optuna's random sampler; no early stopping (every trial runs its 3 tasks)" in out
    assert "3 complete, 0 stopped early, 0 errored" in out and "TPE" not in out and "ASHA" not in out
    settings = json.loads((Path(experiment) / "marktune_search.json").read_text())
    assert (settings["searcher"], settings["scheduler"]) == ("random", "none")
    # the searcher Tune checkpointed holds Optuna's RandomSampler, not TPE
    pickles = b"".join(p.read_bytes() for p in Path(experiment).glob("searcher-state-*.pkl"))
    assert b"RandomSampler" in pickles and b"TPESampler" not in pickles
    curves = read_curves(Path(experiment) / "curves.csv")
    # in the order the trials were made (the sampler's draws), each trial's tasks in order
    assert [(r.params["lr_task"], r.task) for r in curves.rows] == [(lr, t) for lr in (0.05, 0.05, 1.0e-7)
                                                                    for t in (1, 2, 3)]
    assert sorted({r.trial_id for r in curves.rows}) == sorted(r.trial_id for r in rows)
    pids = [{r["pid"] for r in task_results(Path(experiment) / f"trial_{row.trial_id}")} for row in rows]
    assert len(set().union(*pids)) == 3 and all(len(p) == 1 for p in pids), pids  # one process per trial


def test_hyperband_runs_live_under_the_name_the_replay_uses(tmp_path, capsys):
    """``--scheduler hyperband`` (one file and one registry entry, marktune.tune.strategy.strategies) runs a
    real search through Ray: the plan names it, the settings record it, the summary counts what it
    stopped. Which bracket a trial joins is Ray's random draw, so which trials stop is not asserted."""
    import json

    space = _space_file(tmp_path, fixed={"num_tasks": 3}, samples=3, grace_period=1,
                        search_params={"lr_task": {"type": "choice", "values": [0.05, 1.0e-7]}})
    argv = ["--space", str(space), "--storage", str(tmp_path / "s"), "--name", "hb", "--num-cpus", "2",
            "--max-concurrent", "1", "--seed", "6", "-q", "--searcher", "random", "--scheduler", "hyperband"]
    _, rows, experiment, study, plan = _search(argv)
    out = capsys.readouterr().out
    assert "asynchronous Hyperband stops weak trials (grace period 1 tasks, reduction factor 2, 3 brackets)" in out
    assert len(rows) == 3 and {r.status for r in rows} <= {"COMPLETE", "PRUNED"}
    assert "stopped by Hyperband" in out
    settings = json.loads((Path(experiment) / "marktune_search.json").read_text())
    assert settings["scheduler"] == "hyperband"


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


def _space_file(tmp_path, *, fixed, search_params, samples, grace_period=2):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({
        "benchmark": "synthetic",
        "fixed": {"num_tasks": 2, "epochs": 2, "meta_epochs": 1, "mini_tasks": 2, "inner_steps": 2,
                  "kb_width": 8, "latent_dim": 16, "fe_channels": 8, "batch_size": 32,
                  "synthetic_images_per_class": 60, **fixed},
        "search": search_params,
        "defaults": {"samples": samples, "grace_period": grace_period, "reduction_factor": 2},
    }))
    return path


def _search(argv):
    outcome, rows, plan = search_in_process(argv)
    return outcome.results, rows, outcome.experiment, outcome.study, plan


def _run(argv):
    results, rows, *_ = _search(argv)
    return results, rows


def test_fractional_fake_gpus_pack_four_trials_on_the_device_the_runner_picks(tmp_path):
    # long enough trials (about 10 s each) that the start-up stagger of actors cannot hide overlap
    # grace period = every task: ASHA stops none, so all four run to the end (this is about packing)
    space = _space_file(tmp_path, fixed={"synthetic_images_per_class": 300, "num_tasks": 3, "epochs": 3},
                        search_params={"lr_meta": {"type": "loguniform", "low": 0.001, "high": 0.1}}, samples=4,
                        grace_period=3)
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
def test_fake_gpus_without_cpu_fallback_are_refused_before_ray(tmp_path, capsys, monkeypatch):
    """Declared (fake) GPUs and no --cpu-fallback on a host without CUDA: every trial would fail on
    its first tensor after Ray started (six tracebacks, issue 48); refused before Ray instead. A
    trial's own refusal of an unusable GPU (on a cluster) is tests/mark/test_devices.py's."""
    from marktune.cli import search as search_cli

    monkeypatch.setattr(search_cli, "start_ray", lambda *a, **k: pytest.fail("Ray was started"))
    space = _space_file(tmp_path, fixed={"num_tasks": 2},
                        search_params={"lr_meta": {"type": "loguniform", "low": 0.001, "high": 0.1}}, samples=1)
    code = search_cli.main(["--space", str(space), "--storage", str(tmp_path / "s"), "--name", "nocuda",
                            "--num-cpus", "2", "--num-gpus", "1", "--gpus-per-trial", "0.5", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "--num-gpus 1 declares GPUs this machine does not have" in err and "Traceback" not in err
    assert not (tmp_path / "s").exists()


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


def _synthetic_space(tmp_path, *, num_tasks, samples):
    """Tasks of about a second (as in the cluster tests); ASHA never stops a trial (grace period
    = every task), so any PRUNED below would be a lie."""
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({
        "benchmark": "synthetic",
        "fixed": {"num_tasks": num_tasks, "epochs": 1, "meta_epochs": 40, "meta_step": 0.003, "mini_tasks": 2,
                  "inner_steps": 10, "kb_width": 8, "latent_dim": 16, "fe_channels": 8, "batch_size": 32,
                  "synthetic_classes_per_task": 4, "synthetic_images_per_class": 100, "synthetic_image_size": 16},
        "search": {"lr_meta": {"type": "loguniform", "low": 0.001, "high": 0.1}},
        "defaults": {"samples": samples, "grace_period": num_tasks, "reduction_factor": 2, "cpus_per_trial": 1},
    }))
    return path


def _tasks_reported(trial_dir: Path) -> int:
    import json

    done = 0
    path = trial_dir / "result.json"
    for line in (path.read_text().splitlines() if path.is_file() else []):
        try:
            done = max(done, int(json.loads(line).get("tasks_done", 0)))
        except ValueError:  # the line being written now
            break
    return done


def _search_interrupted_when(ready, argv: list[str], *, log: Path, sig: int | None = None) -> tuple[int, str]:
    """``python -m marktune.search ARGV`` in its own process, ``sig`` (default SIGINT, what Ctrl-C
    sends the driver) once ``ready()``; its exit status and output. It must still run then."""
    import signal
    import time

    with open(log, "w") as out:
        search = subprocess.Popen([sys.executable, "-m", "marktune.search", *argv], cwd=ROOT,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        try:
            deadline = time.time() + 600
            while time.time() < deadline and search.poll() is None and not ready():
                time.sleep(0.2)
            assert search.poll() is None, "the search ended before it could be interrupted"
            os.kill(search.pid, signal.SIGINT if sig is None else sig)
            code = search.wait(timeout=300)
        finally:
            if search.poll() is None:
                os.killpg(search.pid, signal.SIGKILL)
                search.wait(timeout=60)
    return code, log.read_text()


def _hashes(root: Path) -> dict[str, str]:
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_interrupted_search_says_so_and_resume_of_a_copy_finishes_it_and_never_touches_the_original(tmp_path):
    """SIGTERM (a scheduler's or ``kill``'s stop; handled as Ctrl-C, which the confirmation test
    below sends) once one trial has finished and another is mid-sequence: exit 143, the summary says
    the search was interrupted and how to continue; trials.csv and the study call no trial
    PRUNED (ASHA stops none here). The experiment is then copied (cp -a storage/sig
    moved/sig), and --resume --storage moved finishes every trial on the copy's own files:
    the copy's journal grows, the original stays byte for byte as it was (every file hashed
    before and after). One interrupted search serves both, which were two tests."""
    import json
    import shutil

    from optuna.trial import TrialState


    num_tasks, samples = 4, 4
    space = _synthetic_space(tmp_path, num_tasks=num_tasks, samples=samples)
    storage = tmp_path / "storage"
    experiment = storage / "sig"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    def ready() -> bool:  # a trial with 2 or more tasks (about 2 s) still to go: the SIGINT lands before it ends
        done = [_tasks_reported(d) for d in experiment.glob("trial_*")]
        return num_tasks in done and any(0 < n < num_tasks - 1 for n in done)

    import signal

    code, out = _search_interrupted_when(ready, ["--space", str(space), "--storage", str(storage), "--name", "sig",
                                                 "--num-cpus", "2", "--seed", "0"], log=tmp_path / "first.log",
                                         sig=signal.SIGTERM)
    assert code == 143, out[-4000:]
    with open(experiment / "trials.csv") as f:
        table = list(csv.DictReader(f))
    statuses = [r["status"] for r in table]
    assert "PRUNED" not in statuses and "RUNNING" in statuses and "COMPLETE" in statuses, table
    assert all(int(r["tasks_done"]) == num_tasks for r in table if r["status"] == "COMPLETE")
    assert all(int(r["tasks_done"]) == 0 for r in table if r["status"] == "PENDING")  # listed as not started
    assert all(r["lr_meta"] not in ("", "None") for r in table)  # settings even of trials not started
    # the interrupted search's curves too: every task each trial finished, with its status
    from marktune.results.curves import read_curves

    curves = read_curves(experiment / "curves.csv")
    status = {r["trial_id"]: r["status"] for r in table}
    tasks: dict[str, list[int]] = {}
    for row in curves.rows:
        assert row.status == status[row.trial_id]
        tasks.setdefault(row.trial_id, []).append(row.task)
    assert {t for t, s in status.items() if s in ("RUNNING", "COMPLETE")} <= set(tasks)
    assert all(done == list(range(1, len(done) + 1)) for done in tasks.values())
    left = samples - statuses.count("COMPLETE")
    assert (f"interrupted: {left} of {samples} trials unfinished; continue with "
            f"`python -m marktune.search --resume --name sig --storage {storage}`") in out, out[-3000:]
    assert "stopped by ASHA" in out and f"{statuses.count('COMPLETE')} complete, 0 stopped by ASHA" in out
    states = [t.state for t in _journal_study(experiment, "sig").trials]
    assert TrialState.PRUNED not in states and TrialState.RUNNING in states, states

    original = experiment
    moved = tmp_path / "moved"
    experiment = moved / "sig"
    moved.mkdir()
    shutil.copytree(original, experiment, symlinks=True)
    before = _hashes(original)
    journal_before = (experiment / "optuna_journal.log").stat().st_size
    resumed = subprocess.run([sys.executable, "-m", "marktune.search", "--resume", "--name", "sig", "--storage",
                              str(moved), "--num-cpus", "2", "--address", "local"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, start_new_session=True)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-4000:]
    assert _hashes(original) == before
    assert (experiment / "optuna_journal.log").stat().st_size > journal_before
    assert (experiment / "trials.csv").stat().st_mtime > (original / "trials.csv").stat().st_mtime
    assert str(original) not in resumed.stdout
    with open(experiment / "trials.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == samples and {r["status"] for r in table} == {"COMPLETE"}, table
    study = _journal_study(experiment, "sig")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * samples
    assert all(sorted(t.intermediate_values) == list(range(1, num_tasks + 1)) for t in study.trials)
    assert "[marktune] interrupted:" not in resumed.stdout
    assert json.loads((experiment / "marktune_search.json").read_text())["study_name"] == "sig"


@pytest.mark.mostly_waiting
def test_ctrl_c_in_the_confirmation_stage_and_resume_runs_only_what_is_left(tmp_path):
    """SIGINT once the confirmation stage's runs have started: exit 130, the summary says how to
    continue and best_config.yaml stays the one-seed pick; --resume re-runs no search trial, keeps
    the same finalists and seeds, finishes the stage's runs (no run twice) and writes the verdict."""
    import json

    num_tasks = 4
    space = _synthetic_space(tmp_path, num_tasks=num_tasks, samples=2)
    storage = tmp_path / "storage"
    experiment = storage / "conf"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = ["--space", str(space), "--storage", str(storage), "--name", "conf", "--num-cpus", "2",
            "--confirm-top", "2", "--confirm-seeds", "2"]
    code, out = _search_interrupted_when(
        lambda: any(0 < _tasks_reported(d) < num_tasks for d in (experiment / "confirmation").glob("confirm_*")),
        argv, log=tmp_path / "first.log")
    assert code == 130, out[-4000:]
    assert "confirmation runs unfinished, so best_config.yaml is the one-seed pick for now" in out, out[-3000:]
    planned = json.loads((experiment / "confirmation.json").read_text())
    assert "winner" not in planned and planned["seeds"] == [1, 2]
    assert "confirm_val_mean" not in yaml.safe_load((experiment / "best_config.yaml").read_text())
    trials_before = {p: p.stat().st_mtime for p in experiment.glob("trial_*/result.json")}

    resumed = subprocess.run([sys.executable, "-m", "marktune.search", "--resume", "--name", "conf", "--storage",
                              str(storage), "--num-cpus", "2"], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=900, start_new_session=True)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-4000:]
    assert "confirmation: continuing the top 2 trials" in resumed.stdout
    assert {p: p.stat().st_mtime for p in experiment.glob("trial_*/result.json")} == trials_before  # no trial re-ran
    record = json.loads((experiment / "confirmation.json").read_text())
    assert record["finalists"] == planned["finalists"] and record["seeds"] == [1, 2] and record["winner"]
    runs = sorted((json.loads(p.read_text())["confirm_of"], json.loads(p.read_text())["seed"])
                  for p in (experiment / "confirmation").glob("confirm_*/params.json"))
    assert runs == sorted((f["trial_id"], s) for f in planned["finalists"] for s in (1, 2))  # each once
    assert all(_tasks_reported(d) == num_tasks for d in (experiment / "confirmation").glob("confirm_*"))
    assert yaml.safe_load((experiment / "best_config.yaml").read_text())["trial_id"] == record["winner"]


@pytest.mark.mostly_waiting
def test_a_multi_objective_search_prunes_by_non_dominated_sorting_and_reports_its_pareto_set(tmp_path, capsys):
    """--objectives val_acc,params on synthetic tasks of about a second: a two-direction Optuna
    study, the multi-objective ASHA stopping some trials (told PRUNED), and a summary and trials.csv
    that give the Pareto set of the complete trials, each member's parameter count as reported."""
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    from marktune.results.objectives import minimised, nondominated_ranks, parse_objectives

    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({
        "benchmark": "synthetic",
        "fixed": {"num_tasks": 3, "epochs": 1, "meta_epochs": 2, "mini_tasks": 2, "inner_steps": 2, "latent_dim": 16,
                  "fe_channels": 8, "batch_size": 32, "synthetic_classes_per_task": 4,
                  "synthetic_images_per_class": 60, "synthetic_image_size": 16},
        "search": {"lr_meta": {"type": "loguniform", "low": 0.001, "high": 0.1},
                   "kb_width": {"type": "choice", "values": [4, 8, 16, 32]}},
        "defaults": {"samples": 8, "grace_period": 1, "reduction_factor": 2, "cpus_per_trial": 1,
                     "searcher": "random"},
    }))
    storage = tmp_path / "st"
    outcome, rows, plan = search_in_process(["--space", str(space), "--storage", str(storage), "--name", "mo",
                                             "--num-cpus", "2", "--objectives", "val_acc,params", "-q"])
    out = capsys.readouterr().out
    experiment = storage / "mo"
    study = _journal_study(experiment, "mo")
    assert study.directions == [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE]
    states = [t.state for t in study.trials]
    assert TrialState.PRUNED in states and TrialState.COMPLETE in states, states
    complete = [r for r in rows if r.status == "COMPLETE"]
    told = sorted(tuple(round(v, 6) for v in t.values) for t in study.trials if t.state == TrialState.COMPLETE)
    assert told == sorted(tuple(round(v, 6) for v in r.values) for r in complete)  # both objectives, told
    objectives = parse_objectives("val_acc,params")
    ranks = nondominated_ranks(minimised([r.values for r in complete], objectives))
    assert [r.front for r in complete] == ranks
    with open(experiment / "trials.csv") as f:
        table = {r["trial_id"]: r for r in csv.DictReader(f)}
    assert {t for t, r in table.items() if r["front"] == "0"} == {r.trial_id for r in complete if r.front == 0}
    # the parameter count: a function of the settings, the same after every task, larger with a wider KB
    sizes = {}
    for r in complete:
        assert float(table[r.trial_id]["params"]) == r.values[1]
        sizes.setdefault(r.config["kb_width"], set()).add(r.values[1])
    assert all(len(v) == 1 for v in sizes.values())
    widths = sorted(sizes)
    assert [next(iter(sizes[w])) for w in widths] == sorted(next(iter(sizes[w])) for w in widths)
    assert "the Pareto set:" in out and "multi-objective ASHA" in out
    # evaluate re-runs the whole Pareto set (no --top) and says which members stay non-dominated
    from marktune.cli import evaluate
    from marktune.results.experiment_reader import load_experiment

    assert [t.trial_id for t in load_experiment(experiment).pareto_set()] == \
        [r.trial_id for r in sorted((r for r in complete if r.front == 0), key=lambda r: -r.val_acc)]
    assert evaluate.main([str(experiment), "--seeds", "2", "--ablations", "", "--num-cpus", "2", "-q"]) == 0
    with open(experiment / "evaluation.csv") as f:
        evaluated = {r["source_trial"] for r in csv.DictReader(f) if r["kind"] == "best"}
    assert evaluated == {r.trial_id for r in complete if r.front == 0}
    report = (experiment / "evaluation.md").read_text()
    assert "**The Pareto set on fresh seeds**" in report and "stay non-dominated" in report
    assert "stay non-dominated" in capsys.readouterr().out
    # the report marks the set the search found; TensorBoard's HParams hold every objective
    from marktune.cli import report as report_cli
    from marktune.tune.spaces import load_experiment_with_space

    page = report_cli.build_report(load_experiment_with_space(experiment)).read_text()
    assert "id='search-front'" in page  # and each member's row (the paragraph names the mark once)
    assert page.count("search's set</b>") == 1 + sum(r.front == 0 for r in complete)
