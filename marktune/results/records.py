"""What a finished (or interrupted) sequence leaves behind: a results dict and TensorBoard scalars.

Shared by ``marktune.run`` and the search's trial runner, so that a single run and a
trial write the same numbers under the same names.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from marktune.mark import metrics
from marktune.mark.learner import MarkLearner, TaskReport
from marktune.results.files import write_atomic


def results_dict(learner: MarkLearner, *, wall_seconds: float | None = None) -> dict[str, Any]:
    """Config, both matrices, ACC/BWT on each, and seconds per task and phase."""
    val, test = learner.matrices()
    return {
        "config": learner.config.to_dict(),
        "benchmark": learner.benchmark.name,
        "tasks_done": learner.tasks_done,
        "num_tasks": learner.num_tasks,
        "finished": learner.tasks_done == learner.num_tasks,
        "val_matrix": val,
        "test_matrix": test,
        "val": metrics.summary(val) if val else None,
        "test": metrics.summary(test) if test else None,
        "acc": metrics.average_accuracy(test) if test else math.nan,
        "bwt": metrics.backward_transfer(test) if test else math.nan,
        "val_acc": metrics.average_accuracy(val) if val else math.nan,
        "val_counts": learner.val_counts(learner.tasks_done),
        "seconds_per_task": learner.seconds,
        # after each task: the KB's weight norm (total, per conv block, its Linear) and the mean
        # mask per block of the task just trained (on its validation images)
        "diagnostics": [dict(d) for d in learner.diagnostics],
        "wall_seconds": wall_seconds,
        "train_flops": learner.flops.total if learner.flops.known else math.nan,
    }


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write a temporary file, fsync, rename (``marktune.results.files.write_atomic``): a crash or a
    full disk never leaves half a file behind."""
    write_atomic(path, json.dumps(data, indent=2, default=_json_default))


def task_scalars(report: TaskReport) -> dict[str, float]:
    """Flat scalars of one task's report, as logged to TensorBoard and to Tune."""
    out = {
        "mean_val_acc": report.mean_val_acc,
        "mean_test_acc": report.mean_test_acc,
        "bwt_val": report.bwt_val,
        "bwt_test": report.bwt_test,
        "task_seconds": sum(report.seconds.values()),
        # tasks 0..t, counted from shapes (marktune.mark.flops): a cost that does not move with the machine
        "train_flops": report.train_flops,
    }
    if report.val_counts:  # the validation images mean_val_acc was scored on (its binomial noise)
        out["val_images"] = sum(report.val_counts)
    for u, (v, te) in enumerate(zip(report.val_row, report.test_row)):
        out[f"val_acc_task_{u}"] = v
        out[f"test_acc_task_{u}"] = te
    out.update(diagnostic_scalars(report))
    return out


def diagnostic_scalars(report: TaskReport) -> dict[str, float]:
    """The KB's weight norm and task t's mean mask per block, as flat scalars."""
    out = {"kb_weight_norm": report.kb_weight_norm, "kb_weight_norm_fc": report.kb_fc_norm}
    for b, value in enumerate(report.kb_block_norms):
        out[f"kb_weight_norm_block_{b}"] = value
    for b, value in enumerate(report.mask_means):
        out[f"mask_mean_block_{b}"] = value
    return out


def tensorboard_tag(key: str) -> str:
    """Where a scalar of :func:`task_scalars` goes in TensorBoard: ``kb/weight_norm``,
    ``masks/mean_block_<b>``, ``per_task/...`` or ``sequence/...``."""
    if key.startswith("kb_"):
        return "kb/" + key[len("kb_"):]
    if key.startswith("mask_mean_block_"):
        return "masks/" + key[len("mask_"):]
    return ("per_task/" if "_task_" in key else "sequence/") + key


def log_task_to_tensorboard(writer, report: TaskReport) -> None:
    """Step = tasks done, so curves of trials with different lengths line up."""
    step = report.task + 1
    for key, value in task_scalars(report).items():
        writer.add_scalar(tensorboard_tag(key), value, step)
    writer.flush()


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
