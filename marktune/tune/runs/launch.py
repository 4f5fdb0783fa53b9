"""Before and at Ray's start, for every command: the pre-flight checks, Ray itself, Tune's settings.

* Pre-flight (:func:`check_search`, :func:`check_evaluation`): every check on the input that
  can be made before Ray starts, cheapest first, each within seconds (the checks themselves, one
  input each, are :mod:`marktune.tune.runs.preflight`): the cluster address and its token, the
  Optuna storage, the data set, bf16 and GPUs on this machine, the storage directory. A problem
  is a :class:`~marktune.tune.plan.PlanError` whose message says what to do.
* :func:`start_ray`: join a cluster (``--address``) or start Ray of its own on this machine;
  :func:`check_cluster_resources` then refuses trials no node of it can hold.
* :func:`prepare_tune` / :func:`quiet_ray_output`: the environment Tune reads when a Tuner is
  built and run (our TensorBoard logger, the snapshot period, how many trials start at once,
  Ray's trial tables).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from marktune.results.files import is_remote
from marktune.tune.plan import EvalPlan, PlanError, RaySettings, SearchPlan
from marktune.tune.runs.preflight import (check_address, check_gpu_memory_fraction, check_local_data, check_local_gpus,
                                     check_local_precision, check_local_resources, check_ray_flags, check_storage,
                                     is_local)


# ---------------------------------------------------------------- pre-flight of each command
def check_search(plan: SearchPlan) -> None:
    """Every check on a search's input that can be made before Ray starts, cheapest first; it
    writes nothing but the storage folder (then :func:`open_experiment`, under the lock)."""
    address = plan.ray.address
    check_ray_flags(plan.ray)
    check_local_resources(plan.ray, cpus_per_trial=plan.cpus_per_trial, gpus_per_trial=plan.gpus_per_trial)
    check_address(address)
    check_local_data(plan.base_config.benchmark, address=address, data_dir=plan.runtime.data_dir,
                     download=plan.runtime.download)
    check_local_precision(plan.space.precisions(plan.overrides), address=address)
    check_local_gpus(plan.gpus_per_trial, address=address, num_gpus=plan.ray.num_gpus,
                     cpu_fallback=plan.runtime.cpu_fallback)
    check_gpu_memory_fraction(plan.runtime.gpu_memory_fraction)
    if not is_remote(plan.storage):  # never inside, or in place of, another command's folder
        from marktune.tune.folders.ownership import FolderOwned, check_kind, check_not_inside
        try:
            check_not_inside(Path(plan.storage), flag="--storage")
            check_kind(plan.local_dir(), "search", flag="--name")
        except FolderOwned as err:
            raise PlanError(str(err)) from None
    check_storage(plan.storage)  # it creates the directory: after every check of the input
    from marktune.tune.folders.experiment import check_experiment
    check_experiment(plan)  # free space in that directory's disk


def open_experiment(plan: SearchPlan) -> None:
    """What a search checks and repairs in its experiment once it holds the experiment's lock:
    the study (a torn journal line set aside; held exactly when resuming) and Tune's state files."""
    from marktune.tune.folders.experiment import restore_experiment
    from marktune.tune.folders.study import StorageError

    if not is_remote(plan.storage):
        from marktune.tune.folders.ownership import claim
        claim(plan.local_dir(), "search")  # the folder is this search's before anything else is written
    restore_experiment(plan)  # --resume: marktune's settings file first, before any journal is touched
    try:
        plan.study_storage.check(study_name=plan.name, resume=plan.resume)
    except StorageError as err:
        raise PlanError(str(err)) from None


def check_evaluation(plan: EvalPlan) -> None:
    """Every check on an evaluation's input that can be made before Ray starts."""
    address = plan.ray.address
    check_ray_flags(plan.ray)
    check_local_resources(plan.ray, cpus_per_trial=plan.cpus_per_trial, gpus_per_trial=plan.gpus_per_trial, unit="run")
    for benchmark in sorted({c.config.benchmark for c in plan.configs}):
        check_local_data(benchmark, address=address, data_dir=plan.runtime.data_dir, download=plan.runtime.download)
    check_local_precision([c.config.precision for c in plan.configs], address=address)
    check_storage(plan.storage)
    check_local_gpus(plan.gpus_per_trial, address=address, num_gpus=plan.ray.num_gpus,
                     cpu_fallback=plan.runtime.cpu_fallback)


# ---------------------------------------------------------------- Ray and Tune
def start_ray(ray_settings: RaySettings) -> None:
    """Connect to the cluster at ``ray_settings.address``, else start a Ray of this process's own.

    Without an address, ``ray.init`` would join whatever Ray the file /tmp/ray/ray_current_cluster
    names (another program's ``ray start``, a ``ray.cluster_utils.Cluster`` in a test beside) and
    then refuse ``num_cpus``; ``address="local"`` never joins: that is what ``--address auto`` is for.
    """
    import ray

    address = ray_settings.address
    check_ray_flags(ray_settings)
    check_address(address)
    kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": True}
    if not is_local(address):
        kwargs["address"] = address
    else:
        kwargs.update(address="local", num_cpus=ray_settings.num_cpus, num_gpus=ray_settings.num_gpus,
                      include_dashboard=False)
    try:
        ray.init(**kwargs)
    except ConnectionError as err:
        raise PlanError(f"--address {address}: {err}") from None


def shutdown_ray() -> None:
    """Stop this process's Ray if it started one (a refusal that came once Ray was up)."""
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


def prepare_tune(*, cpus_per_trial: float, gpus_per_trial: float | None, runs: int,
                 max_concurrent: int | None = None) -> float:
    """Tune settings shared by the search and the evaluation; returns the GPUs per trial.

    ``gpus_per_trial=None`` means 0.25 where the cluster has GPUs, else 0. Call after
    ``ray.init`` and before building the Tuner (Tune reads these variables then).
    """
    import ray

    from marktune.tune.ray_internals import snapshot_share

    # Our TensorBoard callback replaces Tune's: one set of curves per trial, with HParams.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # one checkpoint per task is our design, not a problem worth a warning each time
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # The experiment state (what --resume restores) at most a second behind the trials; see
    # tune_setup.keep_every_checkpoint for why Tune's own "snapshot every num_to_keep checkpoints" is not used.
    # Less often when a snapshot takes long (thousands of trials): at most 5 % of the driver's time.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    snapshot_share(floor_s=1.0, share=0.05)
    total = ray.cluster_resources()
    gpus = gpus_per_trial
    if gpus is None:
        gpus = 0.25 if total.get("GPU", 0) > 0 else 0.0
    # With a searcher, Tune starts one trial at a time (one pending placement group) by
    # default, so trials on free slots wait for each other's actor start-up. Let as many
    # start at once as the cluster has slots for.
    slots = [runs]
    if cpus_per_trial > 0:
        slots.append(int(total.get("CPU", 0) // cpus_per_trial))
    if gpus > 0:
        slots.append(int(total.get("GPU", 0) // gpus))
    if max_concurrent:
        slots.append(max_concurrent)
    # set, not setdefault: a second search in one process (tests, notebooks) has its own slots
    os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(max(1, min(slots)))
    return gpus


def quiet_ray_output(*, verbose: bool) -> None:
    """Ray's trial tables with --verbose only. Tune 2.60's default output engine prints its
    configuration box at the start and a full trial table at the end even with verbose=0;
    its legacy engine (RAY_AIR_NEW_OUTPUT=0) at verbose=0 prints nothing. Ray's warnings go
    through logging and are shown either way. Read by Tune when the Tuner runs."""
    os.environ["RAY_AIR_NEW_OUTPUT"] = "1" if verbose else "0"
