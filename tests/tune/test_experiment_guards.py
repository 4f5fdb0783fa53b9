"""The experiment's guards (issue 19): the lock, names, seeds, resources, which trial errors Tune retries."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from marktune.results.files import LOCK_FILE
from marktune.tune.runs import preflight
from marktune.tune.folders.lock import ExperimentLock, ExperimentLocked, LockHolder, lock_experiment
from marktune.tune.plan import MAX_SEED, PlanError, RaySettings, check_name, check_seed


# ---------------------------------------------------------------- names
@pytest.mark.parametrize("name", ["../../x", "/abs/path", "a/b", ".", "..", "", "a b", "x;rm", "é", "a\\b"])
def test_a_name_that_is_not_one_folder_name_is_refused(name):
    with pytest.raises(PlanError, match="one folder name of letters, digits"):
        check_name(name)


@pytest.mark.parametrize("name", ["fmnist-20261123-190000", "a.b_c-D9", "...x", ".hidden"])
def test_a_plain_name_passes(name):
    check_name(name)


# ---------------------------------------------------------------- seeds
def test_seeds_outside_numpys_range_are_refused():
    check_seed(0, flag="--seed")
    check_seed(MAX_SEED, flag="--seed")
    for seed in (-1, MAX_SEED + 1, 2**40):
        with pytest.raises(PlanError, match=r"--seed .*0\.\.4294967295"):
            check_seed(seed, flag="--seed")


# ---------------------------------------------------------------- the lock
def test_a_second_holder_is_refused_and_told_who_holds_it(tmp_path):
    experiment = tmp_path / "st" / "same"
    with ExperimentLock(experiment, what="search", command="marktune.search --name same"):
        holder = json.loads((experiment / LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname() and holder["started"]
        with pytest.raises(ExperimentLocked) as refused:
            ExperimentLock(experiment, what="search").acquire()
        message = str(refused.value)
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in message
        assert holder["started"] in message and "marktune.search --name same" in message
        assert "another --name" in message
        with pytest.raises(ExperimentLocked, match="a search"):  # an evaluation is refused too
            ExperimentLock(experiment, what="evaluation").acquire()
    assert not (experiment / LOCK_FILE).exists()  # released
    assert not experiment.exists() and not (tmp_path / "st").exists()  # it made them, nothing else was written


def test_the_lock_of_a_process_that_is_gone_is_taken_over_with_a_message(tmp_path, capsys):
    experiment = tmp_path / "exp"
    experiment.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = LockHolder(what="search", host=socket.gethostname(), pid=dead.pid, started="2026-01-01 00:00:00 UTC",
                      command="marktune.search --name exp", token="t0")
    (experiment / LOCK_FILE).write_text(json.dumps(gone.__dict__))
    with ExperimentLock(experiment, what="search") as lock:
        assert lock.took_over == gone
        assert json.loads((experiment / LOCK_FILE).read_text())["pid"] == os.getpid()
    out = capsys.readouterr().out
    assert f"took over the lock of a search (pid {dead.pid}" in out and "that process is gone" in out
    assert experiment.is_dir()  # it was there before


def test_a_reused_pid_is_not_mistaken_for_the_holder(tmp_path):
    experiment = tmp_path / "exp"
    experiment.mkdir()
    reused = LockHolder(what="search", host=socket.gethostname(), pid=os.getpid(), started="then",
                        command="old", token="t0", process_start="1")  # this pid, another process start
    (experiment / LOCK_FILE).write_text(json.dumps(reused.__dict__))
    with ExperimentLock(experiment, what="search") as lock:
        assert lock.took_over == reused


def test_a_lock_from_another_host_is_refused_with_the_file_to_delete(tmp_path):
    experiment = tmp_path / "exp"
    experiment.mkdir()
    other = LockHolder(what="search", host="node-7", pid=1, started="then", command="c", token="t0")
    (experiment / LOCK_FILE).write_text(json.dumps(other.__dict__))
    with pytest.raises(ExperimentLocked, match=rf"pid 1 on host node-7.*If host node-7 is gone.*delete "
                                               rf"{experiment / LOCK_FILE}"):
        ExperimentLock(experiment, what="search").acquire()
    (experiment / LOCK_FILE).write_text("not json")
    with pytest.raises(ExperimentLocked, match="not one marktune wrote"):
        ExperimentLock(experiment, what="search").acquire()
    assert (experiment / LOCK_FILE).read_text() == "not json"  # left as it was


def test_remote_storage_has_no_lock_and_says_so(capsys):
    lock_experiment("s3://bucket/marktune", "x", what="search").release()
    assert "takes no lock" in capsys.readouterr().out


# ---------------------------------------------------------------- resources
def test_a_trial_larger_than_this_machines_ray_is_refused_before_ray_starts():
    local = RaySettings(num_cpus=2)
    with pytest.raises(PlanError, match=r"--cpus-per-trial 4: more CPUs than this machine's Ray has \(--num-cpus 2\)"):
        preflight.check_local_resources(local, cpus_per_trial=4, gpus_per_trial=0)
    preflight.check_local_resources(local, cpus_per_trial=2, gpus_per_trial=0)
    with pytest.raises(PlanError, match="this machine has"):
        preflight.check_local_resources(RaySettings(), cpus_per_trial=preflight.machine_cpus() + 1, gpus_per_trial=0)
    with pytest.raises(PlanError, match=r"--gpus-per-trial 2: more GPUs .*--num-gpus 1"):
        preflight.check_local_resources(RaySettings(num_gpus=1), cpus_per_trial=1, gpus_per_trial=2)
    with pytest.raises(PlanError, match=r"--gpus-per-trial 3: more GPUs .*this machine has 2"):
        preflight.check_local_resources(RaySettings(), cpus_per_trial=1, gpus_per_trial=3, gpu_count=lambda: 2)
    # a cluster is checked once joined
    preflight.check_local_resources(RaySettings(address="auto"), cpus_per_trial=64, gpus_per_trial=8)


def test_num_cpus_with_a_cluster_address_is_refused():
    with pytest.raises(PlanError, match="--num-cpus size the Ray this command starts.*leave --num-cpus out"):
        preflight.check_ray_flags(RaySettings(address="auto", num_cpus=2))
    with pytest.raises(PlanError, match="--num-cpus must be >= 1"):
        preflight.check_ray_flags(RaySettings(num_cpus=0))
    preflight.check_ray_flags(RaySettings(num_cpus=2))


def test_a_trial_no_node_can_hold_is_refused_once_ray_is_up(monkeypatch):
    import ray

    from marktune.tune import ray_internals

    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 2.0, "GPU": 1.0}},
                                               {"Alive": False, "Resources": {"CPU": 64.0}}])
    monkeypatch.setattr(ray_internals, "autoscaler_node_types", lambda: None)
    with pytest.raises(PlanError, match=r"--cpus-per-trial 4: no node of the cluster at --address auto has "
                                        r"that many CPUs \(the largest has 2"):
        preflight.check_cluster_resources(cpus_per_trial=4, gpus_per_trial=0, address="auto")
    with pytest.raises(PlanError, match=r"--gpus-per-trial 2: .*largest has 1"):
        preflight.check_cluster_resources(cpus_per_trial=1, gpus_per_trial=2, address="auto")
    preflight.check_cluster_resources(cpus_per_trial=2, gpus_per_trial=0.5, address="auto")
    # a node type the autoscaler can add counts
    monkeypatch.setattr(ray_internals, "autoscaler_node_types", lambda: [{"CPU": 8.0, "GPU": 4.0}])
    preflight.check_cluster_resources(cpus_per_trial=4, gpus_per_trial=2, address="auto")


# ---------------------------------------------------------------- which errors are retried
def _task_error(cause: BaseException):
    from ray.exceptions import RayTaskError

    return RayTaskError("train", "Traceback ...", cause)


def test_config_errors_and_bugs_are_permanent_lost_workers_and_io_are_not():
    from ray.exceptions import RayActorError

    from marktune.data.benchmarks import DatasetMissingError
    from marktune.mark.config import ConfigError
    from marktune.mark.devices import TrialOutOfMemoryError
    from runners.mark_sequence import is_permanent_error

    for permanent in (ConfigError("uniform for an integer"), ValueError("x"), TypeError("x"), KeyError("x"),
                      FloatingPointError("loss became nan"), DatasetMissingError("CIFAR-100 not found")):
        assert is_permanent_error(_task_error(permanent)), permanent
    for transient in (OSError("disk"), ConnectionError("net"), TrialOutOfMemoryError("oom"), MemoryError()):
        assert not is_permanent_error(_task_error(transient)), transient
    assert not is_permanent_error(RayActorError())
    assert not is_permanent_error(None)
    assert not is_permanent_error(RuntimeError("a Tune error, not raised by the trial"))


def test_a_second_report_of_one_dead_actor_does_not_end_a_trial_queued_to_retry():
    """An actor killed with two tasks in flight (a restore and a train step) fails both; Tune's own
    _process_trial_failure (the real one, on a stand-in controller) retries the trial on the first
    and, without marktune's wrapper, ends it as ERROR on the second (found by bench/soak.py)."""
    from unittest import mock

    from ray.exceptions import ActorDiedError
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.experiment import Trial

    from marktune.tune.ray_internals import handle_failures
    from runners.mark_sequence import is_permanent_error

    handle_failures(is_permanent_error)
    trial = Trial("__fake", stub=True)
    trial.max_failures = 50
    no_files = mock.patch.object(Trial, "local_path", new_callable=mock.PropertyMock, return_value=None)
    no_files.start()  # handle_error writes no error file
    trial.set_status(Trial.RUNNING)
    controller = mock.MagicMock()
    controller._try_recover.side_effect = lambda t, exc: t.set_status(Trial.PENDING)  # requeued, actor gone
    controller._schedule_trial_stop.side_effect = lambda t, exception=None: t.set_status(
        Trial.ERROR if exception else Trial.TERMINATED)
    from ray.core.generated.common_pb2 import ActorDiedErrorContext

    def killed(actor: str) -> ActorDiedError:  # as Ray builds it for a worker that died (SIGKILL)
        return ActorDiedError(ActorDiedErrorContext(actor_id=bytes.fromhex(actor), class_name="ImplicitFunc",
                                                    error_message="Worker unexpectedly exits"))

    died = killed("d7f5cca4431f802e1512348c01000000")
    TuneController._process_trial_failure(controller, trial, died)  # the restore's failure
    assert trial.status == Trial.PENDING and trial.run_metadata.num_failures == 1
    TuneController._process_trial_failure(controller, trial, died)  # the train step's, same actor
    assert trial.status == Trial.PENDING and trial.run_metadata.num_failures == 1
    controller._schedule_trial_stop.assert_not_called()  # Tune's way of ending it as ERROR
    trial.set_status(Trial.RUNNING)
    TuneController._process_trial_failure(controller, trial, killed("22d71d0470ee2abb5367062001000000"))  # its next actor dies
    assert trial.status == Trial.PENDING and trial.run_metadata.num_failures == 2
    no_files.stop()


def test_a_restarted_trial_goes_on_after_its_last_reported_task(tmp_path):
    """A worker killed after its result reached the driver but before Tune's separate save task
    registered the checkpoint: the restore takes the checkpoint the result names (persisted
    before the result was sent), so the task is not run and reported twice (found by
    bench/soak.py); Tune's own restore would take the one before."""
    import json
    from unittest import mock

    from ray.train._internal.session import _TrainingResult
    from ray.train._internal.storage import StorageContext
    from ray.tune import Checkpoint
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.experiment import Trial

    from marktune.tune.ray_internals import handle_failures
    from runners.mark_sequence import is_permanent_error

    handle_failures(is_permanent_error)
    storage = StorageContext(storage_path=str(tmp_path), experiment_dir_name="exp", trial_dir_name="trial_a")
    trial = Trial("__fake", stub=True, storage=storage)
    trial_dir = tmp_path / "exp" / "trial_a"

    def persisted(index: int, tasks: int) -> dict:
        name = f"checkpoint_{index:06d}"
        (trial_dir / name).mkdir(parents=True)
        (trial_dir / name / "tasks_done.json").write_text(json.dumps({"tasks_done": tasks}))
        return {"tasks_done": tasks, "checkpoint_dir_name": name}

    first = persisted(0, 1)
    trial.on_checkpoint(_TrainingResult(checkpoint=Checkpoint(str(trial_dir / "checkpoint_000000")), metrics=first))
    trial.run_metadata.last_result = persisted(1, 2)  # task 2 reported; its save never came back
    controller = mock.MagicMock()
    assert TuneController._schedule_trial_restore(controller, trial)
    restore = controller._schedule_trial_task.call_args.kwargs
    assert restore["method_name"] == "restore"
    assert restore["args"][0].checkpoint.path.endswith("checkpoint_000001")
    assert restore["args"][0].metrics["tasks_done"] == 2
    assert trial.storage.current_checkpoint_index == 1  # as Tune's own save of it would have set it
    trial.run_metadata.last_result = {"tasks_done": 3, "checkpoint_dir_name": "checkpoint_000002"}  # not on disk
    TuneController._schedule_trial_restore(controller, trial)
    assert controller._schedule_trial_task.call_args.kwargs["args"][0].checkpoint.path.endswith("checkpoint_000001")


@pytest.mark.slow
@pytest.mark.mostly_waiting
def test_tune_retries_a_transient_error_but_a_config_error_fails_once(tmp_path):
    """A real Tune run (seconds): with max_failures=2, a trial raising ConfigError runs once, one
    raising OSError runs 1 + 2 times."""
    import ray
    from ray import tune

    from marktune.tune.ray_internals import handle_failures
    from runners.mark_sequence import is_permanent_error

    # defined here, so that Ray pickles it by value (workers cannot import a test module)
    def _fails_with(config):
        from pathlib import Path

        from marktune.mark.config import ConfigError

        attempts = Path(config["dir"]) / config["kind"]
        attempts.mkdir(exist_ok=True)
        (attempts / str(len(list(attempts.iterdir())))).touch()  # one file per attempt
        if config["kind"] == "config":
            raise ConfigError("lr_task must be > 0 (got -1)")
        raise OSError("the disk went away")

    handle_failures(is_permanent_error)
    ray.init(num_cpus=2, include_dashboard=False, address="local", ignore_reinit_error=True)
    try:
        tuner = tune.Tuner(tune.with_resources(_fails_with, {"cpu": 1}),
                           param_space={"kind": tune.grid_search(["config", "io"]), "dir": str(tmp_path)},
                           run_config=tune.RunConfig(storage_path=str(tmp_path / "st"), name="x", verbose=0,
                                                     failure_config=tune.FailureConfig(max_failures=2)))
        results = tuner.fit()
    finally:
        ray.shutdown()
    assert len(list((tmp_path / "config").iterdir())) == 1
    assert len(list((tmp_path / "io").iterdir())) == 3
    errors = sorted(str(r.error) for r in results)
    assert "lr_task must be > 0" in errors[0] or "lr_task must be > 0" in errors[1]


def test_tune_s_snapshots_of_the_experiment_take_at_most_a_twentieth_of_the_driver_s_time(monkeypatch):
    """Tune's experiment state holds about 37 KB per trial: snapshotting it every second at
    thousands of trials would be most of the driver's work. After a snapshot that took 0.5 s the
    next comes 9.5 s later; a cheap one keeps the 1 s period; TUNE_GLOBAL_CHECKPOINT_S is the floor."""
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

    from marktune.tune.ray_internals import snapshot_share

    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "1")
    snapshot_share(floor_s=1.0, share=0.05)
    manager = _ExperimentCheckpointManager(storage=None, checkpoint_period=1)
    manager._update_auto_checkpoint_time(time_taken=0.5)
    assert manager._checkpoint_period == pytest.approx(9.5)
    manager._update_auto_checkpoint_time(time_taken=0.01)
    assert manager._checkpoint_period == 1.0
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "30")  # a user's own period stays the floor
    manager._update_auto_checkpoint_time(time_taken=0.5)
    assert manager._checkpoint_period == 30.0
