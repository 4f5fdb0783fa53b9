"""The status line's counts, on Tune's events faked (no Ray)."""
from __future__ import annotations

import doctest
from types import SimpleNamespace

from marktune.mark.metrics import METRIC, TIME_ATTR
from marktune.tune.display import progress as progress_module
from marktune.tune.display.progress import SearchProgress


def test_docstring_examples_run():
    failures, tried = doctest.testmod(progress_module)
    assert tried > 0 and failures == 0


def _trial(tid: str, status: str, tasks: int = 0):
    return SimpleNamespace(trial_id=tid, status=status, last_result={TIME_ATTR: tasks} if tasks else {},
                           error_file=None)


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
    progress.on_trial_start(0, [a, b, c], c)
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


def test_a_step_reads_tune_s_trial_list_only_at_the_start_and_with_a_timed_status_line(capsys):
    """Tune calls on_step_end about 7 times a trial with its whole trial list: reading the list
    at every step made the callback's work grow with the square of the trials (at 10,000 trials,
    hundreds of millions of reads). The events keep the counts; the list is read at the first
    step and then once per timed status line."""
    class CountedList(list):
        reads = 0

        def __iter__(self):
            CountedList.reads += len(self)
            return super().__iter__()

    n = 1000
    trials = CountedList(_trial(f"t{i}", "PENDING") for i in range(n))
    progress = SearchProgress(total=n, num_tasks=3, every_s=1e9)
    for step, trial in enumerate(list.__iter__(trials)):
        progress.on_step_end(step, trials)
        trial.status = "RUNNING"
        progress.on_trial_start(step, trials, trial)
        for task in (1, 2, 3):
            _report(progress, trial, task)
            progress.on_step_end(step, trials)
        trial.status, trial.last_result = "TERMINATED", {TIME_ATTR: 3}
        progress.on_trial_complete(step, trials, trial)
    assert CountedList.reads == n  # the first step's scan, nothing more
    counts = progress.counts()
    assert (counts.complete, counts.running, counts.pending) == (n, 0, 0)
    assert progress.tasks(counts).done == 3 * n
    assert capsys.readouterr().out.count(" complete, ") == n  # a status line at each trial's end
