"""The end-of-search rows, on Tune's results faked (no Ray): what an interrupted search must and
must not call its trials."""
from __future__ import annotations

import doctest
import math
from types import SimpleNamespace

from marktune.mark.metrics import METRIC, TIME_ATTR
from marktune.results import summary as summary_module
from marktune.results.summary import format_table, trial_rows, unfinished


def test_docstring_examples_run():
    failures, tried = doctest.testmod(summary_module)
    assert tried > 0 and failures == 0


def _result(tid: str, tasks: int, *, config=None, error=None):
    metrics = {"trial_id": tid, TIME_ATTR: tasks, METRIC: 0.5 + tasks / 100, "mean_test_acc": 0.5,
               "bwt_test": 0.0} if tasks else {}
    return SimpleNamespace(metrics=metrics, config=config, error=error, path=f"/x/trial_{tid}")


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
