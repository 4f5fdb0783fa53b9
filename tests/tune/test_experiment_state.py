"""Experiment state that survives a copy, a full disk and an untrusted directory (issue 19).

No Ray starts here: the pre-flight checks are called directly or through ``marktune.cli.search.main``
with Ray's start-up replaced by a failure."""
from __future__ import annotations

import json
import pickle

import pytest

from marktune.cli import search
from marktune.results.files import CHECKPOINT_TASKS_FILE, SETTINGS_FILE
from marktune.tune.folders.experiment import (DiskFull, check_free_space, check_resumable, disk_full_of,
                                             missing_results, missing_results_note, restore_kept_state, keep_state,
                                             whole)
from marktune.tune.plan import PlanError
from marktune.tune.folders.search_settings import save_settings


def _plan(tmp_path, name="exp", *extra):
    args = search.build_parser().parse_args(["--space", "digits", "--storage", str(tmp_path), "--name", name, *extra])
    return search.plan_from_args(args)


@pytest.fixture
def no_ray(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started")
    monkeypatch.setattr(search, "start_ray", refuse)


# ---------------------------------------------------------------- 6: only marktune's experiments are unpickled
class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib
        return (pathlib.Path.write_text, (pathlib.Path(self.marker), "ran"))


def test_resume_refuses_a_directory_marktune_s_settings_do_not_identify(tmp_path, capsys, no_ray):
    """A directory with Tune's pickles but no (or a foreign, or another study's) marktune_search.json
    is refused before Tune unpickles anything: the crafted tuner.pkl never runs."""
    exp = tmp_path / "exp"
    exp.mkdir()
    marker = tmp_path / "payload-ran"
    (exp / "tuner.pkl").write_bytes(pickle.dumps(_Payload(str(marker))))
    (exp / "experiment_state-2026.json").write_text("{}")
    argv = ["--space", "digits", "--resume", "--name", "exp", "--storage", str(tmp_path)]
    assert search.main(argv) == 2
    err = capsys.readouterr().err
    assert "not an experiment marktune can resume" in err and "no readable marktune_search.json" in err
    (exp / SETTINGS_FILE).write_text(json.dumps({"hello": 1}))
    with pytest.raises(PlanError, match="not a marktune search's settings"):
        check_resumable(str(tmp_path), "exp")
    save_settings(_plan(tmp_path, "other"), str(exp))  # a settings file of another study
    with pytest.raises(PlanError, match="started as the search 'other'"):
        check_resumable(str(tmp_path), "exp")
    assert search.main(argv) == 2 and "started as the search 'other'" in capsys.readouterr().err
    assert not marker.exists()
    save_settings(_plan(tmp_path, "exp"), str(exp))
    check_resumable(str(tmp_path), "exp")  # identified: passes


def test_run_search_itself_checks_before_tune_restores(tmp_path, monkeypatch):
    """run_search (callable without the pre-flight) refuses too, before Tuner.restore."""
    from marktune.tune.runs import search_run

    (tmp_path / "exp").mkdir()
    plan = _plan(tmp_path, "exp", "--resume")
    monkeypatch.setattr(search_run, "prepare_tune", lambda **k: 0.0)
    with pytest.raises(PlanError, match="not an experiment marktune can resume"):
        search_run.run_search(plan)


# ---------------------------------------------------------------- 3: a full disk
def test_a_storage_folder_with_too_little_free_space_is_refused_before_ray(tmp_path, monkeypatch, capsys, no_ray):


    with pytest.raises(PlanError, match=r"only .* free on its disk; a search needs at least"):
        check_free_space(str(tmp_path), minimum=2**62)
    check_free_space(str(tmp_path))  # this disk has room
    check_free_space("s3://bucket/x", minimum=2**62)  # not checked
    monkeypatch.setattr("marktune.tune.folders.experiment.MIN_FREE_BYTES", 2**62)
    assert search.main(["--space", "digits", "--storage", str(tmp_path), "--name", "x"]) == 2
    assert "free on its disk" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_an_enospc_while_the_search_runs_is_one_message_naming_the_folder_and_resume(tmp_path, monkeypatch,
                                                                                    capsys):
    """A full disk in the writer (here: saving marktune_search.json) ends run_search with DiskFull:
    one message with the folder, its free space and the --resume command; no traceback."""
    import errno

    from marktune.tune.runs import search_run

    plan = _plan(tmp_path, "exp")
    monkeypatch.setattr(search_run, "prepare_tune", lambda **k: 0.0)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(search_run, "save_settings", full)
    with pytest.raises(DiskFull) as caught:
        search_run.run_search(plan)
    message = str(caught.value)
    assert str(tmp_path / "exp") in message and " free" in message and "Make room" in message
    assert f"--resume --name exp --storage {tmp_path}" in message
    assert caught.value.code == f"error: {message}"  # what Python prints as it exits, status 1
    # Ray's and pyarrow's wrappers keep only the text
    assert disk_full_of(RuntimeError("OSError: [Errno 28] Error writing bytes to file"), plan) is not None
    assert disk_full_of(ValueError("bad"), plan) is None


def test_tune_state_files_cut_short_by_a_full_disk_are_put_back_from_their_kept_copy(tmp_path, capsys):
    exp = tmp_path / "exp"
    exp.mkdir()
    state = exp / "experiment_state-2026-12-01_07-59-05.json"
    searcher = exp / "searcher-state-2026-12-01_07-59-05.pkl"
    state.write_text(json.dumps({"trial_data": [1, 2, 3]}))
    searcher.write_bytes(pickle.dumps({"a": list(range(100))}))
    generator = exp / "search_gen_state-2026-12-01_07-59-05.json"  # Tune's: a pickle, despite its name
    generator.write_bytes(pickle.dumps({"counter": 2}))
    assert keep_state(exp) == 3 and keep_state(exp) == 0
    generator.write_bytes(generator.read_bytes()[:-3])
    good_state, good_searcher = state.read_bytes(), searcher.read_bytes()
    state.write_bytes(good_state[:10])  # what the 3 MiB tmpfs left (Tune copies in place)
    searcher.write_bytes(good_searcher[:20])
    assert not whole(state) and not whole(searcher)
    assert keep_state(exp) == 0  # a cut file never replaces its whole copy
    notes = restore_kept_state(exp)
    assert len(notes) == 3 and all("cut short" in n and "torn-" in n for n in notes), notes
    assert state.read_bytes() == good_state and searcher.read_bytes() == good_searcher
    assert len(list(exp.glob("*.torn-*"))) == 3 and whole(generator)
    assert restore_kept_state(exp) == []


# ---------------------------------------------------------------- 5: missing results are named
def _trial(exp, tid, tasks, *, checkpoint_tasks=None):
    trial = exp / f"trial_{tid}"
    trial.mkdir(parents=True)
    (trial / "params.json").write_text(json.dumps({"benchmark": "digits", "num_tasks": 5, "marktune_runtime": {}}))
    (trial / "result.json").write_text("".join(
        json.dumps({"tasks_done": t, "num_tasks": 5, "mean_val_acc": t / 10, "val_row": [t / 10] * t,
                    "test_row": [t / 10] * t}) + "\n" for t in tasks))
    if checkpoint_tasks:
        cp = trial / f"checkpoint_{checkpoint_tasks - 1:06d}"
        cp.mkdir()
        (cp / CHECKPOINT_TASKS_FILE).write_text(json.dumps({"tasks_done": checkpoint_tasks}))
    return trial


def test_lost_rows_are_named_and_curves_keep_their_task_numbers(tmp_path):
    """result.json deleted before --resume: the resumed trial recorded tasks 3-5 only. The report
    plots them at x = 3-5 (not 1-3), the matrix keeps row t at t, and the note names the loss."""
    from marktune.results.experiment_reader import load_experiment
    from marktune.results.figures import figure_curves

    exp = tmp_path / "exp"
    _trial(exp, "a", [3, 4, 5], checkpoint_tasks=5)
    _trial(exp, "b", [1, 2, 3, 4, 5], checkpoint_tasks=5)
    _trial(exp, "c", [], checkpoint_tasks=2)  # result.json emptied, checkpoint holds 2 tasks
    loaded = load_experiment(exp)
    a = next(t for t in loaded.trials if t.trial_id == "a")
    assert a.points() == [(3, 0.3), (4, 0.4), (5, 0.5)] and a.missing_tasks() == [1, 2]
    assert [len(row) for row in a.matrix()] == [0, 0, 3, 4, 5]
    note = loaded.missing_note()
    assert "a (tasks 1-2 of 5: its result.json lacks them)" in note and "b (" not in note
    assert "c (tasks 1-2 of 2: its result.json lacks them)" in note  # known from its checkpoint
    fig = figure_curves(loaded, None)
    xs = {line.get_label().split()[0]: list(line.get_xdata()) for line in fig.axes[0].get_lines()
          if line.get_label() and not line.get_label().startswith("_")}
    assert xs["a"] == [3, 4, 5] and xs["b"] == [1, 2, 3, 4, 5]
    # on --resume: each trial whose result.json lacks tasks its checkpoint holds
    assert missing_results(exp) == [("a", [1, 2], 5), ("c", [1], 2)]
    assert missing_results(exp, ended=True) == [("a", [1, 2], 5), ("c", [1, 2], 2)]
    # c cut short by Ctrl-C: --resume runs its newest checkpoint's task again, so it is not "lost"
    assert missing_results(exp, ended=True, unfinished=frozenset({"c"})) == [("a", [1, 2], 5), ("c", [1], 2)]
    assert "a (tasks 1-2; its checkpoint holds 5)" in missing_results_note(exp)
    # after Ctrl-C the newest checkpoint may be one task ahead of result.json (Tune never
    # registered it, and runs that task again): not a loss
    _trial(exp, "d", [1], checkpoint_tasks=2)
    assert "d" not in [tid for tid, _, _ in missing_results(exp)]


# ---------------------------------------------------------------- 4: a relocatable experiment
def test_the_searcher_s_checkpoint_holds_no_path_and_resumes_on_the_given_study(tmp_path):
    """Tune's searcher-state pickle names "the journal", not its path; restored inside
    resuming(storage) it opens that storage (the copy's), even from an older checkpoint that
    holds the original's absolute path."""
    import optuna

    from marktune.tune.strategy.searcher import make_searcher, resuming
    from marktune.tune.folders.study import StudyStorage

    original = StudyStorage(journal=tmp_path / "st" / "base" / "optuna_journal.log")
    searcher = make_searcher(storage=original, study_name="base", num_tasks=5, seed=0)
    from ray import tune
    searcher.set_search_properties("mean_val_acc", "max", {"x": tune.uniform(0, 1)})
    searcher.suggest("t1")
    state = searcher.__getstate__()
    assert str(tmp_path) not in repr(state["_storage_spec"])
    blob = pickle.dumps(searcher)
    assert str(tmp_path).encode() not in blob
    (tmp_path / "moved" / "base").mkdir(parents=True)
    import shutil
    shutil.copy(original.journal, tmp_path / "moved" / "base" / "optuna_journal.log")
    before = original.journal.read_bytes()
    copy = StudyStorage(journal=tmp_path / "moved" / "base" / "optuna_journal.log")
    with resuming(copy):
        restored = pickle.loads(blob)
        old_style = {**state, "_storage_spec": original}  # what checkpoints held before
        again = make_searcher(storage=copy, study_name="base", num_tasks=5, seed=0)
        again.__setstate__(old_style)
    assert restored.storage == copy and again.storage == copy
    restored.suggest("t2")
    assert original.journal.read_bytes() == before
    assert len(optuna.load_study(study_name="base", storage=copy.open()).trials) == 2
    with pytest.raises(RuntimeError, match="resuming"):
        pickle.loads(blob)  # outside resuming(): no journal to guess


def test_a_full_disk_in_ray_s_logs_stops_the_search_as_ctrl_c_does_and_mutes_the_rest(monkeypatch, capsys):
    import logging
    import signal

    from marktune.tune.folders import state_keeper

    got = []
    previous = signal.signal(signal.SIGINT, lambda *a: got.append("SIGINT"))
    ray_logger = logging.getLogger("ray")
    handler = logging.StreamHandler()
    ray_logger.addHandler(handler)
    try:
        keeper = state_keeper.StateKeeper()
        keeper.setup()
        assert not state_keeper.disk_full_seen()
        ray_logger.warning("an ordinary warning")
        ray_logger.error("OSError: [Errno 28] Error writing bytes to file. Detail: No space left on device")
        ray_logger.error("Trials did not complete: [trial_x]")  # Tune's closing lines, muted too
        state_keeper.stop_watching()
        ray_logger.warning("after the search")
    finally:
        ray_logger.removeHandler(handler)
        signal.signal(signal.SIGINT, previous)
    err = capsys.readouterr().err
    assert got == ["SIGINT"] and state_keeper.disk_full_seen()
    assert "an ordinary warning" in err and "after the search" in err
    assert "Errno 28" not in err and "did not complete" not in err
    assert pickle.loads(pickle.dumps(keeper)).full is False  # nothing of a run rides in tuner.pkl


def test_new_trials_of_a_resumed_experiment_are_pointed_at_it():
    from types import SimpleNamespace

    from pyarrow import fs as pafs

    from marktune.tune.folders import state_keeper

    moved = []
    trial = SimpleNamespace(storage=SimpleNamespace(storage_fs_path="/st", experiment_dir_name="base",
                                                    storage_filesystem=pafs.LocalFileSystem()),
                            set_storage=moved.append)
    state_keeper.relocate(trial)  # not resuming: nothing changes
    with state_keeper.resumed_at("/tmp/moved", "base"):
        state_keeper.relocate(trial)
    assert [(s.storage_fs_path, s.experiment_dir_name) for s in moved] == [("/tmp/moved", "base")]
    assert trial.storage.storage_fs_path == "/st"  # a copy is set, the pickled one is left


def test_keeping_tune_s_state_takes_at_most_a_twentieth_of_the_driver_s_time(monkeypatch, tmp_path):
    """Checking and copying Tune's state grows with the trials (about 37 KB of JSON each): at
    10,000 trials a copy every second would be all the driver does. With a fake clock, a copy
    that costs 0.5 s runs about every 9.5 s; one that costs 10 ms still every second."""
    from marktune.tune.folders import state_keeper

    clock = [0.0]
    monkeypatch.setattr(state_keeper.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(state_keeper, "_experiment_dir", lambda trial: tmp_path)

    def share_copying(cost_s: float) -> tuple[float, int]:
        keeper, copies = state_keeper.StateKeeper(), []

        def keep(directory):
            copies.append(clock[0])
            clock[0] += cost_s
        monkeypatch.setattr(state_keeper, "keep_state", keep)
        start = clock[0]
        while clock[0] - start < 600:  # ten minutes of Tune's steps, one every 50 ms
            keeper.on_step_end(0, ["a trial"])
            clock[0] += 0.05
        return len(copies) * cost_s / (clock[0] - start), len(copies)

    share, copies = share_copying(0.5)
    assert share <= state_keeper.KEEP_SHARE + 0.01 and copies >= 50, (share, copies)
    share, copies = share_copying(0.01)
    assert 550 <= copies <= 600, copies  # cheap: every second, as before
