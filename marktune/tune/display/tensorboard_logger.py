"""TensorBoard for comparing trials: a Tune logger callback that runs on the driver.

Each trial gets, in its own directory of the experiment: after every task the mean
validation/test accuracy, BWT and per-task accuracies (step = tasks done); at its end
the validation accuracy matrix as an image and HParams (its searched settings with
final ACC, BWT, tasks run), so ``tensorboard --logdir EXPERIMENT_DIR`` shows all trials
side by side. Writing on the driver means results from any node land in one place.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from ray.tune.logger import LoggerCallback

from marktune.results.files import RESULT_FILE, read_results
from marktune.results.records import tensorboard_tag
from marktune.results.status import decide_status

# the objectives a multi-objective search may rank on are there too (marktune.results.objectives)
HPARAM_METRICS = ("hparams/val_acc", "hparams/test_acc", "hparams/bwt_test", "hparams/tasks_done",
                  "hparams/params", "hparams/seconds", "hparams/forgetting")


class MarkTensorBoardCallback(LoggerCallback):
    """Per-task scalars, an accuracy-matrix image and HParams per trial."""

    def __init__(self, *, searched: list[str], num_tasks: int) -> None:
        self.searched = list(searched)
        self.num_tasks = num_tasks
        self._writers: dict[str, Any] = {}
        self._last: dict[str, dict] = {}
        self._rows: dict[str, dict[int, list[float]]] = {}

    def _writer(self, trial):
        if trial.trial_id not in self._writers:
            from torch.utils.tensorboard import SummaryWriter

            trial.init_local_path()
            self._writers[trial.trial_id] = SummaryWriter(trial.local_path, flush_secs=10)
        return self._writers[trial.trial_id]

    def log_trial_start(self, trial) -> None:
        self._writer(trial)

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        if "tasks_done" not in result or "mean_val_acc" not in result:
            return
        writer = self._writer(trial)
        step = int(result["tasks_done"])
        for key in ("mean_val_acc", "mean_test_acc", "bwt_val", "bwt_test"):
            writer.add_scalar(f"sequence/{key}", result[key], step)
        for u, acc in enumerate(result.get("val_row", [])):
            writer.add_scalar(f"per_task/val_acc_task_{u}", acc, step)
        for u, acc in enumerate(result.get("test_row", [])):
            writer.add_scalar(f"per_task/test_acc_task_{u}", acc, step)
        for key, value in result.items():  # the learner's diagnostics: kb/weight_norm, masks/mean_block_<b>
            if key.startswith(("kb_weight_norm", "mask_mean_block_")) and isinstance(value, (int, float)):
                writer.add_scalar(tensorboard_tag(key), value, step)
        writer.flush()
        self._last[trial.trial_id] = result
        self._rows.setdefault(trial.trial_id, {})[step - 1] = list(result.get("val_row", []))

    def log_trial_end(self, trial, failed: bool = False) -> None:
        writer = self._writer(trial)
        last = self._last.get(trial.trial_id, {})
        rows = {**_rows_from_result_log(trial), **self._rows.get(trial.trial_id, {})}
        if rows:
            writer.add_image("accuracy_matrix/validation", matrix_image(rows, self.num_tasks),
                             int(last.get("tasks_done", 0)), dataformats="HWC")
        self._write_hparams(writer, trial, last, failed)
        writer.flush()
        writer.close()
        self._writers.pop(trial.trial_id, None)

    def _write_hparams(self, writer, trial, last: dict, failed: bool) -> None:
        from torch.utils.tensorboard.summary import hparams

        params = {k: _hparam_value(trial.config.get(k)) for k in self.searched}
        tasks_done = int(last.get("tasks_done", 0))
        params["status"] = decide_status(errored=failed, tasks_done=tasks_done, num_tasks=self.num_tasks,
                                         interrupted=False).value
        values = {
            "hparams/val_acc": float(last.get("mean_val_acc", math.nan)),
            "hparams/test_acc": float(last.get("mean_test_acc", math.nan)),
            "hparams/bwt_test": float(last.get("bwt_test", math.nan)),
            "hparams/tasks_done": float(tasks_done),
            "hparams/params": float(last.get("total_params", math.nan)),
            "hparams/seconds": float(last.get("sequence_seconds", math.nan)),
            "hparams/flops": float(last.get("train_flops", math.nan)),
            "hparams/forgetting": float(last.get("forgetting_val", math.nan)),
        }
        exp, ssi, sei = hparams(params, values)
        for summary in (exp, ssi, sei):
            writer.file_writer.add_summary(summary)
        for key, value in values.items():
            writer.add_scalar(key, value, tasks_done)


def matrix_image(rows: dict[int, list[float]], num_tasks: int, *, cell: int = 12) -> np.ndarray:
    """The lower-triangular accuracy matrix as an RGB heat map (uint8 HWC).

    Accuracy 0 is dark blue, 1 is yellow; cells not yet trained are grey.
    """
    image = np.full((num_tasks * cell, num_tasks * cell, 3), 128, dtype=np.uint8)
    low, high = np.array([40, 30, 120]), np.array([250, 230, 40])
    for t, row in rows.items():
        for u, acc in enumerate(row):
            if acc is None or not math.isfinite(acc):
                continue
            a = min(max(float(acc), 0.0), 1.0)
            image[t * cell:(t + 1) * cell, u * cell:(u + 1) * cell] = (low + a * (high - low)).astype(np.uint8)
    return image


def _rows_from_result_log(trial) -> dict[int, list[float]]:
    """Rows reported before a driver restart: this callback's memory of them is gone,
    but Tune's JSON logger kept every result in the trial's ``result.json``."""
    from pathlib import Path

    # a line cut off by a crash is skipped; a task reported twice (a retried trial) keeps its last row
    return {int(result["tasks_done"]) - 1: list(result["val_row"])
            for result in read_results(Path(trial.local_path or "") / RESULT_FILE) if "val_row" in result}


def _hparam_value(value: Any) -> Any:
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
