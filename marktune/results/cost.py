"""What a configuration costs and how often it fails, against the default: the other half of a verdict.

A search may buy accuracy, or the same accuracy for less compute. An evaluation's rows (one per
run, ``evaluation.csv``) give, per configuration against the default, the ratios of

* parameters: the shared KB plus every task's own modules after the last task;
* training FLOPs: ``train_flops`` of each run (convolutions and linear layers, forward and
  backward, counted from the settings and the data sizes: :mod:`marktune.mark.flops`), where
  the rows have them;
* measured seconds: each run's wall seconds from its first task's start to its last task's
  end, a clock (it moves with the machine and its load); mean over complete runs;

and its robustness: runs that errored (a diverged loss stops a run) and complete runs that
finished with a task at chance (``tasks_at_chance``, a *collapse*), and its worst run.

A non-inferiority margin M (points) turns "not distinguishable" into something a paper can
quote: a configuration is *as accurate as the default within M points* when the lower end of
the paired 95 % CI of its difference is above −M (:func:`non_inferior`).

Example:
    >>> rows = [{"configuration": c, "status": "COMPLETE", "kb_params": kb, "task_params": 10, "tasks_total": 5,
    ...          "wall_seconds": s, "train_flops": f, "tasks_at_chance": 0, "test_acc": 0.9}
    ...         for c, kb, s, f in (("pick", 50, 1.0, 2e9), ("default", 200, 4.0, 8e9)) for _ in range(2)]
    >>> c = compare(rows, "pick", "default", key="test_acc")
    >>> round(c.params, 3), c.seconds, c.flops
    (0.4, 0.25, 0.25)
    >>> cost_words(c)
    'at 25 % of its training FLOPs, 40 % of its parameters and 25 % of its measured seconds'
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

CHANCE_MARGIN = 0.05  # a task "at chance": test ACC at most 1/classes + this (bench/divergence_rates.py's rule)


def tasks_at_chance(final_row: Sequence[float], classes_per_task: int) -> int:
    """How many tasks of a run's last test-matrix row sit at chance."""
    return sum(1 for a in final_row if math.isfinite(a) and a <= 1.0 / classes_per_task + CHANCE_MARGIN)


def total_params(row: Mapping[str, Any]) -> float:
    """The learner's parameters after the last task: the KB plus each task's own modules."""
    try:
        return float(row["kb_params"]) + float(row["tasks_total"]) * float(row["task_params"])
    except (KeyError, TypeError, ValueError):
        return math.nan


@dataclass(frozen=True)
class Robustness:
    """How a configuration's runs ended."""

    runs: int  # every run planned
    errored: int  # stopped by an error (a non-finite loss among them)
    collapsed: int  # complete, with a task at chance after the last task
    worst: float  # the lowest headline value of a complete run

    def words(self) -> str:
        """``no collapse or error in 10 runs``, ``2 collapsed (a task at chance) and 1 errored of 10 runs``."""
        if not self.collapsed and not self.errored:
            return f"no collapse or error in {self.runs} runs"
        failed = [f"{n} {what}" for n, what in ((self.collapsed, "collapsed (a task at chance)"),
                                                (self.errored, "errored")) if n]
        return f"{' and '.join(failed)} of {self.runs} runs"


@dataclass(frozen=True)
class CostComparison:
    """A configuration against the default: ratios of cost (nan: unknown) and both robustness records."""

    configuration: str
    params: float
    flops: float
    seconds: float
    mine: Robustness
    default: Robustness


def _mean(values: list[float]) -> float:
    values = [v for v in values if math.isfinite(v)]
    return sum(values) / len(values) if values else math.nan


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _ratio(mine: float, reference: float) -> float:
    return mine / reference if math.isfinite(mine) and math.isfinite(reference) and reference > 0 else math.nan


def robustness(rows: Sequence[Mapping[str, Any]], label: str, *, key: str) -> Robustness:
    runs = [r for r in rows if r.get("configuration") == label]
    complete = [r for r in runs if r.get("status") == "COMPLETE"]
    worst = min((_number(r.get(key)) for r in complete), default=math.nan)
    return Robustness(runs=len(runs), errored=sum(1 for r in runs if r.get("status") == "ERROR"),
                      collapsed=sum(1 for r in complete if _number(r.get("tasks_at_chance")) > 0), worst=worst)


def compare(rows: Sequence[Mapping[str, Any]], label: str, default: str, *, key: str) -> CostComparison:
    """``label``'s costs as fractions of ``default``'s (means over complete runs) and both robustness records."""
    def mean_of(name: str, of) -> float:
        return _mean([of(r) for r in rows if r.get("configuration") == name and r.get("status") == "COMPLETE"])

    return CostComparison(
        configuration=label,
        params=_ratio(mean_of(label, total_params), mean_of(default, total_params)),
        flops=_ratio(mean_of(label, lambda r: _number(r.get("train_flops"))),
                     mean_of(default, lambda r: _number(r.get("train_flops")))),
        seconds=_ratio(mean_of(label, lambda r: _number(r.get("wall_seconds"))),
                       mean_of(default, lambda r: _number(r.get("wall_seconds")))),
        mine=robustness(rows, label, key=key), default=robustness(rows, default, key=key))


def cost_words(c: CostComparison) -> str:
    """``at 21 % of its training FLOPs, 36 % of its parameters and 27 % of its measured seconds`` (known ones only)."""
    parts = [f"{_percent(v)} of its {what}" for v, what in ((c.flops, "training FLOPs"), (c.params, "parameters"),
                                                           (c.seconds, "measured seconds")) if math.isfinite(v)]
    if not parts:
        return ""
    return "at " + (parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1])


def _percent(ratio: float) -> str:
    return f"{100 * ratio:.0f} %" if ratio < 10 else f"{ratio:.1f}x"


def non_inferior(low: float, margin: float | None) -> bool:
    """The paired CI's lower end above −margin (both as fractions): as accurate within the margin."""
    return margin is not None and math.isfinite(low) and low > -margin
