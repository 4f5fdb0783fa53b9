"""The experiment's files: the one reader of result.json and of marktune_search.json."""
from __future__ import annotations

import doctest
import json

from marktune.results import files
from marktune.results.files import SETTINGS_FILE, last_per_task, read_results, read_settings, task_results


def test_docstring_examples_run():
    failures, tried = doctest.testmod(files)
    assert tried > 0 and failures == 0


def test_result_json_torn_line_foreign_lines_and_a_retried_trial(tmp_path):
    lines = [json.dumps({"tasks_done": 1, "v": 0.1}), "[1, 2]", json.dumps({"other": 1}),
             json.dumps({"tasks_done": 2, "v": 0.2}),
             json.dumps({"tasks_done": 2, "v": 0.3}),  # the task again, from a checkpoint
             '{"tasks_done": 3, "v']  # cut off by a crash
    (tmp_path / "result.json").write_text("\n".join(lines))
    assert [r["v"] for r in read_results(tmp_path / "result.json")] == [0.1, 0.2, 0.3]
    assert [r["v"] for r in task_results(tmp_path)] == [0.1, 0.3]
    assert last_per_task([]) == []
    assert read_results(tmp_path / "none.json") == [] and task_results(tmp_path / "none") == []


def test_settings_file_read_back_or_none(tmp_path):
    assert read_settings(tmp_path) is None
    (tmp_path / SETTINGS_FILE).write_text("[1]")
    assert read_settings(tmp_path) is None
    (tmp_path / SETTINGS_FILE).write_text("{not json")
    assert read_settings(tmp_path) is None
    (tmp_path / SETTINGS_FILE).write_text(json.dumps({"space": "digits"}))
    assert read_settings(tmp_path) == {"space": "digits"}
