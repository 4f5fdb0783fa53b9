"""Trials that moved to another node mid-run, read from their own result rows, and a sentence.

Every result row says where it ran (``node_ip``, else ``node_id``) and where its attempt
started (``resumed_at_task``). A trial whose rows change node has continued elsewhere: after
its node was lost (Tune retried it, and wrote the failure to the trial's ``error.txt``), or
after ``--resume`` of a lost driver (no error). The summary of a search says so in words.

Example:
    >>> rows = [{"tasks_done": 1, "node_ip": "10.0.0.12", "resumed_at_task": 0},
    ...         {"tasks_done": 2, "node_ip": "10.0.0.11", "resumed_at_task": 1}]
    >>> moves = trial_moves("trial_a", rows, failed=True)
    >>> print(node_loss_note(moves))
    node 10.0.0.12 was lost while trial_a ran on it: it continued on 10.0.0.11 from its last finished task (after task 1); no finished task ran twice
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from marktune.mark.metrics import TIME_ATTR
from marktune.results.files import RESULT_FILE, TRIAL_DIR_PREFIX, read_results

ERROR_FILE = "error.txt"  # what Tune writes in a trial's directory each time the trial fails


@dataclass(frozen=True)
class Move:
    """One trial's change of node: the last task it reported on ``left``, and where its next
    attempt, on ``to``, started."""

    trial_id: str
    left: str
    to: str
    last_task_before: int
    resumed_at_task: int
    failed: bool  # the trial failed (its node lost), rather than the search being resumed

    @property
    def tasks_again(self) -> int:
        """Finished tasks the new attempt ran again (0: it started right after the last one)."""
        return max(0, self.last_task_before - self.resumed_at_task)


def node_of(row: dict[str, Any]) -> str:
    return str(row.get("node_ip") or row.get("node_id") or "an unknown node")


def trial_moves(trial_id: str, rows: Sequence[dict[str, Any]], *, failed: bool) -> list[Move]:
    """The node changes in one trial's rows, in the order written."""
    moves = []
    for before, row in zip(rows, rows[1:]):
        if node_of(row) != node_of(before):
            moves.append(Move(trial_id=trial_id, left=node_of(before), to=node_of(row),
                              last_task_before=int(before[TIME_ATTR]),
                              resumed_at_task=int(row.get("resumed_at_task") or 0), failed=failed))
    return moves


def experiment_moves(experiment_dir: str | os.PathLike) -> list[Move]:
    """Every trial's node changes, from the ``result.json`` of each trial directory."""
    moves: list[Move] = []
    for trial_dir in sorted(Path(experiment_dir).glob(f"{TRIAL_DIR_PREFIX}*")):
        rows = read_results(trial_dir / RESULT_FILE)
        moves += trial_moves(trial_dir.name, rows, failed=(trial_dir / ERROR_FILE).exists())
    return moves


def node_loss_note(moves: Sequence[Move]) -> str:
    """One sentence per node that trials left; '' when none moved."""
    sentences = []
    for left in dict.fromkeys(m.left for m in moves):
        here = [m for m in moves if m.left == left]
        names = ", ".join(m.trial_id for m in here)
        one = len(here) == 1
        where = ", ".join(dict.fromkeys(m.to for m in here))
        lost = any(m.failed for m in here)
        head = (f"node {left} was lost while {names} {'ran' if one else 'were running'} on it" if lost
                else f"{names} moved from node {left} when the search was resumed")
        starts = ", ".join(("" if one else f"{m.trial_id} ") + f"after task {m.last_task_before}"
                           for m in here if not m.tasks_again)
        again = [m for m in here if m.tasks_again]
        sentence = (f"{head}: {'it' if one else 'they'} continued on {where}"
                    + (f" from {'its' if one else 'their'} last finished task ({starts})" if starts else ""))
        if again:
            sentence += "; finished tasks ran again: " + ", ".join(
                f"{m.trial_id} tasks {m.resumed_at_task + 1}-{m.last_task_before}" for m in again)
        else:
            sentence += "; no finished task ran twice"
        sentences.append(sentence)
    return ". ".join(sentences)
