"""The search service: ``python -m marktune.search --space NAME``.

Ray Tune runs one trial per configuration (a whole MARK sequence, see
``marktune/tune/trainable.py``); Optuna's TPE proposes configurations; ASHA stops weak
trials on the mean validation accuracy reported after every task. At the end: a table
of the best trials, ``best_config.yaml`` (runnable with ``python -m marktune.run --config``)
and ``trials.csv``; TensorBoard compares all trials.

This module is the command line: its flags, the plan, the checks made before Ray starts,
starting Ray and the Tuner, and the end-of-run summary. What decides trials lives in
:mod:`marktune.tune.searcher` (Optuna searcher) and :mod:`marktune.tune.scheduler` (resumable ASHA), where the study lives in
:mod:`marktune.tune.study`, what is printed while trials run in :mod:`marktune.tune.progress`, and the
end-of-run rows and files in :mod:`marktune.results.summary`.
"""
from __future__ import annotations

import argparse
import math
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from marktune.mark.config import ConfigError, MarkConfig, parse_overrides
from marktune.mark.metrics import METRIC
from marktune.tune.spaces import SearchSpace, SpaceError, available_spaces, load_space
from marktune.tune.study import JOURNAL_FILE, StorageError, StudyStorage
from marktune.results.summary import TrialRow, format_table, trial_rows, unfinished, write_outputs
from marktune.tune.tune_setup import (keep_every_checkpoint, last_trial_states, prepare_tune, prune_checkpoints,
                                 quiet_ray_output)

DEFAULT_STORAGE = "results"


class SearchError(ValueError):
    """A flag or an environment problem found before any trial starts."""


# ---------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m marktune.search",
        description="Search MARK's hyperparameters with Ray Tune, Optuna (TPE) and ASHA.",
        epilog="Examples:\n"
               "  python -m marktune.search --space fmnist                 # minutes on a laptop CPU\n"
               "  python -m marktune.search --space cifar100 --address auto --storage s3://bucket/marktune\n"
               "  python -m marktune.search --space fmnist --resume --name fmnist-20261123-190000\n"
               "  python -m marktune.search --space fmnist --optuna-storage sqlite:///marktune.db\n"
               "Then: tensorboard --logdir <storage>/<name>; optuna-dashboard <storage>/<name>/optuna_journal.log",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", default="fmnist",
                   help=f"search space: one of {', '.join(available_spaces())}, or a path to a .yaml "
                        "(default: fmnist)")
    p.add_argument("--samples", type=int, help="trials to run (default: the space's)")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: as resources allow)")
    p.add_argument("--cpus-per-trial", type=float, help="CPUs per trial (default: the space's)")
    p.add_argument("--gpus-per-trial", type=float,
                   help="GPUs per trial; fractions such as 0.25 pack trials on one GPU "
                        "(default: 0.25 where the cluster has GPUs, else 0)")
    p.add_argument("--address", help="Ray cluster: 'auto', HOST:PORT or ray://HOST:10001 "
                                     "(default: start a local Ray)")
    p.add_argument("--storage", default=os.environ.get("MARKTUNE_STORAGE", DEFAULT_STORAGE),
                   help="where experiments live: a directory or s3://… (default: $MARKTUNE_STORAGE, else ./results)")
    p.add_argument("--name", help="experiment name, also the Optuna study's (default: <space>-<time>)")
    p.add_argument("--optuna-storage", metavar="URL",
                   help="the Optuna study's database, any SQLAlchemy URL: sqlite:///marktune.db on one machine, "
                        "postgresql://user@host/db or mysql://... on a cluster (default: a journal file "
                        f"<storage>/<name>/{JOURNAL_FILE})")
    p.add_argument("--resume", action="store_true",
                   help="continue the experiment --name in --storage with the space, --set, --samples, "
                        "--seed, --max-failures, --optuna-storage, --protocol and --tuning-tasks it started with")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler (trials use the space's seed)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a fixed learner setting for every trial (repeatable)")
    p.add_argument("--max-failures", type=int, default=2,
                   help="retries of a trial whose worker died (resumes from its last task; default 2)")
    p.add_argument("--data-dir", help="data directory on every node (default: $MARKTUNE_DATA or cache)")
    p.add_argument("--download", action="store_true", help="let trials download CIFAR-100/Fashion-MNIST")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    p.add_argument("--num-gpus", type=float, help="GPUs declared to the local Ray (default: detected)")
    p.add_argument("--gpu-memory-fraction", type=float,
                   help="cap each trial's GPU memory at this share of its GPU (default: its --gpus-per-trial)")
    p.add_argument("--cpu-fallback", action="store_true",
                   help="for fake GPUs (--num-gpus on a machine without CUDA, in tests): trials given a GPU "
                        "run on the CPU instead of failing")
    p.add_argument("--top", type=int, default=5, help="rows of the best-trials table (default 5)")
    add_protocol_flags(p)
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also Ray's trial tables (a box per trial start and result)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no status lines: only the per-task lines, errors and the summary")
    return p


@dataclass
class SearchPlan:
    """Everything decided before Ray starts."""

    space: SearchSpace
    overrides: dict[str, Any]
    base_config: MarkConfig
    samples: int
    max_concurrent: int | None
    cpus_per_trial: float
    gpus_per_trial: float | None
    storage: str
    name: str
    num_tasks: int  # tasks each trial runs (ASHA's max_t): the stream's, or k under first-k
    study_storage: StudyStorage  # where the Optuna study (named after the experiment) lives
    resume: bool = False
    protocol: str = "full"
    tuning_tasks: int | None = None  # first-k only
    stream_tasks: int = 0  # tasks of the whole stream

    @property
    def experiment(self) -> str:
        return f"{self.storage.rstrip('/')}/{self.name}"

    def local_dir(self) -> Path:
        return local_experiment_dir(self.storage, self.name)


def plan_from_args(args: argparse.Namespace) -> SearchPlan:
    """Validate the space and every flag; raise SpaceError/ConfigError/SearchError."""
    overrides = parse_overrides(args.overrides)
    space = load_space(args.space, overrides=overrides)
    base = space.default_trial_config(overrides)
    d = space.defaults
    samples = args.samples if args.samples is not None else d["samples"]
    if samples < 1:
        raise SearchError(f"--samples must be >= 1 (got {samples})")
    max_concurrent = args.max_concurrent if args.max_concurrent is not None else d["max_concurrent"]
    if max_concurrent is not None and max_concurrent < 1:
        raise SearchError(f"--max-concurrent must be >= 1 (got {max_concurrent})")
    cpus = args.cpus_per_trial if args.cpus_per_trial is not None else float(d["cpus_per_trial"])
    if cpus < 0 or not math.isfinite(cpus):
        raise SearchError(f"--cpus-per-trial must be >= 0 (got {cpus})")
    gpus = args.gpus_per_trial if args.gpus_per_trial is not None else d["gpus_per_trial"]
    if gpus is not None and (gpus < 0 or (gpus > 1 and not float(gpus).is_integer())):
        raise SearchError(f"--gpus-per-trial must be a fraction in [0, 1] or a whole number (got {gpus})")
    if args.max_failures < 0:
        raise SearchError(f"--max-failures must be >= 0 (got {args.max_failures})")
    if args.resume and not args.name:
        raise SearchError("--resume needs --name of the experiment to continue")
    storage = args.storage
    if "://" not in storage:
        storage = str(Path(storage).expanduser().resolve())
        if args.resume and not (Path(storage) / args.name).is_dir():
            raise SearchError(f"--resume: no experiment {args.name!r} in {storage}")
    name = args.name or f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    study_storage = StudyStorage.for_experiment(experiment_dir=local_experiment_dir(storage, name),
                                                url=getattr(args, "optuna_storage", None))
    protocol, tuning_tasks = check_protocol(args, base)
    return SearchPlan(space=space, overrides=overrides, base_config=base, samples=samples,
                      max_concurrent=max_concurrent, cpus_per_trial=cpus, gpus_per_trial=gpus,
                      storage=storage, name=name, num_tasks=tuning_tasks or base.tasks, study_storage=study_storage,
                      resume=bool(args.resume), protocol=protocol, tuning_tasks=tuning_tasks,
                      stream_tasks=base.tasks)


def local_experiment_dir(storage: str, name: str) -> Path:
    """The experiment directory, or ./results/<name> on this machine for an s3:// storage (its
    trials.csv, best_config.yaml and default Optuna journal live there)."""
    if "://" in storage:
        return Path(DEFAULT_STORAGE).resolve() / name
    return Path(storage) / name


# ---------------------------------------------------------------- tuning protocols (marktune.results.protocols)
def add_protocol_flags(p: argparse.ArgumentParser) -> None:
    from marktune.results.protocols import DEFAULT_TUNING_TASKS, PROTOCOLS

    p.add_argument("--protocol", choices=PROTOCOLS, default="full",
                   help="what trials are selected on: full = the whole stream (default); first-k = the "
                        "first --tuning-tasks tasks only, so evaluate can report tasks no selection saw; "
                        "other-order = this class order, so evaluate reports other orders only")
    p.add_argument("--tuning-tasks", type=int, metavar="K",
                   help=f"first-k: tasks each trial runs (ASHA's max_t; default {DEFAULT_TUNING_TASKS})")


def check_protocol(args: argparse.Namespace, base: MarkConfig) -> tuple[str, int | None]:
    """(protocol, k for first-k else None); a bad combination is a SearchError."""
    from marktune.results.protocols import DEFAULT_TUNING_TASKS

    protocol = getattr(args, "protocol", None) or "full"
    k = getattr(args, "tuning_tasks", None)
    if protocol != "first-k":
        if k is not None:
            raise SearchError(f"--tuning-tasks {k} needs --protocol first-k (got --protocol {protocol})")
        return protocol, None
    k = DEFAULT_TUNING_TASKS if k is None else k
    if not 1 <= k < base.tasks:
        raise SearchError(f"--tuning-tasks must be in 1..{base.tasks - 1} for a stream of {base.tasks} tasks "
                          f"(got {k}): first-k keeps at least one task the search never sees; "
                          "--protocol full searches on every task")
    return protocol, k


def protocol_settings(plan: SearchPlan) -> dict[str, Any]:
    """What marktune_search.json records about the protocol (read by marktune.results.protocols)."""
    from marktune.results.protocols import SearchProtocol

    return SearchProtocol(name=plan.protocol, tuning_tasks=plan.tuning_tasks, stream_tasks=plan.stream_tasks,
                          searched_data_seed=plan.base_config.split_seed,
                          searched_class_order=plan.base_config.class_order).to_settings()


def check_address(address: str | None, *, timeout: float = 5.0) -> None:
    """Fail within seconds when a cluster address cannot be reached (Ray itself may hang)."""
    if address in (None, "", "auto", "local"):
        return
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise SearchError(f"--address {address!r}: expected 'auto', HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as err:
        raise SearchError(f"--address {address}: cannot reach the Ray cluster ({err}). Is it up "
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
    from ray._private.authentication.grpc_authentication_client_interceptor import (
        _get_authentication_metadata_tuple)
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    metadata = _get_authentication_metadata_tuple()
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
        raise SearchError(f"--address {address}: the Ray token on this machine ({where}) does "
                          f"not match the cluster's token, so the cluster refuses it. {fix}")
    raise SearchError(f"--address {address}: the cluster requires a Ray token and none is "
                      f"set here (RAY_AUTH_MODE is not 'token', or no token file). {fix}")


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
                     cpu_fallback: bool, cuda_available: Any = None) -> None:
    """GPU trials on this machine's Ray need a GPU that CUDA can use: refuse them before Ray
    starts. Declared fake GPUs (``--num-gpus``) pass, and their trials then fail loudly unless
    ``--cpu-fallback``; on a cluster (``--address``) each trial checks for itself."""
    import torch

    if address or not gpus_per_trial or num_gpus is not None:
        return
    if not (cuda_available or torch.cuda.is_available)():
        from marktune.mark.devices import cuda_diagnosis

        raise SearchError(f"--gpus-per-trial {gpus_per_trial:g}: no GPU is visible to this machine's Ray "
                          f"({cuda_diagnosis()}). Use --gpus-per-trial 0 for CPU trials, or --address to "
                          "run on a cluster with GPUs" + ("" if cpu_fallback else
                          " (to test GPU packing with fake GPUs: --num-gpus N --cpu-fallback)"))


def gpu_runtime(args: argparse.Namespace) -> dict[str, Any]:
    """The trials' GPU runtime settings from the command line (``--cpu-fallback``, ``--gpu-memory-fraction``)."""
    fraction = getattr(args, "gpu_memory_fraction", None)
    if fraction is not None and not 0.0 < fraction <= 1.0:
        raise SearchError(f"--gpu-memory-fraction must be in (0, 1] (got {fraction:g})")
    return {"cpu_fallback": bool(getattr(args, "cpu_fallback", False)), "gpu_memory_fraction": fraction}


def check_storage(storage: str, *, flag: str = "--storage") -> None:
    """A local storage directory must exist or be creatable, and be writable, before Ray starts
    (Tune would fail after its start-up with a pyarrow traceback)."""
    if "://" in storage:
        return
    path = Path(storage)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SearchError(f"{flag} {storage}: cannot create this directory ({err.strerror or err}); "
                          f"give a directory you can write to, e.g. {flag} ./results") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise SearchError(f"{flag} {storage}: this directory is not writable; give one you can "
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
        raise SearchError(str(err)) from None


def start_ray(args: argparse.Namespace, *, own_local: bool = False) -> None:
    """Connect to ``--address``, else start Ray on this machine.

    ``own_local``: never join a Ray that another program started here (``address="local"``).
    """
    import ray

    check_address(args.address)
    kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": True}
    if args.address:
        kwargs["address"] = args.address
    else:
        kwargs.update(num_cpus=args.num_cpus, num_gpus=args.num_gpus, include_dashboard=False)
        if own_local:
            kwargs["address"] = "local"
    try:
        ray.init(**kwargs)
    except ConnectionError as err:
        raise SearchError(f"--address {args.address}: {err}") from None


# ---------------------------------------------------------------- resuming
from marktune.results.files import SETTINGS_FILE  # noqa: E402 - the one definition
# what a resumed search takes from the experiment unless given again (and then must match)
# (Tune restores the sampled-trial count, the searcher and the RunConfig's FailureConfig itself)
KEPT_ON_RESUME = ("space", "overrides", "samples", "seed", "max_failures", "protocol", "tuning_tasks")


def save_settings(plan: SearchPlan, args: argparse.Namespace, experiment: str) -> None:
    """The settings a search started with, so ``--resume --name X`` needs nothing else."""
    import json

    from pyarrow import fs as pafs

    space = args.space
    if str(space).endswith((".yaml", ".yml")) or "/" in str(space):
        space = str(Path(plan.space.path).resolve())
    settings = {"space": space, "overrides": list(args.overrides), "samples": plan.samples, "seed": args.seed,
                "num_tasks": plan.num_tasks, "max_failures": args.max_failures,
                # the study: None = the journal file in the experiment directory; a URL's password is
                # not written here (a resumed search then needs --optuna-storage again)
                "optuna_storage": plan.study_storage.describe() if plan.study_storage.url else None,
                "study_name": plan.name, **protocol_settings(plan)}
    filesystem, path = pafs.FileSystem.from_uri(experiment)
    filesystem.create_dir(path, recursive=True)
    with filesystem.open_output_stream(f"{path}/{SETTINGS_FILE}") as f:
        f.write(json.dumps(settings, indent=1).encode())


def load_settings(storage: str, name: str) -> dict[str, Any] | None:
    import json

    from pyarrow import fs as pafs

    if "://" not in storage:
        storage = str(Path(storage).expanduser().resolve())
    try:
        filesystem, path = pafs.FileSystem.from_uri(f"{storage.rstrip('/')}/{name}")
        with filesystem.open_input_stream(f"{path}/{SETTINGS_FILE}") as f:
            return json.loads(f.readall())
    except (OSError, ValueError):
        return None


def given_flags(argv: Sequence[str] | None) -> set[str]:
    """The destinations of the flags actually on the command line."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def apply_saved_settings(args: argparse.Namespace, given: set[str]) -> argparse.Namespace:
    """On --resume, take the space, --set, --samples, --seed and --max-failures the experiment
    started with.

    Tune restores the number of trials, the searcher and the failure settings from the
    experiment anyway, so a different value on resume would be silently ignored: refuse it.
    """
    if not args.resume or not args.name:
        return args
    saved = load_settings(args.storage, args.name)
    if saved is None:
        return args
    for key in KEPT_ON_RESUME:
        if key not in saved:
            continue
        if key not in given:
            setattr(args, key, saved[key])
            continue
        mine = getattr(args, key)
        if key == "space" and (str(mine).endswith((".yaml", ".yml")) or "/" in str(mine)):
            mine = str(Path(mine).resolve())
        if mine != saved[key]:
            flag = "--set" if key == "overrides" else f"--{key.replace('_', '-')}"
            raise SearchError(f"--resume: experiment {args.name!r} was started with {flag} {saved[key]!r}, "
                              f"not {getattr(args, key)!r}; a resumed search keeps its space, --set, "
                              "--samples, --seed, --max-failures, --protocol and --tuning-tasks (leave the flag out)")
    _resume_study_storage(args, saved.get("optuna_storage"), given="optuna_storage" in given)
    return args


def _resume_study_storage(args: argparse.Namespace, saved: str | None, *, given: bool) -> None:
    """The study's storage on --resume: the one the search started with."""
    from marktune.tune.study import hide_password

    if not given:
        if saved and "***" in saved:
            raise SearchError(f"--resume: experiment {args.name!r} keeps its Optuna study in {saved}; give "
                              "--optuna-storage again with the password (it is not written to the experiment)")
        args.optuna_storage = saved
        return
    if hide_password(args.optuna_storage) != (saved or None):
        raise SearchError(f"--resume: experiment {args.name!r} keeps its Optuna study in "
                          f"{saved or 'the journal file in its directory'}, not {hide_password(args.optuna_storage)}; "
                          "leave --optuna-storage out (or give that one)")


# ---------------------------------------------------------------- running
@dataclass
class SearchRun:
    """What ``run_search`` leaves: Tune's results, the study, and how each trial ended."""

    results: Any  # Tune's ResultGrid
    experiment: str
    study: Any  # optuna.Study, read back from its storage
    states: dict[str, dict]  # trial id -> its status and config in the last experiment state Tune saved

    def interrupted(self, trial_id: str) -> bool:
        """Whether the search stopped (Ctrl-C) while this trial ran or waited."""
        return self.states.get(trial_id, {}).get("status") in ("RUNNING", "PAUSED", "PENDING")

    def configs(self) -> dict[str, dict]:
        """Every trial's config, also of trials that never reported (their results have none)."""
        return {tid: state["config"] for tid, state in self.states.items()}


def run_search(plan: SearchPlan, args: argparse.Namespace) -> SearchRun:
    """Build the Tuner (or restore it) and run it until every trial ended or Ctrl-C."""
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from marktune.tune.progress import SearchProgress
    from marktune.tune.scheduler import make_scheduler
    from marktune.tune.searcher import make_searcher
    from marktune.tune.study import open_study
    from marktune.tune.tensorboard_logger import MarkTensorBoardCallback
    from marktune.tune.trainable import RUNTIME_KEY, train_mark_sequence

    gpus = prepare_tune(cpus_per_trial=plan.cpus_per_trial, gpus_per_trial=plan.gpus_per_trial,
                        runs=plan.samples, max_concurrent=plan.max_concurrent)
    resources = {"cpu": plan.cpus_per_trial, "gpu": gpus}
    threads = max(1, int(plan.cpus_per_trial)) if plan.cpus_per_trial else 1
    trainable = tune.with_resources(train_mark_sequence, resources)

    param_space = plan.space.param_space(plan.overrides)
    param_space[RUNTIME_KEY] = {"data_dir": args.data_dir, "download": args.download, "threads": threads,
                                **gpu_runtime(args)}
    if plan.protocol == "first-k":  # trials run the first k tasks of the whole stream
        from marktune.results.protocols import STOP_AFTER_KEY

        param_space[RUNTIME_KEY][STOP_AFTER_KEY] = plan.tuning_tasks

    progress = SearchProgress(total=plan.samples, num_tasks=plan.num_tasks, status_lines=not args.quiet)
    callbacks = [JsonLoggerCallback(), CSVLoggerCallback(),
                 MarkTensorBoardCallback(searched=list(plan.space.params), num_tasks=plan.num_tasks),
                 progress]
    run_config = tune.RunConfig(
        name=plan.name, storage_path=plan.storage, callbacks=callbacks,
        failure_config=tune.FailureConfig(max_failures=args.max_failures),
        checkpoint_config=keep_every_checkpoint(),
        # Ray's trial tables only when asked for (see quiet_ray_output)
        verbose=1 if args.verbose else 0,
    )
    quiet_ray_output(verbose=args.verbose)
    experiment = plan.experiment
    if args.resume:
        # Trials the lost driver left RUNNING or PENDING continue from their last checkpoint
        # (resume_unfinished). Trials that ended in ERROR stay as they are: in a search an error
        # is a verdict on the configuration (a NaN loss, which would only fail again), or a
        # trial that already used up --max-failures retries; Optuna has been told FAIL for it
        # and ignores anything it reports later, and restarting it from scratch
        # (restart_errored) would run a configuration twice. The searcher comes back from the
        # experiment and reopens the study in its storage (how many trials were sampled, and
        # Optuna's trial for each); ASHA refills its rungs from every trial's results
        # (marktune.tune.scheduler.ResumableASHA). The callbacks, the progress printer among them,
        # come back from the experiment too.
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True,
                                   resume_errored=False, restart_errored=False, param_space=param_space)
    else:
        scheduler = make_scheduler(num_tasks=plan.num_tasks, grace_period=plan.space.defaults["grace_period"],
                                   reduction_factor=plan.space.defaults["reduction_factor"])
        searcher = make_searcher(storage=plan.study_storage, study_name=plan.name, num_tasks=plan.num_tasks,
                                 seed=args.seed)
        tuner = tune.Tuner(
            trainable, param_space=param_space, run_config=run_config,
            tune_config=tune.TuneConfig(metric=METRIC, mode="max", num_samples=plan.samples,
                                        search_alg=searcher,
                                        scheduler=scheduler,
                                        max_concurrent_trials=plan.max_concurrent,
                                        trial_name_creator=_trial_name, trial_dirname_creator=_trial_name))
    print(f"[marktune] experiment {experiment}: {plan.samples} trials of {plan.space.name} "
          f"({plan.num_tasks} tasks each), {resources['cpu']:g} CPU + {gpus:g} GPU per trial")
    if plan.protocol != "full":
        print(f"[marktune] protocol {plan.protocol}: "
              + (f"trials run tasks 1-{plan.tuning_tasks} of {plan.stream_tasks}; tasks "
                 f"{plan.tuning_tasks + 1}-{plan.stream_tasks} stay unseen for marktune.evaluate"
                 if plan.protocol == "first-k" else
                 f"trials run the class order of data_seed {plan.base_config.split_seed}; "
                 "marktune.evaluate will use other orders only"))
    print(f"[marktune] compare trials: tensorboard --logdir {experiment}")
    print(f"[marktune] watch the study: optuna-dashboard {plan.study_storage.describe()}", flush=True)
    if not args.resume:
        save_settings(plan, args, experiment)
    results = tuner.fit()
    try:
        study = open_study(plan.study_storage, plan.name)
    except KeyError:  # interrupted before the searcher created it
        study = None
    return SearchRun(results=results, experiment=experiment, study=study,
                     states=last_trial_states(experiment))


def _trial_name(trial) -> str:
    # short names: Tune's default packs every setting into the directory name
    return f"trial_{trial.trial_id}"


# ---------------------------------------------------------------- the end
def summarize(run: SearchRun, plan: SearchPlan, *, top: int) -> list[TrialRow]:
    """Print the best-trials table (and, after Ctrl-C, how to continue); write trials.csv and
    best_config.yaml next to the experiment."""
    searched = list(plan.space.params)
    rows = trial_rows(run.results, searched=searched, num_tasks=plan.num_tasks, interrupted=run.interrupted,
                      configs=run.configs())
    out_dir = plan.local_dir()
    best = write_outputs(rows, out_dir, searched=searched, space_name=plan.space.name)
    counts = {s: sum(r.status == s for r in rows) for s in ("COMPLETE", "PRUNED", "ERROR", "RUNNING", "PENDING")}
    left = unfinished(rows) + max(0, plan.samples - len(rows))
    line = (f"\n[marktune] {len(rows)} trials: {counts['COMPLETE']} complete, {counts['PRUNED']} stopped by ASHA, "
            f"{counts['ERROR']} errored")
    if left:
        line += (f", {counts['RUNNING']} unfinished, {counts['PENDING'] + max(0, plan.samples - len(rows))} "
                 "not started")
    print(line + ". Best trials (val ACC selects; test ACC is reported, never used):")
    print(format_table(rows, searched, top))
    for r in rows:
        if r.status == "ERROR":
            print(f"[marktune] {r.trial_id} errored: {r.error}")
    print(f"[marktune] trials.csv: {out_dir / 'trials.csv'}")
    if best:
        print(f"[marktune] best_config.yaml: {best}  (python -m marktune.run --config {best})")
    else:
        print("[marktune] no trial ran every task, so there is no best_config.yaml")
    print(f"[marktune] compare trials: tensorboard --logdir {run.experiment}")
    print(f"[marktune] the Optuna study {plan.name!r}: optuna-dashboard {plan.study_storage.describe()}")
    if left:
        print(f"[marktune] interrupted: {left} of {plan.samples} trials unfinished; continue with "
              f"`{resume_command(plan)}`")
    return rows


def resume_command(plan: SearchPlan) -> str:
    cmd = f"python -m marktune.search --resume --name {plan.name} --storage {plan.storage}"
    if plan.study_storage.url:
        cmd += f" --optuna-storage {plan.study_storage.describe()}"
    return cmd


def check_flags_early(args: argparse.Namespace) -> None:
    """Checks of flags on their own, before the space is even loaded (which imports torch): a
    mistyped or unreachable address or database is an error within seconds."""
    check_address(args.address)
    if args.optuna_storage:
        try:
            StudyStorage(url=args.optuna_storage).check_reachable()
        except StorageError as err:
            raise SearchError(str(err)) from None


def check_before_ray(plan: SearchPlan, args: argparse.Namespace) -> None:
    """Every check on the input that can be made before Ray starts, cheapest first (each takes
    seconds at most): the cluster address, the Optuna storage, the data set (which imports torch),
    bf16 and GPUs on this machine, the storage directory."""
    check_address(args.address)
    try:
        plan.study_storage.check(study_name=plan.name, resume=plan.resume)
    except StorageError as err:
        raise SearchError(str(err)) from None
    check_local_data(plan.base_config.benchmark, address=args.address, data_dir=args.data_dir,
                     download=args.download)
    check_local_precision(plan.space.precisions(plan.overrides), address=args.address)
    check_local_gpus(plan.gpus_per_trial, address=args.address, num_gpus=args.num_gpus,
                     cpu_fallback=args.cpu_fallback)
    gpu_runtime(args)
    check_storage(plan.storage)  # last: it creates the directory


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 when every trial ended, 130 when the search was interrupted (Ctrl-C;
    continue it with --resume), 2 for bad input."""
    args = build_parser().parse_args(argv)
    try:
        args = apply_saved_settings(args, given_flags(argv))
        check_flags_early(args)
        plan = plan_from_args(args)
        check_before_ray(plan, args)
        start_ray(args)
    except (SpaceError, ConfigError, SearchError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    run = run_search(plan, args)
    if not any(run.interrupted(tid) for tid in run.states):
        # after Ctrl-C a trial's newest checkpoint may be newer than the one the saved state
        # names (written, not yet registered): keep them all until the resumed run ends
        prune_checkpoints(run.experiment)
    rows = summarize(run, plan, top=args.top)
    return 130 if unfinished(rows) or len(rows) < plan.samples else 0


if __name__ == "__main__":
    sys.exit(main())
