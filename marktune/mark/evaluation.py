"""Evaluation: each task's masks and accuracy on a split, in chunks, and the per-task report.

Every function here runs without training anything, ``runtime.eval_chunk`` images at a time
(:mod:`marktune.mark.runtime`). Row t of the accuracy matrices holds every task u <= t
scored with its own F_u, M_u and C_u through the KB as it is after task t
(``docs/method.md``, "Evaluation and metrics"); :func:`task_report` turns the rows so far into a
:class:`TaskReport`.

Example:
    >>> report = task_report(0, num_tasks=2, val_matrix=[[0.5, math.nan], [math.nan] * 2],
    ...                      test_matrix=[[0.75, math.nan], [math.nan] * 2], seconds=[], diagnostics=[])
    >>> report.mean_test_acc, report.done
    (0.75, False)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Iterable

import torch
from torch import nn

from marktune.data.base import Split
from marktune.mark import metrics
from marktune.mark.model import KnowledgeBase, MaskGenerator, ones_masks
from marktune.mark.runtime import Runtime

Masks = list[torch.Tensor]


@dataclass
class TaskReport:
    """What the learner knows after training task ``task`` (rows of both matrices, diagnostics)."""

    task: int
    num_tasks: int
    val_row: list[float]
    test_row: list[float]
    mean_val_acc: float
    mean_test_acc: float
    bwt_val: float
    bwt_test: float
    seconds: dict[str, float]
    # the KB's weight norm after this task: all of it, each conv block, its final Linear
    kb_weight_norm: float = math.nan
    kb_block_norms: list[float] = field(default_factory=list)
    kb_fc_norm: float = math.nan
    # mean of M_t's mask over this task's validation images, per KB block
    mask_means: list[float] = field(default_factory=list)
    # validation images each task seen was scored on (val_row's denominators; [] unknown)
    val_counts: list[int] = field(default_factory=list)
    # training FLOPs of tasks 0..task, counted from shapes (marktune.mark.flops); nan: unknown
    train_flops: float = math.nan

    @property
    def done(self) -> bool:
        return self.task + 1 == self.num_tasks


def lower_triangle(matrix: list[list[float]], rows: int) -> list[list[float]]:
    """The first ``rows`` rows of ``matrix``, row r cut to its r + 1 tasks seen."""
    return [row[: r + 1] for r, row in enumerate(matrix[:rows])]


def task_report(t: int, *, num_tasks: int, val_matrix: list[list[float]], test_matrix: list[list[float]],
                seconds: list[dict[str, float]], diagnostics: list[dict],
                val_counts: list[int] | None = None) -> TaskReport:
    """The :class:`TaskReport` after task ``t`` from the matrices and the per-task records
    (``val_counts``: each task's validation images, the first t + 1 kept)."""
    val, test = lower_triangle(val_matrix, t + 1), lower_triangle(test_matrix, t + 1)
    diag = diagnostics[t] if t < len(diagnostics) else {}
    return TaskReport(
        task=t, num_tasks=num_tasks, val_row=val[-1], test_row=test[-1],
        mean_val_acc=metrics.mean_accuracy_per_task(val)[-1],
        mean_test_acc=metrics.mean_accuracy_per_task(test)[-1],
        bwt_val=metrics.backward_transfer(val), bwt_test=metrics.backward_transfer(test),
        seconds=dict(seconds[t]) if t < len(seconds) else {},
        kb_weight_norm=diag.get("kb_weight_norm", math.nan),
        kb_block_norms=list(diag.get("kb_block_norms", [])),
        kb_fc_norm=diag.get("kb_fc_norm", math.nan),
        mask_means=list(diag.get("mask_means", [])),
        val_counts=[int(n) for n in (val_counts or [])[: t + 1]],
        train_flops=diag.get("train_flops", math.nan),
    )


def masks_of(xb: torch.Tensor, *, kb: KnowledgeBase, extractor: nn.Module, mask_gen: MaskGenerator,
             use_masks: bool) -> Masks:
    """M_u(F_u(xb)) with both in eval mode, or all ones with ``use_masks: false``."""
    if not use_masks:
        return ones_masks(kb, len(xb), xb.device)
    return mask_gen.eval()(extractor.eval()(xb))


def split_masks(split: Split, *, runtime: Runtime, masks_for: Callable[[torch.Tensor], Masks]) -> Masks:
    """``masks_for(images)`` for every image of ``split``, chunk by chunk, concatenated per block."""
    with torch.inference_mode():
        chunks, n = [], runtime.eval_chunk
        x = split.x.to(runtime.device)
        for start in range(0, len(x), n):
            xb = runtime.images(x[start:start + n])
            with runtime.autocast():
                chunks.append(masks_for(xb))
        return [torch.cat(parts) for parts in zip(*chunks)] if chunks else []


def accuracy(split: Split, *, kb: KnowledgeBase, head: nn.Module, runtime: Runtime,
             masks_for: Callable[[int, torch.Tensor], Masks],
             no_autograd: Callable[[], ContextManager] = torch.inference_mode) -> float:
    """Accuracy of ``head(kb(x, masks))`` on ``split``; ``masks_for(start, images)`` gives the
    masks of the chunk starting at image ``start``. The count stays on the device (one read)."""
    with no_autograd():
        kb.eval()
        head.eval()
        correct = torch.zeros((), dtype=torch.long, device=runtime.device)
        x, y, n = split.x.to(runtime.device), split.y.to(runtime.device), runtime.eval_chunk  # one copy per split
        for start in range(0, len(y), n):
            xb = runtime.images(x[start:start + n])
            with runtime.autocast():
                logits = head(kb(xb, masks_for(start, xb)))
            correct += (logits.argmax(1) == y[start:start + n]).sum()
        return int(correct) / max(1, len(split.y))


def diagnostics(t: int, *, kb: KnowledgeBase, masks: Masks) -> dict:
    """After task t: the KB's weight norm (total, per conv block, its Linear) and the mean mask
    of task t per block, from ``masks`` (a dead ReLU mask shows as 0)."""
    def norm(params: Iterable[torch.Tensor]) -> float:
        return math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in params))

    return {"task": t,
            "kb_weight_norm": norm(kb.parameters()),
            "kb_block_norms": [norm(conv.parameters()) for conv in kb.convs],
            "kb_fc_norm": norm(kb.fc.parameters()),
            "mask_means": [float(m.float().mean()) for m in masks]}


def fmt_row(row: list[float]) -> str:
    return "[" + " ".join(f"{a:.3f}" for a in row) + "]"
