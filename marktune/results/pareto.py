"""Accuracy against cost: which configurations no other beats on both (the Pareto front).

MARK's claim is accuracy with fewer parameters; a trial's price is compute time. A point
``(cost, accuracy)`` is dominated when another point costs no more and is no less accurate,
and is strictly better in one of the two. Plain functions over plain numbers, so the front of
a search and of an evaluation are found the same way.

:func:`parameter_counts` counts a configuration's parameters (its shared KB and what each
task adds) from freshly built parts, without data or training.

Example:
    >>> points = [(100, 0.80), (200, 0.85), (150, 0.79), (300, 0.85), (50, 0.60)]
    >>> pareto_front(points)
    [4, 0, 1]
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from marktune.mark.config import MarkConfig

if TYPE_CHECKING:
    from marktune.results.experiment import Experiment


@dataclass(frozen=True)
class Point:
    label: str
    accuracy: float
    params: float  # total parameters: shared KB + T x per-task parts
    seconds: float  # compute seconds of the whole sequence


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated ``(cost, accuracy)`` points, cheapest first.

    Lower cost and higher accuracy are better; points with a NaN are never on the front;
    identical points are both on it (neither beats the other). One sort and one sweep: comparing
    every pair costs N^2 where most of the N points are on the front (report.html draws two).
    """
    finite = sorted((i for i, (c, a) in enumerate(points) if math.isfinite(c) and math.isfinite(a)),
                    key=lambda i: (points[i][0], -points[i][1]))
    front: list[int] = []
    best_cheaper = -math.inf  # the highest accuracy of any strictly cheaper point
    start = 0
    while start < len(finite):
        cost = points[finite[start]][0]
        end = start
        while end < len(finite) and points[finite[end]][0] == cost:
            end += 1
        top = points[finite[start]][1]  # the group's highest accuracy (sorted first)
        if top > best_cheaper:  # else a cheaper point is at least as accurate: dominated
            front += [i for i in finite[start:end] if points[i][1] == top]  # a more accurate one beats the rest
        best_cheaper = max(best_cheaper, top)
        start = end
    return front


def total_parameters(kb_params: int, task_params: int, num_tasks: int) -> int:
    """What a model for the whole sequence holds: the shared KB once, F_t + M_t + C_t per task."""
    return kb_params + num_tasks * task_params


def figure(points: Sequence[Point], *, title: str, accuracy_label: str):
    """Two panels: accuracy against total parameters and against compute seconds; every point
    grey, the front of each panel joined and labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), dpi=110)
    panels = [("params", "total parameters (KB + T x per-task F+M+C)"), ("seconds", "compute seconds (all tasks)")]
    for ax, (attr, xlabel) in zip(axes, panels):
        xy = [(float(getattr(p, attr)), p.accuracy) for p in points]
        front = pareto_front(xy)
        ax.scatter([x for x, _ in xy], [y for _, y in xy], s=22, color="#999999", label="complete trial", zorder=2)
        if front:
            fx = [xy[i][0] for i in front]
            fy = [xy[i][1] for i in front]
            ax.plot(fx, fy, "-o", color="#d73027", ms=6, lw=1.6, label="non-dominated", zorder=3)
            for i in front:
                ax.annotate(points[i].label, xy[i], textcoords="offset points", xytext=(4, 4), fontsize=7,
                            color="#d73027")
        if attr == "params" and xy and min(x for x, _ in xy) > 0 and max(x for x, _ in xy) / min(x for x, _ in xy) > 20:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(accuracy_label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


TOTAL_CLASSES = {"cifar100": 100, "miniimagenet": 100, "fmnist": 10, "digits": 10}


# ---------------------------------------------------------------- a configuration's parameters
def classes_per_task(config: MarkConfig) -> int:
    if config.benchmark == "synthetic":
        return config.synthetic_classes_per_task
    return TOTAL_CLASSES[config.benchmark] // config.tasks


def parameter_counts(config: MarkConfig) -> tuple[int, int]:
    """(shared KB, one task's F_t + M_t + C_t) parameters, from freshly built parts (no data, no training).

    Inputs are 3-channel at the benchmark's image size (grey benchmarks are repeated to 3
    channels). With the ResNet-18 feature extractor, F_t counts the frozen trunk too.
    """
    import torch

    from marktune.mark.model import (FeatureExtractor, KnowledgeBase, MaskGenerator, ResNetFeatureExtractor,
                                     TaskHead, count_parameters)

    with torch.device("meta"):  # shapes only: nothing is allocated or initialised
        kb = KnowledgeBase(image_size=config.image_size, in_channels=3, depth=config.kb_depth,
                           width=config.kb_width, latent_dim=config.latent_dim, dropout=config.kb_dropout)
        if config.feature_extractor == "resnet18":
            fe = ResNetFeatureExtractor(latent_dim=config.latent_dim)
        else:
            fe = FeatureExtractor(image_size=config.image_size, in_channels=3, channels=config.fe_channels,
                                  latent_dim=config.latent_dim)
        masks = MaskGenerator(latent_dim=config.latent_dim, block_channels=kb.channels,
                              hidden=config.mask_hidden, activation=config.mask_activation)
        head = TaskHead(config.latent_dim, classes_per_task(config))
    return count_parameters(kb), count_parameters(fe) + count_parameters(masks) + count_parameters(head)


# ---------------------------------------------------------------- the report's points
def search_points(exp: "Experiment") -> list:
    """One pareto.Point per complete trial: validation ACC, total parameters from its config
    (as marktune.evaluate counts them), and the compute seconds of its tasks."""
    from marktune.mark.config import ConfigError

    points = []
    for t in exp.by_status("COMPLETE"):
        try:
            config = MarkConfig.from_dict(t.config)
        except (ConfigError, TypeError, ValueError):
            continue
        kb, task = parameter_counts(config)
        seconds = sum(_task_seconds(r) for r in t.results)
        points.append(Point(label=t.trial_id, accuracy=t.val_acc, params=total_parameters(kb, task, config.tasks),
                            seconds=seconds))
    return points


def _task_seconds(result: dict[str, Any]) -> float:
    """A task's compute seconds as the trial reported them (else its start-to-finish time)."""
    if isinstance(result.get("task_seconds"), (int, float)):
        return float(result["task_seconds"])
    try:
        return float(result["task_finished_at"]) - float(result["task_started_at"])
    except (KeyError, TypeError, ValueError):
        return math.nan


def evaluation_points(exp: "Experiment") -> list:
    """One pareto.Point per evaluated configuration: mean test ACC over seeds, total parameters,
    mean wall seconds of a run; [] without an evaluation."""
    from marktune.results.evaluation_table import aggregate, read_csv

    path = exp.path / "evaluation.csv"
    if not path.is_file():
        return []
    try:
        summaries = aggregate(read_csv(path))
    except (OSError, KeyError, ValueError):
        return []
    return [Point(label=s.configuration, accuracy=s.test_acc[0],
                  params=total_parameters(s.kb_params, s.task_params, exp.num_tasks), seconds=s.wall_seconds)
            for s in summaries if s.ok]
