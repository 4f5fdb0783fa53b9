"""What runs inside one Ray Tune trial actor: a whole MARK sequence, reported task by task.

The search's trials and the evaluation's re-runs are both :func:`train_mark_sequence`.

After every task the trial reports (``tune.report``) the tasks done, the mean
*validation* accuracy over tasks seen (the search metric), the mean test accuracy
(recorded, never used to select), BWT so far, the rows of both accuracy matrices
and a checkpoint of the learner, so a restarted trial resumes at its next task
(``tune.get_checkpoint()``: after a lost worker node, Tune retries the trial on another
node with its last checkpoint; after a lost driver, ``--resume`` does the same). The
learner seeds every task from the run's seed and the task index, so a task run again
gives the same rows; ``resumed_at_task`` records where each attempt started.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from marktune.mark.metrics import TIME_ATTR
from marktune.results.files import CHECKPOINT_TASKS_FILE
from runners.runtime import RUNTIME_KEY, TrialRuntime  # the trial config's non-learner settings

STATE_FILE = "learner.pt"


def trial_device(*, cpu_fallback: bool = False) -> torch.device:
    """The GPU Ray assigned to this trial, the CPU for a CPU trial (``marktune.mark.devices.choose_device``).

    A trial given a GPU that CUDA cannot use fails at once (``GpuUnusableError``), unless
    ``cpu_fallback`` (the search's ``--cpu-fallback``, for fake GPUs in tests) says otherwise.
    """
    import ray

    from marktune.mark.devices import choose_device

    return choose_device(gpu_ids=ray.get_gpu_ids(), cpu_fallback=cpu_fallback)


def trial_gpu_fraction(runtime: TrialRuntime) -> float | None:
    """The share of its GPU this trial may allocate: ``--gpu-memory-fraction``, else what Ray gave it."""
    if runtime.gpu_memory_fraction is not None:
        return runtime.gpu_memory_fraction
    import ray

    gpus = ray.get_runtime_context().get_assigned_resources().get("GPU")
    return float(gpus) if gpus else None


def drop_ignored_exits() -> None:
    """Silence the "Exception ignored in ..." traceback of a SystemExit nobody can raise.

    Ray ends a stopped trial's worker with SIGTERM, and its handler raises SystemExit. When the
    signal lands in a weakref callback or a finaliser, Python cannot raise it there: it prints
    the traceback (which reaches the search's quiet output) and goes on, and Ray kills the
    process afterwards. Only the print goes; every other unraisable exception is still shown.
    """
    previous = sys.unraisablehook
    if getattr(previous, "drops_exits", False):  # once per process (Tune may reuse an actor)
        return

    def hook(unraisable) -> None:
        if not isinstance(unraisable.exc_value, SystemExit):
            previous(unraisable)
    hook.drops_exits = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def release_previous_trial() -> None:
    """In a reused actor (``--reuse-actors``), free what the trial before this one left behind:
    its learner is garbage once its thread ended, and the GPU blocks torch cached for it go back
    to the device, where other trials packed on the same GPU can use them."""
    import gc

    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def transient_error_types() -> tuple[type[BaseException], ...]:
    """Errors a trial may not meet again on a retry: I/O and the network (a checkpoint's upload,
    a download), memory (other trials share the GPU or node), a node whose GPU is unusable (the
    retry may land elsewhere). A lost worker or node (``RayActorError``) is not raised by the
    trial itself and Tune always retries it."""
    from marktune.mark.devices import GpuUnusableError, TrialOutOfMemoryError

    return (OSError, MemoryError, torch.OutOfMemoryError, TrialOutOfMemoryError, GpuUnusableError)


def is_permanent_error(exc: BaseException | None) -> bool:
    """Whether a trial's error is a verdict on the trial, never to be retried (the trial
    fails once): any exception its own code raised (a ``ConfigError``, a NaN loss, a missing
    data set, a bug) except the :func:`transient_error_types`. Tune's own errors and a lost
    worker (``RayActorError``) are transient: Tune retries them up to ``--max-failures``.
    Tune calls it with the error it caught: a ``RayTaskError`` whose ``cause`` is what the
    trial raised."""
    from ray.exceptions import RayActorError, RayTaskError

    from marktune.data.benchmarks import DatasetMissingError

    if not isinstance(exc, RayTaskError) or isinstance(exc, RayActorError):
        return False
    cause = getattr(exc, "cause", None)
    for _ in range(5):  # through a wrapper Ray may add around the trial's own exception
        if isinstance(cause, RayTaskError) and getattr(cause, "cause", None) is not None:
            cause = cause.cause
        else:
            break
    if cause is None or isinstance(cause, RayActorError):
        return False
    if isinstance(cause, DatasetMissingError):  # an OSError, but the data set is not there: a retry finds none
        return True
    return not isinstance(cause, transient_error_types())


def train_mark_sequence(config: dict[str, Any]) -> None:
    """Tune function trainable: ``config`` holds learner settings plus the :class:`TrialRuntime`
    under ``RUNTIME_KEY``."""
    from ray import tune

    from marktune.mark.config import MarkConfig
    from marktune.data.benchmarks import load_benchmark_for
    from marktune.mark.devices import TrialOutOfMemoryError, cap_gpu_memory, out_of_memory_message
    from marktune.mark.hardware import check_precision
    from marktune.mark.learner import MarkLearner
    from marktune.results.pareto import parameter_counts, total_parameters
    from marktune.results.records import task_scalars

    # Tune logs every checkpoint it persists; with one per task per trial that line drowns the
    # driver's own progress lines, which already say when a task is done.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    drop_ignored_exits()
    release_previous_trial()
    runtime = TrialRuntime.from_dict(config.get(RUNTIME_KEY))
    mark_config = MarkConfig.from_dict(MarkConfig.settings_of(config))
    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    device = trial_device(cpu_fallback=runtime.cpu_fallback)
    memory_fraction = cap_gpu_memory(device, trial_gpu_fraction(runtime))  # before anything is built
    check_precision(mark_config.precision, device)  # bf16 on a CPU without it: refuse, don't crawl
    benchmark = load_benchmark_for(mark_config, data_dir=runtime.data_dir, download=runtime.download)
    # quiet learner: the driver prints one line per finished task (marktune.tune.display.progress)
    learner = MarkLearner(mark_config, benchmark, device=device, verbose=0)

    # the objectives a multi-objective search may rank on (marktune.results.objectives): the size is a
    # function of the settings, known before training; the seconds add up over the whole sequence
    kb_params, task_params = parameter_counts(mark_config)
    sequence_seconds = 0.0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as path:
            learner.load(Path(path) / STATE_FILE)
            held = json.loads((Path(path) / CHECKPOINT_TASKS_FILE).read_text())
            sequence_seconds = float(held.get("sequence_seconds", 0.0))
    # where this attempt started: 0, or the tasks of the checkpoint it resumed from (after a
    # lost node, a lost driver or a pause); reported so a recomputed task would show
    resumed_at = learner.tasks_done

    node = os.environ.get("RAY_NODE_ID") or _node_id()
    node_ip = _node_ip()  # the address other nodes reach it at: hostnames repeat across containers
    # first-k protocol (marktune.results.protocols): the first k tasks of the whole stream, then stop
    run_tasks = min(learner.num_tasks, runtime.stop_after_tasks or learner.num_tasks)
    while learner.tasks_done < run_tasks:
        started = time.time()
        try:
            report = learner.train_next_task()
        except torch.OutOfMemoryError as err:
            raise TrialOutOfMemoryError(out_of_memory_message(
                trial_settings=mark_config.to_dict(), fraction=memory_fraction, device=device, error=err)) from None
        val, test = learner.matrices()
        sequence_seconds += time.time() - started
        metrics = {
            TIME_ATTR: report.task + 1,
            "num_tasks": run_tasks,  # what this trial runs (the search's finish line)
            "stream_tasks": learner.num_tasks,  # the stream it is cut from
            **task_scalars(report),
            "val_row": list(report.val_row),
            "val_counts": list(report.val_counts),  # val_row's denominators (marktune.results.noise)
            "test_row": list(report.test_row),
            "device": str(device),
            "precision": mark_config.precision,  # fp32 or bf16: what this task was computed in
            "gpu_memory_fraction": memory_fraction,
            "node_id": node,
            "node_ip": node_ip,
            "hostname": socket.gethostname(),
            "task_started_at": started,
            "task_finished_at": time.time(),
            "done_all_tasks": report.done,
            "resumed_at_task": resumed_at,
            "total_params": total_parameters(kb_params, task_params, learner.num_tasks),
            "sequence_seconds": sequence_seconds,
            "forgetting_val": -report.bwt_val,
        }
        with tempfile.TemporaryDirectory() as tmp:
            learner.save(Path(tmp) / STATE_FILE)
            # what the checkpoint holds, readable without torch (marktune.tune.folders.experiment.missing_results)
            (Path(tmp) / CHECKPOINT_TASKS_FILE).write_text(json.dumps({TIME_ATTR: learner.tasks_done,
                                                                        "sequence_seconds": sequence_seconds}))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def _node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:  # outside Ray (direct calls in tests)
        return "local"


def _node_ip() -> str:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # outside Ray (direct calls in tests)
        return "local"
