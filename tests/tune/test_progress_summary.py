"""The status line's counts and the end-of-search rows, on Tune's events and results faked
(no Ray): what an interrupted search must and must not call its trials. And what a trial's
worker must not print into the search's output."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from marktune.mark.metrics import METRIC, TIME_ATTR
from marktune.tune.progress import SearchProgress
from marktune.results.summary import format_table, trial_rows, unfinished


def _trial(tid: str, status: str, tasks: int = 0):
    return SimpleNamespace(trial_id=tid, status=status, last_result={TIME_ATTR: tasks} if tasks else {},
                           error_file=None)


def _result(tid: str, tasks: int, *, config=None, error=None):
    metrics = {"trial_id": tid, TIME_ATTR: tasks, METRIC: 0.5 + tasks / 100, "mean_test_acc": 0.5,
               "bwt_test": 0.0} if tasks else {}
    return SimpleNamespace(metrics=metrics, config=config, error=error, path=f"/x/trial_{tid}")


def _report(progress, trial, task):
    progress.on_trial_result(0, [], trial, {TIME_ATTR: task, METRIC: 0.9, "mean_test_acc": 0.9,
                                            "bwt_test": 0.0, "task_seconds": 10.0})


def test_status_counts_follow_tunes_events(capsys):
    progress = SearchProgress(total=5, num_tasks=3, every_s=1e9)
    a, b, c = _trial("a", "RUNNING"), _trial("b", "RUNNING"), _trial("c", "PENDING")
    progress.on_step_end(0, [a, b, c])
    for t in (1, 2, 3):
        _report(progress, a, t)
    _report(progress, b, 1)
    a.status = "TERMINATED"
    progress.on_trial_complete(0, [a, b, c], a)  # ran every task
    b.status = "TERMINATED"
    progress.on_trial_complete(0, [a, b, c], b)  # stopped by ASHA after 1 of 3
    c.status = "RUNNING"
    progress.on_step_end(0, [a, b, c])
    counts = progress.counts()
    assert (counts.complete, counts.pruned, counts.errored, counts.running, counts.pending, counts.total) == \
        (1, 1, 0, 1, 2, 5)  # two trials not created yet are pending
    tasks = progress.tasks(counts)
    assert (tasks.done, tasks.planned) == (4, 3 + 1 + 3 * 3)
    assert tasks.eta_s() == (13 - 4) * 10.0 / 2  # two trials ran at once (a and b), one runs now
    assert tasks.running == 2
    out = capsys.readouterr().out.splitlines()
    assert sum("task " in ln for ln in out) == 4
    status = [ln for ln in out if " complete, " in ln]
    assert len(status) == 2  # one at each trial's end (the 30 s timer did not fire)
    assert status[-1].startswith("[marktune] 1 complete, 1 pruned, 0 errored, ")


def test_restored_trials_count_as_what_they_were():
    progress = SearchProgress(total=3, num_tasks=3, every_s=1e9)
    progress.on_step_end(0, [_trial("a", "TERMINATED", 3), _trial("b", "TERMINATED", 1), _trial("c", "RUNNING", 2)])
    counts = progress.counts()
    assert (counts.complete, counts.pruned, counts.running, counts.pending) == (1, 1, 1, 0)
    assert progress.tasks(counts).done == 6


def test_interrupted_trials_are_running_or_pending_never_pruned():
    results = [_result("done", 3, config={"lr_meta": 0.1}), _result("asha", 1, config={"lr_meta": 0.2}),
               _result("cut", 2, config={"lr_meta": 0.3}), _result("waiting", 0, config=None)]
    cut_short = {"cut", "waiting"}
    rows = trial_rows(results, searched=["lr_meta"], num_tasks=3, interrupted=lambda tid: tid in cut_short,
                      configs={"waiting": {"lr_meta": 0.4}})
    status = {r.trial_id: r.status for r in rows}
    assert status == {"done": "COMPLETE", "asha": "PRUNED", "cut": "RUNNING", "waiting": "PENDING"}
    assert unfinished(rows) == 2
    waiting = next(r for r in rows if r.trial_id == "waiting")
    assert waiting.tasks_done == 0 and math.isnan(waiting.val_acc)
    assert waiting.params == {"lr_meta": 0.4}  # its settings, although it never wrote a result
    assert "None" not in format_table(rows, ["lr_meta"], top=10)
    # without the interruption, the same results read as Tune reports a finished search
    plain = {r.trial_id: r.status for r in trial_rows(results, searched=["lr_meta"], num_tasks=3)}
    assert plain["cut"] == "PRUNED"


FINALISERS = """
import sys
from marktune.tune.trainable import drop_ignored_exits
if sys.argv[1] == "drop":
    drop_ignored_exits()
    drop_ignored_exits()  # a reused actor calls it again: still one hook

class Exits:
    def __del__(self):
        raise SystemExit(1)  # what Ray's SIGTERM handler raises, landing in a finaliser

class Breaks:
    def __del__(self):
        raise ValueError("a real bug")

Exits(); Breaks()
print("went on")
"""


@pytest.mark.parametrize("mode", ["drop", "keep"])
def test_a_trial_killed_inside_a_finaliser_prints_no_traceback(mode):
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", FINALISERS, mode], capture_output=True, text=True,
                          cwd=root, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "went on"  # ignored either way
    assert "ValueError: a real bug" in proc.stderr  # other unraisable errors are still shown
    assert ("SystemExit" in proc.stderr) == (mode == "keep"), proc.stderr
