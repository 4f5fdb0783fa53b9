"""How a trial ended: one rule, for the search's own table and for an experiment read back.

* ``COMPLETE``: it reported every task.
* ``PRUNED``: it ended with fewer tasks (ASHA stopped it).
* ``ERROR``: it failed.
* ``RUNNING``: the search was interrupted while it ran or waited, after it reported a task;
  it continues on ``--resume``.
* ``PENDING`` / ``MISSING``: the search was interrupted before it reported anything. The search's
  table (``trials.csv``) says PENDING (not started); an experiment read back from its files
  says MISSING (never reported a result).

Example:
    >>> decide_status(errored=False, tasks_done=5, num_tasks=5, interrupted=True)
    <TrialStatus.COMPLETE: 'COMPLETE'>
    >>> decide_status(errored=False, tasks_done=2, num_tasks=5, interrupted=True).value
    'RUNNING'
    >>> decide_status(errored=False, tasks_done=0, num_tasks=5, interrupted=True,
    ...               never_reported=TrialStatus.MISSING).value
    'MISSING'
    >>> decide_status(errored=False, tasks_done=2, num_tasks=5, interrupted=False).value
    'PRUNED'
"""
from __future__ import annotations

from enum import Enum


class TrialStatus(str, Enum):
    COMPLETE = "COMPLETE"
    PRUNED = "PRUNED"
    RUNNING = "RUNNING"
    PENDING = "PENDING"
    MISSING = "MISSING"
    ERROR = "ERROR"

    def __str__(self) -> str:  # written into tables and pages as its name
        return self.value


# Tune's statuses of a trial that had not ended when the search stopped
LIVE_TUNE_STATUSES = ("RUNNING", "PENDING", "PAUSED")


def decide_status(*, errored: bool, tasks_done: int, num_tasks: int, interrupted: bool,
                  never_reported: TrialStatus = TrialStatus.PENDING) -> TrialStatus:
    """The status of a trial that reported ``tasks_done`` of ``num_tasks`` tasks.

    ``interrupted``: the search stopped while the trial ran or waited (it had not ended).
    ``never_reported``: the status of an interrupted trial without a result (PENDING or MISSING).
    """
    if errored:
        return TrialStatus.ERROR
    if num_tasks > 0 and tasks_done >= num_tasks:
        return TrialStatus.COMPLETE
    if interrupted:
        return TrialStatus.RUNNING if tasks_done > 0 else never_reported
    return TrialStatus.PRUNED
