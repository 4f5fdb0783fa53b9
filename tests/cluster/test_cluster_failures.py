"""A search on several Ray nodes on one machine: lost worker nodes, a lost driver, no cluster.

``ray.cluster_utils.Cluster`` starts a head (0 CPUs, as on a real cluster, so trials go to
workers) and worker nodes as separate raylets on this machine; removing a node kills its
processes the way a reclaimed spot instance would. Run these alone with ``-m cluster``.
Trials are tiny synthetic MARK sequences of a few seconds per task.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml

from marktune.cli import search
from marktune.tune.runs.launch import start_ray
from marktune.tune.runs.search_run import run_search

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
NUM_TASKS = 4


def _space_file(tmp_path: Path, *, samples: int) -> Path:
    """Tiny synthetic sequences of a few seconds per task on one core, hard enough (4 classes
    a task, one epoch) that accuracies are not all 1.0, so equal rows mean something. ASHA
    never stops a trial (grace period = every task): every trial must run all tasks."""
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({
        "benchmark": "synthetic",
        # phase 4 makes a task last about a second (more meta steps with a small meta_step, not
        # more data, so accuracies stay between 0 and 1): long enough to kill a node or the driver
        # mid-sequence, and longer than the driver's snapshot period (1 s)
        "fixed": {"num_tasks": NUM_TASKS, "epochs": 1, "meta_epochs": 40, "meta_step": 0.003,
                  "mini_tasks": 2, "inner_steps": 10,
                  "kb_width": 8, "latent_dim": 16, "fe_channels": 8, "batch_size": 32,
                  "synthetic_classes_per_task": 4, "synthetic_images_per_class": 100,
                  "synthetic_image_size": 16},
        "search": {"lr_meta": {"type": "loguniform", "low": 0.001, "high": 0.1}},
        # CPU trials even on a CUDA host: "a task run again gives identical rows" is checked
        # below, and on CUDA cuDNN's algorithm choice and atomics make reruns differ in round-off
        "defaults": {"samples": samples, "grace_period": NUM_TASKS, "reduction_factor": 2,
                     "cpus_per_trial": 1, "gpus_per_trial": 0},
    }))
    return path


def _history(trial_dir: Path) -> list[dict]:
    """Every result a trial reported, in order (Tune's result.json, one JSON object a line)."""
    path = trial_dir / "result.json"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written right now
            break
    return rows


def _trial_dirs(experiment: Path) -> list[Path]:
    return sorted(p for p in experiment.glob("trial_*") if p.is_dir())


# ---------------------------------------------------------------- nodes
@pytest.fixture
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def _lose_node(cluster, node) -> None:
    """Kill a worker node the way a lost instance dies: its raylet and every worker process it
    started, all at once. ``Cluster.remove_node`` alone kills only the raylet's own processes;
    the trial's worker then goes on for a second or more until it notices, long enough to
    finish a tiny trial on the dead node (seen in CI)."""
    from ray._private import ray_constants

    raylet = psutil.Process(node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid)
    doomed = raylet.children(recursive=True) + [raylet]
    for proc in doomed:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(doomed, timeout=30)
    cluster.remove_node(node, allow_graceful=False)  # the rest of the node, and Ray's bookkeeping


def test_trials_spread_over_workers_and_survive_a_lost_node(cluster, tmp_path):
    """Head (0 CPUs) + two 1-CPU workers. Once a trial on worker B has reported a task, B is
    killed and a fresh worker C joins (as the autoscaler would do). Every trial ends with every
    task; the lost trial resumes at the task after its checkpoint, and the rows it reported
    before the loss are exactly the rows of its final history (none recomputed)."""
    worker_a = cluster.add_node(num_cpus=1)
    worker_b = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    space = _space_file(tmp_path, samples=3)
    storage = tmp_path / "storage"
    experiment = storage / "lost-node"
    argv = ["--space", str(space), "--storage", str(storage), "--name", "lost-node",
            "--address", cluster.address, "--max-failures", "2", "--seed", "0", "-q"]
    args = search.build_parser().parse_args(argv)
    plan = search.plan_from_args(args)

    start_ray(plan.ray)
    # The search runs in a thread: adding a node must happen in the main thread (Ray sets
    # signal handlers), and the main thread watches the trials' results as Tune writes them.
    outcome: dict = {}

    def run() -> None:
        try:
            run = run_search(plan)
            outcome["rows"] = search.summarize(run, plan, top=5)
        except BaseException as err:  # noqa: BLE001 - re-raised in the test below
            outcome["error"] = err

    driver = threading.Thread(target=run, daemon=True)
    driver.start()
    lost: dict = {}
    deadline = time.time() + 300
    while driver.is_alive() and not lost and time.time() < deadline:
        for trial_dir in _trial_dirs(experiment):
            history = _history(trial_dir)
            # kill B while the trial has tasks left: a trial that finished on B tests nothing
            if (history and history[-1]["node_id"] == worker_b.node_id
                    and history[-1]["tasks_done"] < NUM_TASKS - 1):
                lost.update(trial=trial_dir.name, before=history)
                _lose_node(cluster, worker_b)
                assert not psutil.pid_exists(history[-1]["pid"]), "the trial's process outlived its node"
                lost["worker_c"] = cluster.add_node(num_cpus=1).node_id  # the autoscaler's replacement
                # a task may have finished on B between the read above and the kill: what was
                # reported before the loss is everything B reported
                history = _history(trial_dir)
                lost["before"] = [h for h in history if h["node_id"] == worker_b.node_id]
                break
        time.sleep(0.1)
    driver.join(timeout=300)
    assert not driver.is_alive(), "the search did not end"
    if "error" in outcome:
        raise outcome["error"]
    assert lost, "no trial on worker B reported a task before the search ended"
    rows = outcome["rows"]

    # every trial ran every task, none errored
    assert len(rows) == 3
    assert all(r.status == "COMPLETE" and r.tasks_done == NUM_TASKS for r in rows), rows
    histories = {d.name: _history(d) for d in _trial_dirs(experiment)}
    assert len(histories) == 3
    nodes = {h["node_id"] for history in histories.values() for h in history}
    assert {worker_a.node_id, worker_b.node_id} <= nodes  # trials ran on both workers
    assert cluster.head_node.node_id not in nodes  # and none on the 0-CPU head

    final = histories[lost["trial"]]
    before = lost["before"]
    on_b = [h for h in final if h["node_id"] == worker_b.node_id]
    retried = [h for h in final if h["node_id"] != worker_b.node_id]
    assert on_b == before and retried, final
    assert {h["node_id"] for h in retried} <= {worker_a.node_id, lost["worker_c"]}
    assert final[0]["resumed_at_task"] == 0
    # The retry resumed from a checkpoint, not from scratch: at the last task whose checkpoint
    # Tune had registered before the loss. A task reported in the instant before the kill may
    # have lost its checkpoint (Tune's race, seen here); it is then run again ...
    first_retried = retried[0]["resumed_at_task"]
    assert first_retried >= len(before) - 1 and first_retried >= 1, (before, retried[0])
    assert [h["tasks_done"] for h in retried] == list(range(first_retried + 1, NUM_TASKS + 1))
    # ... and gives exactly what was reported before: nothing reported is lost or changed
    by_task = {}
    for h in final:
        rows_of_task = (h["val_row"], h["test_row"], h["mean_val_acc"])
        assert by_task.setdefault(h["tasks_done"], rows_of_task) == rows_of_task, h["tasks_done"]
    assert sorted(by_task) == list(range(1, NUM_TASKS + 1))
    assert len(final[-1]["val_row"]) == NUM_TASKS
    # rows worth comparing: not all perfect
    assert any(0 < acc < 1 for h in before for acc in h["val_row"] + h["test_row"]), before


# ---------------------------------------------------------------- the driver
def _search_cmd(*argv: str) -> list[str]:
    return [sys.executable, "-m", "marktune.search", *argv]


def _kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Kill the driver and everything it started (a local Ray's GCS, raylet and workers)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def test_killed_driver_resumes_without_running_a_trial_twice(tmp_path):
    """The driver (with the local Ray it started) is killed once a trial has finished and
    another is mid-sequence. ``--resume --name`` then ends every requested trial, each once:
    finished trials are not run again, the interrupted ones continue from a checkpoint (at most
    the tasks of the driver's last second are run again, with the same rows), the Optuna study
    comes back with every trial, and trials.csv covers them all."""
    samples = 4
    space = _space_file(tmp_path, samples=samples)
    storage = tmp_path / "storage"
    experiment = storage / "lost-driver"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_DEDUP_LOGS": "0"}
    first_log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(
        _search_cmd("--space", str(space), "--storage", str(storage), "--name", "lost-driver",
                    "--num-cpus", "2", "--seed", "0", "-q"),
        cwd=ROOT, env=env, stdout=first_log, stderr=subprocess.STDOUT, start_new_session=True)
    before: dict[str, list[dict]] = {}
    try:
        deadline = time.time() + 300
        while time.time() < deadline and first.poll() is None:
            histories = {d.name: _history(d) for d in _trial_dirs(experiment)}
            done = [h for h in histories.values() if h and h[-1]["tasks_done"] == NUM_TASKS]
            # a trial mid-sequence whose first task is older than the driver's snapshot period
            # (1 s), so the experiment state holds one of its checkpoints
            mid = [h for h in histories.values() if h and h[-1]["tasks_done"] < NUM_TASKS
                   and h[0]["task_finished_at"] < time.time() - 1.5]
            if done and mid:
                before = histories
                break
            time.sleep(0.1)
        assert first.poll() is None, f"the search ended before it could be killed:\n{_tail(tmp_path / 'first.log')}"
        assert before, "no moment with a finished and an unfinished trial"
    finally:
        _kill_group(first)
    killed_at = time.time()
    # the local Ray went with it: nothing of the first driver's process group is left
    deadline = time.time() + 30
    while _group_alive(first.pid) and time.time() < deadline:
        time.sleep(0.5)
    assert not _group_alive(first.pid), "processes of the killed driver's Ray are still running"
    first_log.close()

    # --resume needs only the name and the storage: space, samples and seed come from the experiment
    resumed = subprocess.run(
        _search_cmd("--resume", "--name", "lost-driver", "--storage", str(storage), "--num-cpus", "2",
                    "--top", "10", "-q"),
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, start_new_session=True)
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, out[-4000:]

    histories = {d.name: _history(d) for d in _trial_dirs(experiment)}
    ran = {name: h for name, h in histories.items() if h}
    assert len(ran) == samples, sorted(ran)  # exactly the requested trials, no extra ones
    resumed_from_a_checkpoint = 0
    for name, history in ran.items():
        old = before.get(name, [])
        assert history[:len(old)] == old  # what was reported before the kill stays as it was
        by_task: dict[int, tuple] = {}
        for h in history:  # a task run again gives exactly the rows it gave before
            rows = (h["val_row"], h["test_row"], h["mean_val_acc"])
            assert by_task.setdefault(h["tasks_done"], rows) == rows, (name, h["tasks_done"])
        assert sorted(by_task) == list(range(1, NUM_TASKS + 1)), (name, history)
        again = history[len(old):]
        if again and old:  # continued in the resumed run
            start = again[0]["resumed_at_task"]
            assert start <= len(old), (name, again[0])
            resumed_from_a_checkpoint += start >= 1
            # only tasks of the driver's last seconds are run again: the state was at most ~1 s old
            redone = [h for h in old if h["tasks_done"] > start]
            assert all(h["task_finished_at"] > killed_at - 5 for h in redone), (name, redone, killed_at)
            assert [h["tasks_done"] for h in again] == list(range(start + 1, NUM_TASKS + 1))
    assert resumed_from_a_checkpoint >= 1, "no interrupted trial continued from a checkpoint"
    configs = [h[0]["config"]["lr_meta"] for h in ran.values()]
    assert len(set(configs)) == samples  # no configuration restarted under a new trial id

    # the summary of the resumed run covers every trial, the ones finished before the kill too
    with open(experiment / "trials.csv") as f:
        table = list(csv.DictReader(f))
    assert sorted(f"trial_{r['trial_id']}" for r in table) == sorted(ran)
    assert {r["status"] for r in table} == {"COMPLETE"}, table
    assert f"{samples} trials: {samples} complete" in out
    finished_before = {n for n, h in before.items() if h and h[-1]["tasks_done"] == NUM_TASKS}
    for name in finished_before:
        assert name.removeprefix("trial_") in out  # in the best-trials table
    # after the run, each trial keeps only its newest checkpoint (every one was kept while it ran)
    for name in ran:
        assert len(list((experiment / name).glob("checkpoint_*"))) == 1, name
    # the Optuna study came back with the experiment: every trial, told COMPLETE with its value
    import optuna
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState
    study = optuna.load_study(study_name="lost-driver", storage=optuna.storages.JournalStorage(
        JournalFileBackend(str(experiment / "optuna_journal.log"))))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * samples
    assert sorted(t.params["lr_meta"] for t in study.trials) == pytest.approx(sorted(configs))


def _tail(path: Path, chars: int = 4000) -> str:
    return path.read_text()[-chars:] if path.is_file() else ""


# ---------------------------------------------------------------- no cluster
def test_unreachable_address_exits_2_with_a_clear_message(tmp_path):
    # nothing listens on port 1; the timeout only guards against a hang
    proc = subprocess.run(
        _search_cmd("--space", "digits", "--address", "127.0.0.1:1", "--storage", str(tmp_path / "s")),
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "cannot reach the Ray cluster" in proc.stderr and "127.0.0.1:1" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "s").exists()  # nothing started, nothing written
