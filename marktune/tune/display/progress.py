"""What a running search prints: one line per finished task, and a status line with an ETA.

Ray's own trial tables are left to ``--verbose``; this Tune callback keeps the terminal short:

* per finished task of a trial, one line (its mean validation/test accuracy, BWT, seconds);
* every ``every_s`` seconds (30 by default) and whenever a trial ends, one status line::

    [marktune] 2 complete, 3 pruned, 0 errored, 2 running, 1 pending of 8 trials; 19/33 tasks; elapsed 2m10s; ETA <= 1m40s

The counts come from Tune's events: a trial is complete or pruned once Tune reports it ended
(with every task, or fewer), running or pending as Tune last listed it.

Example (the arithmetic of the status line, without Ray):
    >>> counts = TrialCounts(complete=1, pruned=1, errored=0, running=2, pending=0, total=4)
    >>> # 5 tasks a trial: the complete one ran 5, the pruned one 2, the running ones 2 so far
    >>> tasks = TaskCounts(done=9, planned=5 + 2 + 2 * 5, seconds_per_task=10.0, running=2)
    >>> status_line(counts, tasks, elapsed_s=95)
    '1 complete, 1 pruned, 0 errored, 2 running, 0 pending of 4 trials; 9/17 tasks; elapsed 1m35s; ETA <= 40s'
"""
from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass
from ray.tune import Callback

from marktune.mark.metrics import METRIC, TIME_ATTR
from marktune.results.status import decide_status
from marktune.results.summary import error_reason

STATUS_EVERY_S = 30.0


@dataclass(frozen=True)
class TrialCounts:
    complete: int
    pruned: int
    errored: int
    running: int
    pending: int  # waiting for resources, or not created by the searcher yet
    total: int

    @property
    def unfinished(self) -> int:
        return self.running + self.pending


@dataclass(frozen=True)
class TaskCounts:
    done: int
    planned: int  # tasks of finished trials as they ran, plus every task of the others
    seconds_per_task: float  # measured: mean compute seconds of a task so far (nan before any)
    running: int  # trials that ran at once (the most seen so far: the parallelism the ETA assumes)

    def eta_s(self) -> float:
        """Seconds left if no more trial is pruned (an upper bound); nan before any task."""
        if not math.isfinite(self.seconds_per_task):
            return math.nan
        return max(0, self.planned - self.done) * self.seconds_per_task / max(1, self.running)


def status_line(counts: TrialCounts, tasks: TaskCounts, *, elapsed_s: float) -> str:
    eta = tasks.eta_s()
    return (f"{counts.complete} complete, {counts.pruned} pruned, {counts.errored} errored, "
            f"{counts.running} running, {counts.pending} pending of {counts.total} trials; "
            f"{tasks.done}/{tasks.planned} tasks; elapsed {duration(elapsed_s)}; "
            f"ETA {'<= ' + duration(eta) if math.isfinite(eta) else 'after the first task'}")


def duration(seconds: float) -> str:
    """``95`` -> ``'1m35s'``; ``3700`` -> ``'1h01m40s'``."""
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    return f"{m}m{s:02d}s" if m else f"{s}s"


class SearchProgress(Callback):
    """Tune callback: per-task lines, status lines, and each trial's last known state.

    ``total``: the trials the search will run; ``num_tasks``: tasks per trial;
    ``status_lines``: False prints only the per-task and error lines (``--quiet``).

    Its work per event does not grow with the trials (a search of 10,000 trials runs about
    70,000 of Tune's steps): the counts are tallies kept as trials start and end, and Tune's
    whole trial list is read only at the first step (the trials a ``--resume`` restored) and
    with each timed status line.
    """

    def __init__(self, *, total: int, num_tasks: int, every_s: float = STATUS_EVERY_S,
                 status_lines: bool = True) -> None:
        self.total = total
        self.num_tasks = num_tasks
        self.every_s = every_s
        self.status_lines = status_lines
        self.states: dict[str, str] = {}  # trial id -> Tune's status as last seen while running
        self.ended: dict[str, str] = {}  # trial id -> COMPLETE / PRUNED / ERROR, as Tune reported it
        self.tasks_done: dict[str, int] = {}
        self.task_seconds: list[float] = []
        self._start = time.monotonic()
        self._reset_run()

    def _reset_run(self) -> None:
        """What one run (the first, or a --resume) counts afresh; the tallies from the dicts."""
        self._last_status = time.monotonic()
        self._most_running = 0
        self._scanned = False
        self._tally = Counter(self.ended.values())
        self._tally.update(s for t, s in self.states.items() if t not in self.ended)
        self._tasks = sum(self.tasks_done.values())
        self._tasks_ended = sum(n for t, n in self.tasks_done.items() if t in self.ended)
        self._seconds = sum(self.task_seconds)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state: dict) -> None:
        # Tune pickles the callbacks with the Tuner and restores them on --resume: a new run,
        # with its own clock
        self.__dict__.update(state)
        self._start = time.monotonic()
        self._reset_run()

    # ------------------------------------------------------------ the tallies
    def _set_state(self, trial_id: str, status: str) -> None:
        if trial_id in self.ended:
            return
        old = self.states.get(trial_id)
        if old is not None:
            self._tally[old] -= 1
        self.states[trial_id] = status
        self._tally[status] += 1

    def _set_tasks(self, trial_id: str, tasks: int) -> None:
        old = self.tasks_done.get(trial_id, 0)
        self.tasks_done[trial_id] = tasks
        self._tasks += tasks - old
        if trial_id in self.ended:
            self._tasks_ended += tasks - old

    def _end(self, trial_id: str, verdict: str) -> None:
        if trial_id in self.ended:
            self._tally[self.ended[trial_id]] -= 1
        else:
            old = self.states.get(trial_id)
            if old is not None:
                self._tally[old] -= 1
            self._tasks_ended += self.tasks_done.get(trial_id, 0)
        self.ended[trial_id] = verdict
        self.states[trial_id] = "ERROR" if verdict == "ERROR" else "TERMINATED"
        self._tally[verdict] += 1

    # ------------------------------------------------------------ Tune's events
    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        timed = self.status_lines and time.monotonic() - self._last_status >= self.every_s
        if not self._scanned or timed:
            self._scan(trials)
        if timed:
            self.print_status()

    def _scan(self, trials: list) -> None:
        """Every trial as Tune lists it: those a --resume restored, and any event missed."""
        self._scanned = True
        for trial in trials:
            tid = trial.trial_id
            if tid not in self.tasks_done:
                last = trial.last_result or {}
                self._set_tasks(tid, int(last.get(TIME_ATTR, 0) or 0))
            if tid in self.ended:
                continue
            if trial.status == "TERMINATED":  # finished before a --resume
                self._end(tid, self._verdict(self.tasks_done[tid]))
            elif trial.status == "ERROR":
                self._end(tid, "ERROR")
            else:
                self._set_state(tid, trial.status)
        self._most_running = max(self._most_running, self._tally["RUNNING"])

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self._set_state(trial.trial_id, "RUNNING")
        self._most_running = max(self._most_running, self._tally["RUNNING"])

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        self._set_state(trial.trial_id, "PENDING")  # its worker died: it waits to be retried

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        if TIME_ATTR not in result:
            return
        self._set_tasks(trial.trial_id, int(result[TIME_ATTR]))
        if "task_seconds" in result:
            self.task_seconds.append(float(result["task_seconds"]))
            self._seconds += self.task_seconds[-1]
        print(f"[marktune] {trial.trial_id} task {result[TIME_ATTR]}/{self.num_tasks}: "
              f"mean val acc {result[METRIC]:.4f}, mean test acc {result['mean_test_acc']:.4f}, "
              f"BWT {result['bwt_test']:+.4f} ({result.get('task_seconds', 0):.1f} s, "
              f"{result.get('device', '?')})", flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        last = trial.last_result or {}
        if TIME_ATTR in last:
            self._set_tasks(trial.trial_id, int(last[TIME_ATTR]))
        self._end(trial.trial_id, self._verdict(self.tasks_done.get(trial.trial_id, 0)))
        if self.status_lines:
            self.print_status()

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._end(trial.trial_id, "ERROR")
        print(f"[marktune] {trial.trial_id} failed: {error_reason(trial)}", flush=True)
        if self.status_lines:
            self.print_status()

    # ------------------------------------------------------------ what it knows
    def _verdict(self, tasks_done: int) -> str:
        return decide_status(errored=False, tasks_done=tasks_done, num_tasks=self.num_tasks, interrupted=False).value

    def counts(self) -> TrialCounts:
        tally = self._tally
        known = len(self.states)
        live = known - len(self.ended)
        return TrialCounts(complete=tally["COMPLETE"], pruned=tally["PRUNED"], errored=tally["ERROR"],
                           running=tally["RUNNING"], pending=live - tally["RUNNING"] + max(0, self.total - known),
                           total=max(self.total, known))

    def tasks(self, counts: TrialCounts) -> TaskCounts:
        unfinished_trials = counts.total - len(self.ended)
        seconds = self._seconds / len(self.task_seconds) if self.task_seconds else math.nan
        # the most trials seen running at once, not the count of this instant: between one
        # trial's end and the next one's start the ETA would double
        self._most_running = max(self._most_running, counts.running)
        return TaskCounts(done=self._tasks, planned=self._tasks_ended + unfinished_trials * self.num_tasks,
                          seconds_per_task=seconds, running=max(1, min(self._most_running, counts.unfinished)))

    def print_status(self) -> None:
        counts = self.counts()
        print(f"[marktune] {status_line(counts, self.tasks(counts), elapsed_s=time.monotonic() - self._start)}",
              flush=True)
        self._last_status = time.monotonic()
