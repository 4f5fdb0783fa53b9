"""The search service: ``python -m marktune.search --space NAME``.

Ray Tune runs one trial per configuration (a whole MARK sequence, see
``runners/mark_sequence.py``); Optuna's TPE proposes configurations; ASHA stops weak
trials on the mean validation accuracy reported after every task. At the end: a table
of the best trials, ``best_config.yaml`` (runnable with ``python -m marktune.run --config``)
and ``trials.csv``; TensorBoard compares all trials.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from marktune.config import ConfigError, MarkConfig, parse_overrides
from marktune.metrics import METRIC, TIME_ATTR
from marktune.spaces import SearchSpace, SpaceError, available_spaces, load_space

DEFAULT_STORAGE = "results"


class SearchError(ValueError):
    """A flag or an environment problem found before any trial starts."""


# ---------------------------------------------------------------- the searcher
def make_searcher(*, num_tasks: int, seed: int | None):
    """Optuna TPE behind Tune, telling Optuna the truth about ASHA-stopped trials."""
    import optuna
    from optuna.trial import TrialState
    from ray.tune.search.optuna import OptunaSearch

    class MarkOptunaSearch(OptunaSearch):
        """OptunaSearch that reports trials ASHA stopped as PRUNED, not COMPLETE.

        Mean accuracy over tasks seen is not comparable across task counts: a trial
        stopped after 2 tasks must not teach TPE its 2-task mean as a final value.
        Intermediate values go in at step = tasks done; only trials that ran every
        task are told COMPLETE.
        """

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return
            value = result.get(self.metric)
            if value is not None and math.isfinite(value):
                self._ot_trials[trial_id].report(value, int(result[TIME_ATTR]))

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return
            ot_trial = self._ot_trials[trial_id]
            finished = bool(result) and int(result.get(TIME_ATTR, 0)) >= num_tasks
            value = result.get(self.metric) if result else None
            if result and TIME_ATTR in result:
                # Tune hands the last result (the one ASHA judged) only to this method
                self.on_trial_result(trial_id, result)
            if error:
                self._ot_study.tell(ot_trial, state=TrialState.FAIL)
            elif finished and value is not None and math.isfinite(value):
                self._ot_study.tell(ot_trial, value, state=TrialState.COMPLETE)
            else:  # stopped early: TPE sees it as pruned, with its intermediate values
                self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
            self._completed_trials.add(trial_id)

        @property
        def study(self) -> "optuna.Study":
            return self._ot_study

    sampler = optuna.samplers.TPESampler(seed=seed)
    return MarkOptunaSearch(metric=METRIC, mode="max", sampler=sampler)


# ---------------------------------------------------------------- progress
def make_progress_callback(num_tasks: int):
    from ray.tune import Callback

    class TaskProgress(Callback):
        """One line per finished task per trial, beside Ray's trial table."""

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if TIME_ATTR in result:
                print(f"[marktune] {trial.trial_id} task {result[TIME_ATTR]}/{num_tasks}: "
                      f"mean val acc {result[METRIC]:.4f}, mean test acc {result['mean_test_acc']:.4f}, "
                      f"BWT {result['bwt_test']:+.4f} ({result.get('task_seconds', 0):.1f} s, "
                      f"{result.get('device', '?')})", flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            print(f"[marktune] {trial.trial_id} failed: {_error_reason(trial)}", flush=True)

    return TaskProgress()


# ---------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m marktune.search",
        description="Search MARK's hyperparameters with Ray Tune, Optuna (TPE) and ASHA.",
        epilog="Examples:\n"
               "  python -m marktune.search --space fmnist                 # minutes on a laptop CPU\n"
               "  python -m marktune.search --space cifar100 --address auto --storage s3://bucket/marktune\n"
               "  python -m marktune.search --space fmnist --resume --name fmnist-20261123-190000\n"
               "Then: tensorboard --logdir <storage>/<name>",
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
    p.add_argument("--name", help="experiment name (default: <space>-<time>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the experiment --name in --storage with the space, --set, --samples, "
                        "--seed, --max-failures, --protocol and --tuning-tasks it started with")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler (trials use the space's seed)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a fixed learner setting for every trial (repeatable)")
    p.add_argument("--max-failures", type=int, default=2,
                   help="retries of a trial whose worker died (resumes from its last task; default 2)")
    p.add_argument("--data-dir", help="data directory on every node (default: $MARKTUNE_DATA or cache)")
    p.add_argument("--download", action="store_true", help="let trials download CIFAR-100/Fashion-MNIST")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    p.add_argument("--num-gpus", type=float, help="GPUs declared to the local Ray (default: detected)")
    p.add_argument("--top", type=int, default=5, help="rows of the best-trials table (default 5)")
    add_protocol_flags(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no Ray trial table")
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
    protocol: str = "full"
    tuning_tasks: int | None = None  # first-k only
    stream_tasks: int = 0  # tasks of the whole stream


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
    protocol, tuning_tasks = check_protocol(args, base)
    return SearchPlan(space=space, overrides=overrides, base_config=base, samples=samples,
                      max_concurrent=max_concurrent, cpus_per_trial=cpus, gpus_per_trial=gpus,
                      storage=storage, name=name, num_tasks=tuning_tasks or base.tasks,
                      protocol=protocol, tuning_tasks=tuning_tasks, stream_tasks=base.tasks)


# ---------------------------------------------------------------- tuning protocols (marktune.protocols)
def add_protocol_flags(p: argparse.ArgumentParser) -> None:
    from marktune.protocols import DEFAULT_TUNING_TASKS, PROTOCOLS

    p.add_argument("--protocol", choices=PROTOCOLS, default="full",
                   help="what trials are selected on: full = the whole stream (default); first-k = the "
                        "first --tuning-tasks tasks only, so evaluate can report tasks no selection saw; "
                        "other-order = this class order, so evaluate reports other orders only")
    p.add_argument("--tuning-tasks", type=int, metavar="K",
                   help=f"first-k: tasks each trial runs (ASHA's max_t; default {DEFAULT_TUNING_TASKS})")


def check_protocol(args: argparse.Namespace, base: MarkConfig) -> tuple[str, int | None]:
    """(protocol, k for first-k else None); a bad combination is a SearchError."""
    from marktune.protocols import DEFAULT_TUNING_TASKS

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
    """What marktune_search.json records about the protocol (read by marktune.protocols)."""
    from marktune.protocols import SearchProtocol

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


def check_local_data(benchmark: str, *, address: str | None, data_dir: str | None, download: bool) -> None:
    """On this machine's Ray, a missing data set is an error before Ray starts, not N failed
    trials. A cluster's data lives on its workers (fetched there with --download), so
    ``--address`` skips the check; a trial without data then errors with the same message."""
    from marktune.data import DatasetMissingError, check_dataset

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
SETTINGS_FILE = "marktune_search.json"
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
                "num_tasks": plan.num_tasks, "max_failures": args.max_failures, **protocol_settings(plan)}
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
    return args


# ---------------------------------------------------------------- running
def run_search(plan: SearchPlan, args: argparse.Namespace):
    """Build the Tuner (or restore it) and run it; returns Tune's ResultGrid."""
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.schedulers import ASHAScheduler

    from marktune.tensorboard_logger import MarkTensorBoardCallback
    from runners.mark_sequence import RUNTIME_KEY, train_mark_sequence

    gpus = prepare_tune(cpus_per_trial=plan.cpus_per_trial, gpus_per_trial=plan.gpus_per_trial,
                        runs=plan.samples, max_concurrent=plan.max_concurrent)
    resources = {"cpu": plan.cpus_per_trial, "gpu": gpus}
    threads = max(1, int(plan.cpus_per_trial)) if plan.cpus_per_trial else 1
    trainable = tune.with_resources(train_mark_sequence, resources)

    param_space = plan.space.param_space(plan.overrides)
    param_space[RUNTIME_KEY] = {"data_dir": args.data_dir, "download": args.download, "threads": threads}
    if plan.protocol == "first-k":  # trials run the first k tasks of the whole stream
        from marktune.protocols import STOP_AFTER_KEY

        param_space[RUNTIME_KEY][STOP_AFTER_KEY] = plan.tuning_tasks

    callbacks = [JsonLoggerCallback(), CSVLoggerCallback(),
                 MarkTensorBoardCallback(searched=list(plan.space.params), num_tasks=plan.num_tasks),
                 make_progress_callback(plan.num_tasks)]
    run_config = tune.RunConfig(
        name=plan.name, storage_path=plan.storage, callbacks=callbacks,
        failure_config=tune.FailureConfig(max_failures=args.max_failures),
        checkpoint_config=keep_every_checkpoint(),
        verbose=0 if args.quiet else 1,
    )
    experiment = f"{plan.storage.rstrip('/')}/{plan.name}"
    searcher = None
    if args.resume:
        # Trials the lost driver left RUNNING or PENDING continue from their last checkpoint
        # (resume_unfinished). Trials that ended in ERROR stay as they are: in a search an error
        # is a verdict on the configuration (a NaN loss, which would only fail again), or a
        # trial that already used up --max-failures retries; Optuna has been told FAIL for it
        # and ignores anything it reports later, and restarting it from scratch
        # (restart_errored) would run a configuration twice. The searcher's state (the Optuna
        # study, how many trials were sampled) comes back from the experiment, so the search
        # samples only the trials still missing.
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True,
                                   resume_errored=False, restart_errored=False, param_space=param_space)
    else:
        scheduler = ASHAScheduler(time_attr=TIME_ATTR, max_t=plan.num_tasks,
                                  grace_period=plan.space.defaults["grace_period"],
                                  reduction_factor=plan.space.defaults["reduction_factor"])
        searcher = make_searcher(num_tasks=plan.num_tasks, seed=args.seed)
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
    print(f"[marktune] compare trials: tensorboard --logdir {experiment}", flush=True)
    if not args.resume:
        save_settings(plan, args, experiment)
    results = tuner.fit()
    if searcher is None and "://" not in experiment:
        # resumed: Tune restored the searcher inside the Tuner; read its final state back
        searcher = make_searcher(num_tasks=plan.num_tasks, seed=args.seed)
        try:
            searcher.restore_from_dir(experiment)
        except RuntimeError:  # no searcher state was ever saved
            searcher = None
    return results, experiment, searcher


# While trials run, no checkpoint is deleted. With CheckpointConfig(num_to_keep=N), Tune deletes a
# trial's older checkpoint when it registers a new one and only then snapshots the experiment
# state: a driver killed in between leaves a state that points at a deleted checkpoint, and on
# --resume that trial fails ("Could not recover from checkpoint", seen in CI). Instead the state
# is snapshotted every second (TUNE_GLOBAL_CHECKPOINT_S, in prepare_tune), so a resumed trial
# may redo the tasks of its last second (deterministically, the same rows), and
# prune_checkpoints() removes the older checkpoints once the run is over.
def keep_every_checkpoint():
    from ray import tune

    return tune.CheckpointConfig(num_to_keep=None)


def prune_checkpoints(experiment: str) -> int:
    """Delete every trial's checkpoints but its newest; returns how many were deleted.

    Call only when no trial of the experiment runs (after ``Tuner.fit``): the experiment state
    Tune saved last points at each trial's newest checkpoint. Works on local paths and ``s3://``.
    """
    from pyarrow import fs as pafs

    filesystem, root = pafs.FileSystem.from_uri(experiment)
    deleted = 0
    for trial in filesystem.get_file_info(pafs.FileSelector(root, allow_not_found=True)):
        if trial.type != pafs.FileType.Directory or not trial.base_name.startswith("trial_"):
            continue
        checkpoints = sorted(info.path for info in filesystem.get_file_info(pafs.FileSelector(trial.path))
                             if info.type == pafs.FileType.Directory
                             and info.base_name.startswith("checkpoint_"))
        for path in checkpoints[:-1]:  # checkpoint_000000, _000001, ...: the last is the newest
            filesystem.delete_dir(path)
            deleted += 1
    return deleted


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
    # keep_every_checkpoint for why Tune's own "snapshot every num_to_keep checkpoints" is not used.
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


def _trial_name(trial) -> str:
    # short names: Tune's default packs every setting into the directory name
    return f"trial_{trial.trial_id}"


# ---------------------------------------------------------------- the end
@dataclass
class TrialRow:
    trial_id: str
    status: str  # COMPLETE, PRUNED, ERROR, RUNNING
    tasks_done: int
    val_acc: float
    test_acc: float
    bwt: float
    params: dict[str, Any]
    config: dict[str, Any]
    error: str = ""


def trial_rows(results, space: SearchSpace, num_tasks: int) -> list[TrialRow]:
    rows = []
    keys = set(MarkConfig.field_names())
    for result in results:
        metrics = result.metrics or {}
        tasks_done = int(metrics.get(TIME_ATTR, 0) or 0)
        config = {k: v for k, v in (result.config or {}).items() if k in keys}
        if result.error is not None:
            status = "ERROR"
        elif tasks_done >= num_tasks:
            status = "COMPLETE"
        else:
            status = "PRUNED"
        rows.append(TrialRow(
            trial_id=str(metrics.get("trial_id") or Path(result.path).name),
            status=status, tasks_done=tasks_done,
            val_acc=float(metrics.get(METRIC, math.nan)), test_acc=float(metrics.get("mean_test_acc", math.nan)),
            bwt=float(metrics.get("bwt_test", math.nan)),
            params={k: config.get(k) for k in space.params}, config=config,
            error=first_line(str(result.error)) if result.error is not None else ""))
    order = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "ERROR": 3}
    rows.sort(key=lambda r: (order.get(r.status, 9), -r.tasks_done,
                             -(r.val_acc if math.isfinite(r.val_acc) else -1)))
    return rows


def write_outputs(rows: list[TrialRow], out_dir: Path, space: SearchSpace) -> Path | None:
    """trials.csv (every trial) and best_config.yaml (best complete trial); returns the latter."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "trials.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial_id", "status", "tasks_done", "val_acc", "test_acc", "bwt", *space.params, "error"])
        for r in rows:
            writer.writerow([r.trial_id, r.status, r.tasks_done, _num(r.val_acc), _num(r.test_acc), _num(r.bwt),
                             *[r.params.get(k) for k in space.params], r.error])
    complete = [r for r in rows if r.status == "COMPLETE"]
    if not complete:
        return None
    best = max(complete, key=lambda r: r.val_acc)
    path = out_dir / "best_config.yaml"
    path.write_text(
        f"# Best of {len(complete)} complete trials by validation ACC (space {space.name}).\n"
        f"# Run it: python -m marktune.run --config {path}\n"
        + yaml.safe_dump({"trial_id": best.trial_id, "val_acc": best.val_acc, "test_acc": best.test_acc,
                          "bwt": best.bwt, "config": best.config}, sort_keys=False))
    return path


def format_table(rows: list[TrialRow], space: SearchSpace, top: int) -> str:
    params = list(space.params)
    head = ["trial", "status", "tasks", "val ACC", "test ACC", "BWT", *params]
    body = [[r.trial_id, r.status, str(r.tasks_done), _num(r.val_acc), _num(r.test_acc), _num(r.bwt, sign=True),
             *[_short(r.params.get(k)) for k in params]] for r in rows[:top]]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, body)])


def summarize(results, plan: SearchPlan, experiment: str, *, top: int) -> list[TrialRow]:
    rows = trial_rows(results, plan.space, plan.num_tasks)
    out_dir = Path(experiment) if "://" not in experiment else Path("results") / plan.name
    best = write_outputs(rows, out_dir, plan.space)
    counts = {s: sum(r.status == s for r in rows) for s in ("COMPLETE", "PRUNED", "ERROR")}
    print(f"\n[marktune] {len(rows)} trials: {counts['COMPLETE']} complete, {counts['PRUNED']} stopped by ASHA, "
          f"{counts['ERROR']} errored. Best trials (val ACC selects; test ACC is reported, never used):")
    print(format_table(rows, plan.space, top))
    for r in rows:
        if r.status == "ERROR":
            print(f"[marktune] {r.trial_id} errored: {r.error}")
    print(f"[marktune] trials.csv: {out_dir / 'trials.csv'}")
    if best:
        print(f"[marktune] best_config.yaml: {best}  (python -m marktune.run --config {best})")
    else:
        print("[marktune] no trial ran every task, so there is no best_config.yaml")
    print(f"[marktune] compare trials: tensorboard --logdir {experiment}")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args = apply_saved_settings(args, given_flags(argv))
        plan = plan_from_args(args)
        check_local_data(plan.base_config.benchmark, address=args.address, data_dir=args.data_dir,
                         download=args.download)
        start_ray(args)
    except (SpaceError, ConfigError, SearchError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    results, experiment, searcher = run_search(plan, args)
    prune_checkpoints(experiment)
    summarize(results, plan, experiment, top=args.top)
    if searcher is not None and "://" not in experiment:
        save_study(searcher, Path(experiment) / "optuna_study.pkl")
    return 0


def save_study(searcher, path: Path) -> None:
    """The Optuna study with every trial's state and intermediate values (for reports)."""
    import pickle

    with open(path, "wb") as f:
        pickle.dump(searcher.study, f)


def _error_reason(trial) -> str:
    try:
        return first_line(Path(trial.error_file).read_text()) if trial.error_file else "unknown error"
    except OSError:
        return "unknown error"


def first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    # the exception's own message is the last line of a traceback
    return lines[-1] if lines else ""


def _num(value: float, sign: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:+.4f}" if sign else f"{value:.4f}"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
