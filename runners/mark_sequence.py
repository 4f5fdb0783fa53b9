"""What runs inside one Ray Tune trial: a whole MARK sequence, reported task by task.

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

import logging
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from marktune.metrics import TIME_ATTR

STATE_FILE = "learner.pt"
RUNTIME_KEY = "marktune_runtime"  # non-learner settings riding in the trial config


def trial_device() -> torch.device:
    """The GPU Ray assigned to this trial if CUDA can see it, else the CPU.

    Fractional GPUs share one device; with fake GPUs (tests) or no CUDA build,
    the trial runs on the CPU instead of failing.
    """
    import ray

    gpu_ids = ray.get_gpu_ids()
    if gpu_ids and torch.cuda.is_available():
        # Ray sets CUDA_VISIBLE_DEVICES to the assigned GPU(s): index 0 is ours.
        return torch.device("cuda", 0)
    return torch.device("cpu")


def train_mark_sequence(config: dict[str, Any]) -> None:
    """Tune function trainable: ``config`` holds learner settings plus ``marktune_runtime``."""
    from ray import tune

    from marktune.config import MarkConfig
    from marktune.data import load_benchmark_for
    from marktune.learner import MarkLearner
    from marktune.reporting import task_scalars

    # Tune logs every checkpoint it persists; with one per task per trial that line drowns the
    # driver's own progress lines, which already say when a task is done.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    runtime = dict(config.get(RUNTIME_KEY) or {})
    keys = set(MarkConfig.field_names())
    mark_config = MarkConfig.from_dict({k: v for k, v in config.items() if k in keys})
    threads = runtime.get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    device = trial_device()
    benchmark = load_benchmark_for(mark_config, data_dir=runtime.get("data_dir"),
                                   download=bool(runtime.get("download", False)))
    learner = MarkLearner(mark_config, benchmark, device=device, verbose=int(runtime.get("verbose", 0)))

    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as path:
            learner.load(Path(path) / STATE_FILE)
    # where this attempt started: 0, or the tasks of the checkpoint it resumed from (after a
    # lost node, a lost driver or a pause); reported so a recomputed task would show
    resumed_at = learner.tasks_done

    node = os.environ.get("RAY_NODE_ID") or _node_id()
    # first-k protocol (marktune.protocols): the first k tasks of the whole stream, then stop
    run_tasks = min(learner.num_tasks, int(runtime.get("stop_after_tasks") or learner.num_tasks))
    while learner.tasks_done < run_tasks:
        started = time.time()
        report = learner.train_next_task()
        val, test = learner.matrices()
        metrics = {
            TIME_ATTR: report.task + 1,
            "num_tasks": learner.num_tasks,
            **task_scalars(report),
            "val_row": list(report.val_row),
            "test_row": list(report.test_row),
            "device": str(device),
            "node_id": node,
            "hostname": socket.gethostname(),
            "task_started_at": started,
            "task_finished_at": time.time(),
            "done_all_tasks": report.done,
            "resumed_at_task": resumed_at,
        }
        # what this trial runs (the search's finish line), and the stream it is cut from
        metrics.update({"num_tasks": run_tasks, "stream_tasks": learner.num_tasks})
        with tempfile.TemporaryDirectory() as tmp:
            learner.save(Path(tmp) / STATE_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def _node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:  # outside Ray (direct calls in tests)
        return "local"
