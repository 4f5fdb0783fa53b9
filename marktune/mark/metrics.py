"""Continual-learning metrics as plain functions over an accuracy matrix.

``R[t][u]`` is the accuracy on task ``u`` after training task ``t`` (``u <= t``);
entries with ``u > t`` are ignored (they are NaN in the learner's matrices).
A matrix with fewer rows than tasks is a sequence still under way: every metric
then speaks of the tasks seen so far.

Example:
    >>> R = [[0.9], [0.8, 0.7]]
    >>> mean_accuracy_per_task(R)
    [0.9, 0.75]
    >>> round(backward_transfer(R), 6)
    -0.1
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

Matrix = Sequence[Sequence[float]] | np.ndarray

# Names under which a trial reports after every task (runners/mark_sequence.py), read by the
# search (ASHA's time unit, Optuna's objective) and by experiment readers.
METRIC = "mean_val_acc"  # mean validation accuracy over the tasks seen: what a search optimises
TIME_ATTR = "tasks_done"


def _square(R: Matrix) -> np.ndarray:
    """The rows trained so far as a square t x t array (lower triangle meaningful)."""
    rows = [list(r) for r in R]
    n = len(rows)
    out = np.full((n, n), np.nan)
    for t, row in enumerate(rows):
        values = np.asarray(row[: t + 1], dtype=float)
        out[t, : len(values)] = values
    return out


def mean_accuracy_per_task(R: Matrix) -> list[float]:
    """``mean_acc[t] = mean_{u<=t} R[t][u]``: the value reported to the search after task t."""
    A = _square(R)
    return [float(np.mean(A[t, : t + 1])) for t in range(len(A))]


def average_accuracy(R: Matrix) -> float:
    """ACC: mean accuracy over all tasks after the last task trained."""
    A = _square(R)
    if len(A) == 0:
        return float("nan")
    return float(np.mean(A[-1, :]))


def backward_transfer(R: Matrix) -> float:
    """BWT (GEM): ``sum_{u<T-1} (R[T-1][u] - R[u][u]) / (T-1)``; 0 with a single task."""
    A = _square(R)
    T = len(A)
    if T < 2:
        return 0.0
    return float(np.mean([A[T - 1, u] - A[u, u] for u in range(T - 1)]))


def forgetting(R: Matrix) -> float:
    """Max-based forgetting: mean over ``u<T-1`` of ``max_{t<T-1} R[t][u] - R[T-1][u]``."""
    A = _square(R)
    T = len(A)
    if T < 2:
        return 0.0
    return float(np.mean([np.max(A[u:T - 1, u]) - A[T - 1, u] for u in range(T - 1)]))


def summary(R: Matrix) -> dict[str, float | list[float]]:
    """All metrics of one matrix, as a JSON-friendly dict."""
    return {
        "acc": average_accuracy(R),
        "bwt": backward_transfer(R),
        "forgetting": forgetting(R),
        "mean_acc": mean_accuracy_per_task(R),
    }


def format_matrix(R: Matrix, *, title: str = "accuracy matrix") -> str:
    """The lower triangle as a text table: rows = after task t, columns = task u."""
    A = _square(R)
    T = len(A)
    lines = [f"{title} (row: after task t, column: task u)",
             "      " + "".join(f"{u:>7d}" for u in range(T))]
    for t in range(T):
        cells = "".join(f"{A[t, u]:7.3f}" for u in range(t + 1))
        lines.append(f"t={t:<3d} " + cells)
    return "\n".join(lines)
