"""Before and at Ray's start, for every command: the pre-flight checks, Ray itself, Tune's settings.

* Pre-flight (:func:`check_search`, :func:`check_evaluation`): every check on the input that
  can be made before Ray starts, cheapest first, each within seconds: the cluster address and
  its token, the Optuna storage, the data set, bf16 and GPUs on this machine, the storage
  directory. A problem is a :class:`~marktune.tune.plan.PlanError` whose message says what to do.
* :func:`start_ray`: join a cluster or start Ray on this machine.
* :func:`prepare_tune` / :func:`quiet_ray_output`: the environment Tune reads when a Tuner is
  built and run (our TensorBoard logger, the snapshot period, how many trials start at once,
  Ray's trial tables).
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Callable, Sequence

from marktune.tune.plan import EvalPlan, PlanError, RaySettings, SearchPlan


# ---------------------------------------------------------------- the cluster
def check_address(address: str | None, *, timeout: float = 5.0) -> None:
    """Fail within seconds when a cluster address cannot be reached (Ray itself may hang)."""
    if address in (None, "", "auto", "local"):
        return
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise PlanError(f"--address {address!r}: expected 'auto', HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as err:
        raise PlanError(f"--address {address}: cannot reach the Ray cluster ({err}). Is it up "
                        "(`ray status` on the head node)? Start one with `ray up cluster.yaml`, "
                        "or leave out --address to run on this machine.") from None
    if not address.startswith("ray://"):  # HOST:PORT is the GCS; ray:// is the client server
        check_token(address, timeout=timeout)


def check_token(address: str, *, timeout: float = 5.0) -> None:
    """Refuse, in words, a cluster (GCS at ``address``, HOST:PORT) that rejects this machine's
    Ray token; ray.init would retry for about 20 s and then only say it could not connect.

    Asks the GCS for its cluster id with the token Ray's own clients send (RAY_AUTH_MODE=token
    and ~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN). Any other answer, an
    unreachable or TLS-only GCS included, is left to ray.init.

    >>> check_token("127.0.0.1:1", timeout=1)  # nothing there: not a token problem
    """
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    from marktune.tune.ray_internals import ray_token_metadata

    metadata = ray_token_metadata()
    with grpc.insecure_channel(address) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=timeout,
                              metadata=metadata)
            return
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.UNAUTHENTICATED:
                return
    where = ("RAY_AUTH_TOKEN" if os.environ.get("RAY_AUTH_TOKEN")
             else os.environ.get("RAY_AUTH_TOKEN_PATH") or "~/.ray/auth_token")
    fix = ("Copy the token from the machine that ran `ray up` (its ~/.ray/auth_token) to "
           "~/.ray/auth_token here (chmod 600), or point RAY_AUTH_TOKEN_PATH at it, and "
           "export RAY_AUTH_MODE=token.")
    if metadata:
        raise PlanError(f"--address {address}: the Ray token on this machine ({where}) does "
                        f"not match the cluster's token, so the cluster refuses it. {fix}")
    raise PlanError(f"--address {address}: the cluster requires a Ray token and none is "
                    f"set here (RAY_AUTH_MODE is not 'token', or no token file). {fix}")


def check_optuna_storage(url: str | None) -> None:
    """A malformed or unreachable ``--optuna-storage`` URL, before the space is even loaded."""
    from marktune.tune.study import StorageError, StudyStorage

    if not url:
        return
    try:
        StudyStorage(url=url).check_reachable()
    except StorageError as err:
        raise PlanError(str(err)) from None


# ---------------------------------------------------------------- this machine
def check_local_precision(precisions: Sequence[str], *, address: str | None) -> None:
    """bf16 trials on this machine's CPUs need native bf16 (``marktune.mark.hardware``); refuse them
    before Ray starts. On a cluster the workers decide (a trial there refuses for itself)."""
    import torch

    from marktune.mark.hardware import check_precision

    if address or torch.cuda.is_available():
        return
    for precision in sorted(set(precisions)):
        check_precision(precision, "cpu")


def check_local_gpus(gpus_per_trial: float | None, *, address: str | None, num_gpus: float | None,
                     cpu_fallback: bool, cuda_available: Callable[[], bool] | None = None) -> None:
    """GPU trials on this machine's Ray need a GPU that CUDA can use: refuse them before Ray
    starts. Declared fake GPUs (``--num-gpus``) pass, and their trials then fail loudly unless
    ``--cpu-fallback``; on a cluster (``--address``) each trial checks for itself."""
    import torch

    if address or not gpus_per_trial or num_gpus is not None:
        return
    if not (cuda_available or torch.cuda.is_available)():
        from marktune.mark.devices import cuda_diagnosis

        raise PlanError(f"--gpus-per-trial {gpus_per_trial:g}: no GPU is visible to this machine's Ray "
                        f"({cuda_diagnosis()}). Use --gpus-per-trial 0 for CPU trials, or --address to "
                        "run on a cluster with GPUs" + ("" if cpu_fallback else
                        " (to test GPU packing with fake GPUs: --num-gpus N --cpu-fallback)"))


def check_gpu_memory_fraction(fraction: float | None) -> None:
    if fraction is not None and not 0.0 < fraction <= 1.0:
        raise PlanError(f"--gpu-memory-fraction must be in (0, 1] (got {fraction:g})")


def check_storage(storage: str, *, flag: str = "--storage") -> None:
    """A local storage directory must exist or be creatable, and be writable, before Ray starts
    (Tune would fail after its start-up with a pyarrow traceback)."""
    if "://" in storage:
        return
    path = Path(storage)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PlanError(f"{flag} {storage}: cannot create this directory ({err.strerror or err}); "
                        f"give a directory you can write to, e.g. {flag} ./results") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise PlanError(f"{flag} {storage}: this directory is not writable; give one you can "
                        f"write to, e.g. {flag} ./results")


def check_local_data(benchmark: str, *, address: str | None, data_dir: str | None, download: bool) -> None:
    """On this machine's Ray, a missing data set is an error before Ray starts, not N failed
    trials. A cluster's data lives on its workers (fetched there with --download), so
    ``--address`` skips the check; a trial without data then errors with the same message."""
    from marktune.data.benchmarks import DatasetMissingError, check_dataset

    if address:
        return
    try:
        check_dataset(benchmark, data_dir=data_dir, download=download)
    except DatasetMissingError as err:
        raise PlanError(str(err)) from None


# ---------------------------------------------------------------- pre-flight of each command
def check_search(plan: SearchPlan) -> None:
    """Every check on a search's input that can be made before Ray starts, cheapest first."""
    from marktune.tune.study import StorageError

    address = plan.ray.address
    check_address(address)
    try:
        plan.study_storage.check(study_name=plan.name, resume=plan.resume)
    except StorageError as err:
        raise PlanError(str(err)) from None
    check_local_data(plan.base_config.benchmark, address=address, data_dir=plan.runtime.data_dir,
                     download=plan.runtime.download)
    check_local_precision(plan.space.precisions(plan.overrides), address=address)
    check_local_gpus(plan.gpus_per_trial, address=address, num_gpus=plan.ray.num_gpus,
                     cpu_fallback=plan.runtime.cpu_fallback)
    check_gpu_memory_fraction(plan.runtime.gpu_memory_fraction)
    check_storage(plan.storage)  # last: it creates the directory


def check_evaluation(plan: EvalPlan) -> None:
    """Every check on an evaluation's input that can be made before Ray starts."""
    address = plan.ray.address
    for benchmark in sorted({c.config.benchmark for c in plan.configs}):
        check_local_data(benchmark, address=address, data_dir=plan.runtime.data_dir, download=plan.runtime.download)
    check_local_precision([c.config.precision for c in plan.configs], address=address)
    check_storage(plan.storage)
    check_local_gpus(plan.gpus_per_trial, address=address, num_gpus=plan.ray.num_gpus,
                     cpu_fallback=plan.runtime.cpu_fallback)


# ---------------------------------------------------------------- Ray and Tune
def start_ray(ray_settings: RaySettings, *, own_local: bool = False) -> None:
    """Connect to the cluster at ``ray_settings.address``, else start Ray on this machine.

    ``own_local``: never join a Ray that another program started here (``address="local"``).
    """
    import ray

    address = ray_settings.address
    check_address(address)
    kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": True}
    if address:
        kwargs["address"] = address
    else:
        kwargs.update(num_cpus=ray_settings.num_cpus, num_gpus=ray_settings.num_gpus, include_dashboard=False)
        if own_local:
            kwargs["address"] = "local"
    try:
        ray.init(**kwargs)
    except ConnectionError as err:
        raise PlanError(f"--address {address}: {err}") from None


def prepare_tune(*, cpus_per_trial: float, gpus_per_trial: float | None, runs: int,
                 max_concurrent: int | None = None) -> float:
    """Tune settings shared by the search and the evaluation; returns the GPUs per trial.

    ``gpus_per_trial=None`` means 0.25 where the cluster has GPUs, else 0. Call after
    ``ray.init`` and before building the Tuner (Tune reads these variables then).
    """
    import ray

    # Our TensorBoard callback replaces Tune's: one set of curves per trial, with HParams.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # one checkpoint per task is our design, not a problem worth a warning each time
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # The experiment state (what --resume restores) at most a second behind the trials; see
    # tune_setup.keep_every_checkpoint for why Tune's own "snapshot every num_to_keep checkpoints" is not used.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
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
