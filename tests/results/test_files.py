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


# ---------------------------------------------------------------- atomic writes (issue 19)
def _full_disk_on_fsync(monkeypatch):
    import errno
    import os

    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", fsync)


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary_file(tmp_path, monkeypatch):
    import pytest

    from marktune.results.files import atomic_output, is_disk_full, write_atomic

    target = tmp_path / "trials.csv"
    write_atomic(target, "old\n")
    assert target.read_text() == "old\n"
    _full_disk_on_fsync(monkeypatch)
    with pytest.raises(OSError) as err:
        write_atomic(target, "new, longer content\n" * 100)
    assert is_disk_full(err.value)
    with pytest.raises(RuntimeError):
        with atomic_output(target) as f:
            f.write("half")
            raise RuntimeError("the writer crashed")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trials.csv"]
    monkeypatch.undo()
    write_atomic(target, b"bytes\n")
    assert target.read_bytes() == b"bytes\n" and oct(target.stat().st_mode & 0o777) != "0o600"


def test_the_search_s_and_evaluation_s_files_survive_a_full_disk(tmp_path, monkeypatch):
    """trials.csv, best_config.yaml, evaluation.csv, evaluation.json and report figures are
    written through the helper: a full disk mid-write leaves each as it was."""
    import pytest

    from marktune.results import conclusions, figures
    from marktune.results.evaluation_table import write_csv
    from marktune.results.summary import TrialRow, write_outputs

    rows = [TrialRow(trial_id="a", status="COMPLETE", tasks_done=5, val_acc=0.8, test_acc=0.79, bwt=-0.01,
                     params={"lr": 0.1}, config={"lr": 0.1})]
    write_outputs(rows, tmp_path, searched=["lr"], space_name="s")
    write_csv([{"configuration": "best"}], tmp_path / "evaluation.csv")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(before) == {"trials.csv", "best_config.yaml", "evaluation.csv"}
    _full_disk_on_fsync(monkeypatch)
    rows[0].val_acc, rows[0].trial_id = 0.9, "b"
    with pytest.raises(OSError):
        write_outputs(rows, tmp_path, searched=["lr"], space_name="s")
    with pytest.raises(OSError):
        write_csv([{"configuration": "other"}] * 50, tmp_path / "evaluation.csv")
    with pytest.raises(OSError):
        figures.write_atomic(tmp_path / "curves.png", b"png")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert conclusions.write_atomic is figures.write_atomic  # the report and the evaluation use it too
