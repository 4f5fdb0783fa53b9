"""The curves table a search writes (``curves.csv``): one row per (trial, finished task), read
from each trial's own ``result.json``. Hand-made experiment directories, no Ray (milliseconds)."""
from __future__ import annotations

import doctest
import json
import math
from pathlib import Path

from marktune.results import curves as curves_module
from marktune.results.curves import read_curves, write_search_curves
from marktune.results.files import task_results
from marktune.results.summary import TrialRow


def test_docstring_examples_run():
    failures, tried = doctest.testmod(curves_module)
    assert tried > 1 and failures == 0


def _result(task: int, val: float, *, seconds: float = 1.5) -> dict:
    return {"tasks_done": task, "num_tasks": 3, "mean_val_acc": val, "mean_test_acc": val - 0.02,
            "task_seconds": seconds + task, "bwt_test": -0.01}


def _row(trial_id: str, status: str, tasks: int, lr: float) -> TrialRow:
    return TrialRow(trial_id=trial_id, status=status, tasks_done=tasks, val_acc=math.nan, test_acc=math.nan,
                    bwt=math.nan, params={"lr_meta": lr, "mask_activation": "relu"}, config={})


def _experiment(root: Path) -> tuple[Path, list[TrialRow]]:
    root.mkdir()
    lines = {
        # retried from its checkpoint after task 2: tasks 2 and 3 written twice, the last counts;
        # its last line torn (the writer killed mid-write)
        "b_00001": [_result(1, 0.5), _result(2, 0.6), _result(2, 0.61), _result(3, 0.7), _result(3, 0.72)],
        "a_00000": [_result(1, 0.8)],  # stopped by ASHA after one task
        "c_00002": [_result(1, 0.4), _result(2, 0.45)],  # interrupted
    }
    for trial_id, results in lines.items():
        folder = root / f"trial_{trial_id}"
        folder.mkdir()
        text = "".join(json.dumps(r) + "\n" for r in results)
        (folder / "result.json").write_text(text + ('{"tasks_done": 4, "mean_va' if trial_id == "b_00001" else ""))
    rows = [_row("a_00000", "PRUNED", 1, 0.002), _row("b_00001", "COMPLETE", 3, 0.01),
            _row("c_00002", "RUNNING", 2, 0.05), _row("d_00003", "PENDING", 0, 0.03)]  # d never started
    return root, rows


def test_the_table_holds_every_finished_task_of_every_trial_as_its_result_json_says(tmp_path):
    experiment, rows = _experiment(tmp_path / "exp")
    searched = ["lr_meta", "mask_activation"]
    written = write_search_curves(experiment / "curves.csv", rows, searched=searched, experiment=experiment)
    table = read_curves(experiment / "curves.csv")
    assert table.searched == searched and table.rows == written
    # the trials in the order given, each one's tasks in order; the trial that never started has no row
    assert [(r.trial_id, r.task) for r in table.rows] == [("a_00000", 1), ("b_00001", 1), ("b_00001", 2),
                                                          ("b_00001", 3), ("c_00002", 1), ("c_00002", 2)]
    by_trial = {r.trial_id: r for r in rows}
    for row in table.rows:
        reported = {int(r["tasks_done"]): r for r in task_results(experiment / f"trial_{row.trial_id}")}[row.task]
        assert row.val_acc == reported["mean_val_acc"] and row.test_acc == reported["mean_test_acc"]
        assert row.seconds == reported["task_seconds"]
        assert row.status == by_trial[row.trial_id].status and row.params == by_trial[row.trial_id].params
    # the retried trial's repeated tasks: the last value written
    assert [r.val_acc for r in table.rows if r.trial_id == "b_00001"] == [0.5, 0.61, 0.72]


def test_a_search_with_no_results_writes_the_header_only(tmp_path):
    (tmp_path / "exp").mkdir()
    write_search_curves(tmp_path / "exp" / "curves.csv", [_row("a", "PENDING", 0, 0.1)], searched=["lr_meta"],
                        experiment=tmp_path / "exp")
    assert (tmp_path / "exp" / "curves.csv").read_text().splitlines() == [
        "trial_id,status,lr_meta,task,val_acc,test_acc,seconds"]
