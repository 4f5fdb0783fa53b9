"""Asynchronous Hyperband (``--scheduler hyperband``): ASHA run over several brackets at once.

Li et al.'s asynchronous Hyperband is Ray's ``AsyncHyperBandScheduler`` with ``brackets`` > 1:
bracket b's first rung is at grace period x eta^b tasks, and each new trial joins a bracket
drawn at random, favouring the brackets with more rungs. It is :class:`ResumableASHA` with more
brackets, so its rungs are refilled on ``--resume`` as ASHA's are; a restored trial's bracket is
drawn again then (Ray keeps no record of it), and its past results fill that bracket's rungs.

The replay has measured it since the first strategy grid (``hyperband g1 r2``, docs/replay.md);
this file and its entry in :data:`marktune.tune.strategy.strategies.SCHEDULERS` make it a live scheduler.

Example (Ray is imported by this module):
    >>> scheduler = hyperband(num_tasks=5, grace_period=1, reduction_factor=2, brackets=3)
    >>> [sorted(rungs) for rungs in scheduler.rungs()]  # milestones of each bracket, in tasks done
    [[1, 2, 4], [2, 4], [4]]
"""
from __future__ import annotations

from typing import Sequence

from marktune.mark.metrics import TIME_ATTR
from marktune.results.objectives import SINGLE, Objective
from marktune.tune.strategy.scheduler import ResumableASHA


def hyperband(*, num_tasks: int, grace_period: int, reduction_factor: float, brackets: int = 3,
              objectives: Sequence[Objective] = SINGLE) -> ResumableASHA:
    """Asynchronous Hyperband on tasks done over ``brackets`` brackets (one objective)."""
    if len(objectives) > 1:
        raise ValueError("hyperband ranks one objective")  # the registry says so first, in words
    return ResumableASHA(time_attr=TIME_ATTR, max_t=num_tasks, grace_period=grace_period,
                         reduction_factor=reduction_factor, brackets=brackets)
