"""The checks of one input each, made before Ray starts: the cluster, this machine, the storage, the data.

Each takes what it checks and raises :class:`~marktune.tune.plan.PlanError` with what to do,
within seconds; :mod:`marktune.tune.runs.launch` runs them for each command, cheapest first.
"""
from __future__ import annotations

import math
import os
import socket
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from marktune.results.files import is_remote
from marktune.tune.plan import PlanError, RaySettings


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
    from marktune.tune.folders.study import StorageError, StudyStorage

    if not url:
        return
    try:
        StudyStorage(url=url).check_reachable()
    except StorageError as err:
        raise PlanError(str(err)) from None


def is_local(address: str | None) -> bool:
    return address in (None, "", "local")


def check_ray_flags(ray_settings: RaySettings) -> None:
    """--num-cpus/--num-gpus size the Ray a command starts here; a cluster has its own."""
    if ray_settings.num_cpus is not None and ray_settings.num_cpus < 1:
        raise PlanError(f"--num-cpus must be >= 1 (got {ray_settings.num_cpus})")
    if is_local(ray_settings.address):
        return
    given = [flag for flag, value in (("--num-cpus", ray_settings.num_cpus), ("--num-gpus", ray_settings.num_gpus))
             if value is not None]
    if given:
        raise PlanError(f"{' and '.join(given)} size the Ray this command starts on this machine; with --address "
                        f"{ray_settings.address} the cluster's own nodes count: leave {' and '.join(given)} out "
                        "(or leave out --address to run on this machine)")


# ---------------------------------------------------------------- this machine
def machine_cpus() -> int:
    """CPUs this process may use: its CPU affinity, within a cgroup's CPU quota (containers)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return cpus


def check_local_resources(ray_settings: RaySettings, *, cpus_per_trial: float | None,
                          gpus_per_trial: float | None, unit: str = "trial",
                          gpu_count: Callable[[], int] | None = None) -> None:
    """A trial that asks for more CPUs or GPUs than this machine's Ray will have would wait
    forever: refuse it before Ray starts. A cluster (``--address``) is checked once joined
    (:func:`check_cluster_resources`)."""
    if not is_local(ray_settings.address):
        return
    cpus = ray_settings.num_cpus if ray_settings.num_cpus is not None else machine_cpus()
    where = f"--num-cpus {cpus}" if ray_settings.num_cpus is not None else f"this machine has {cpus}"
    if cpus_per_trial is not None and cpus_per_trial > cpus:
        raise PlanError(f"--cpus-per-trial {cpus_per_trial:g}: more CPUs than this machine's Ray has ({where}), "
                        f"so no {unit} could ever start; give --cpus-per-trial {cpus} or less"
                        + (f", or --num-cpus {math.ceil(cpus_per_trial)} or more (this machine has {machine_cpus()})"
                           if ray_settings.num_cpus is not None and machine_cpus() >= cpus_per_trial else ""))
    if gpus_per_trial:
        if ray_settings.num_gpus is not None:
            gpus, where = ray_settings.num_gpus, f"--num-gpus {ray_settings.num_gpus:g}"
        else:
            if gpu_count is None:
                import torch

                gpu_count = torch.cuda.device_count
            gpus = gpu_count()
            where = f"this machine has {gpus}"
        if gpus and gpus_per_trial > gpus:
            raise PlanError(f"--gpus-per-trial {gpus_per_trial:g}: more GPUs than this machine's Ray has ({where}), "
                            f"so no {unit} could ever start; give --gpus-per-trial {gpus:g} or less")


def check_cluster_resources(*, cpus_per_trial: float | None, gpus_per_trial: float | None,
                            address: str | None, unit: str = "trial") -> None:
    """After joining (or starting) Ray, before any Tuner: refuse a trial no node can hold.

    A node that an autoscaling cluster can add counts too (its node types, as the autoscaler
    reports them to Ray); where the cluster autoscales and its node types are not known here,
    nothing is refused (a note says so)."""
    import ray

    from marktune.tune.ray_internals import autoscaler_node_types

    try:
        nodes = [dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")]
    except Exception as err:  # noqa: BLE001 - e.g. a Ray Client that cannot list nodes: Tune's own warning remains
        print(f"[marktune] note: cannot list the cluster's nodes ({type(err).__name__}), so a trial's resources "
              "are not checked against them", flush=True)
        return
    types = autoscaler_node_types()
    if types is None and not is_local(address) and Path("~/ray_bootstrap_config.yaml").expanduser().exists():
        print("[marktune] note: this cluster autoscales, and its node types are not known here: a trial's "
              "resources are not checked against them", flush=True)
        return
    shapes = nodes + (types or [])
    where = "this machine's Ray" if is_local(address) else f"the cluster at --address {address}"
    for flag, key, asked in (("--cpus-per-trial", "CPU", cpus_per_trial), ("--gpus-per-trial", "GPU", gpus_per_trial)):
        if not asked:
            continue
        largest = max((float(s.get(key, 0)) for s in shapes), default=0.0)
        if asked > largest:
            grown = " (also among the nodes its autoscaler can add)" if types else ""
            raise PlanError(f"{flag} {asked:g}: no node of {where} has that many {key}s (the largest has "
                            f"{largest:g}{grown}; see `ray status`), so no {unit} could ever start; give "
                            f"{flag} {largest:g} or less" + ("" if largest else f", or a cluster with {key}s"))


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
    starts. Declared fake GPUs (``--num-gpus``) pass with ``--cpu-fallback`` (their trials run on
    the CPU) and are refused without it; on a cluster (``--address``) each trial checks for itself."""
    import torch

    if address or not gpus_per_trial or (num_gpus is not None and cpu_fallback):
        return
    if num_gpus is not None and not (cuda_available or torch.cuda.is_available)():
        raise PlanError(f"--num-gpus {num_gpus:g} declares GPUs this machine does not have (no CUDA device), so "
                        f"every trial with --gpus-per-trial {gpus_per_trial:g} would fail on its first tensor; add "
                        "--cpu-fallback to test GPU packing on the CPU, or use --gpus-per-trial 0")
    if num_gpus is None and not (cuda_available or torch.cuda.is_available)():
        from marktune.mark.devices import cuda_diagnosis

        raise PlanError(f"--gpus-per-trial {gpus_per_trial:g}: no GPU is visible to this machine's Ray "
                        f"({cuda_diagnosis()}). Use --gpus-per-trial 0 for CPU trials, or --address to "
                        "run on a cluster with GPUs" + ("" if cpu_fallback else
                        " (to test GPU packing with fake GPUs: --num-gpus N --cpu-fallback)"))


def check_gpu_memory_fraction(fraction: float | None) -> None:
    if fraction is not None and not 0.0 < fraction <= 1.0:
        raise PlanError(f"--gpu-memory-fraction must be in (0, 1] (got {fraction:g})")


# Run in a child process, so that a store that does not answer cannot hold the command: pyarrow's
# S3 client retries a dead network for minutes, in C++ that a Python thread cannot interrupt.
_REMOTE_PROBE = """
import sys, uuid
from pyarrow import fs
filesystem, root = fs.FileSystem.from_uri(sys.argv[1])
probe = root.rstrip("/") + "/.marktune-write-probe-" + uuid.uuid4().hex
with filesystem.open_output_stream(probe) as f:
    f.write(b"marktune")
filesystem.delete_file(probe)
"""


def check_remote_storage(storage: str, *, flag: str = "--storage", timeout: float = 20.0) -> None:
    """A storage URL (``s3://``, ``gs://``, ...) must be reachable and writable before Ray starts:
    a small file is written there and deleted, through pyarrow (what Tune writes with), within
    ``timeout`` seconds. Without it, a store out of reach failed the search after Ray's start-up
    with a 32-line traceback (``AWS Error NETWORK_CONNECTION during HeadBucket``)."""
    import subprocess
    import sys

    try:
        done = subprocess.run([sys.executable, "-c", _REMOTE_PROBE, storage], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise PlanError(f"{flag} {storage}: no answer from this storage within {timeout:g} s (no network, or "
                        "the endpoint is wrong?); check the URL and your credentials, or give a local "
                        f"directory, e.g. {flag} ./results") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit {done.returncode}"
        raise PlanError(f"{flag} {storage}: cannot write there ({reason}); check the URL, the bucket and "
                        f"your credentials, or give a local directory, e.g. {flag} ./results")


def check_storage(storage: str, *, flag: str = "--storage") -> None:
    """A local storage directory must exist or be creatable, and be writable, before Ray starts
    (Tune would fail after its start-up with a pyarrow traceback); a URL must take a write
    (:func:`check_remote_storage`)."""
    if is_remote(storage):
        check_remote_storage(storage, flag=flag)
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
