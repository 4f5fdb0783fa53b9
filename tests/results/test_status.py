"""A trial's status: one rule for the search's table and for an experiment read back."""
from __future__ import annotations

import doctest
import json
from types import SimpleNamespace

from marktune.results import status
from marktune.results.status import TrialStatus, decide_status
from marktune.results.summary import trial_rows
from marktune.tune.spaces import load_experiment_with_space
from tests.cli.test_evaluate_report import _digits_base, _fake_experiment


def test_docstring_examples_run():
    failures, tried = doctest.testmod(status)
    assert tried > 0 and failures == 0


def test_every_case():
    def decide(**kw):
        return decide_status(**{"errored": False, "tasks_done": 2, "num_tasks": 5, "interrupted": False, **kw})

    assert decide(errored=True, tasks_done=5) == TrialStatus.ERROR
    assert decide(tasks_done=5) == decide(tasks_done=5, interrupted=True) == TrialStatus.COMPLETE
    assert decide() == TrialStatus.PRUNED
    assert decide(interrupted=True) == TrialStatus.RUNNING
    assert decide(tasks_done=0, interrupted=True) == TrialStatus.PENDING
    assert decide(tasks_done=0, interrupted=True, never_reported=TrialStatus.MISSING) == TrialStatus.MISSING
    assert decide(tasks_done=0, num_tasks=0) == TrialStatus.PRUNED  # no task count known: never complete
    assert str(TrialStatus.COMPLETE) == "COMPLETE"


def test_the_search_and_the_experiment_agree(tmp_path):
    """An interrupted search's trials, as the search's table and as evaluate/report read them."""
    trials = {"done": ("TERMINATED", 5, 0.9), "asha": ("TERMINATED", 2, 0.5), "cut": ("RUNNING", 3, 0.8),
              "last": ("RUNNING", 5, 0.85)}  # "last" reported every task just before the Ctrl-C
    root = _fake_experiment(tmp_path / "digits-20260101-000000", trials, base=_digits_base(),
                            searched={"lr_meta": [0.01, 0.02, 0.03, 0.04]})
    read_back = {t.trial_id: t.status for t in load_experiment_with_space(root).trials}
    results = []
    for tid, (_, tasks, val) in trials.items():
        last = json.loads((root / f"trial_{tid}" / "result.json").read_text().splitlines()[-1])
        results.append(SimpleNamespace(metrics={"trial_id": tid, **last}, config=None, error=None,
                                       path=str(root / f"trial_{tid}")))
    table = {r.trial_id: r.status for r in trial_rows(results, searched=["lr_meta"], num_tasks=5,
                                                      interrupted=lambda tid: trials[tid][0] == "RUNNING")}
    assert read_back == table == {"done": "COMPLETE", "asha": "PRUNED", "cut": "RUNNING", "last": "COMPLETE"}
