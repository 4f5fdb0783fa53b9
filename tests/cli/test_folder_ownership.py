"""No command writes into, moves or renames a folder another command owns, --overwrite or not
(issue 48, item 1): an evaluation named after its own search experiment, a run into a search
experiment, a search into a run's folder. In-process; Ray never starts."""
from __future__ import annotations

import doctest
import json
from pathlib import Path

import pytest

from marktune.cli import evaluate, run, search
from marktune.tune.folders import ownership
from marktune.tune.folders.ownership import MARKER, claim, folder_kind

from test_search_guards import T, _complete_experiment, _files, no_ray  # noqa: F401 - a fixture

TINY = ["--benchmark", "synthetic", "--set", "num_tasks=1", "--set", "epochs=1", "--set", "meta_epochs=1",
        "--set", "mini_tasks=2", "--set", "inner_steps=2", "--set", "kb_width=8", "--set", "latent_dim=16",
        "--set", "fe_channels=8", "--set", "synthetic_images_per_class=40", "--set", "batch_size=32", "-q"]


def _search_experiment(tmp_path: Path) -> Path:
    exp = _complete_experiment(tmp_path)
    claim(exp, "search")  # what every search writes first
    return exp


def test_the_examples_run_and_old_folders_are_known_by_their_files(tmp_path):
    assert doctest.testmod(ownership).failed == 0
    old_search, old_run, plain = tmp_path / "s", tmp_path / "r", tmp_path / "p"
    for folder in (old_search, old_run, plain):
        folder.mkdir()
    (old_search / "marktune_search.json").write_text("{}")
    (old_run / "results.json").write_text("{}")
    (plain / "experiment_state-x.json").write_text("{}")  # Tune's state alone: an evaluation has it too
    assert [folder_kind(f) for f in (old_search, old_run, plain, tmp_path / "none")] == ["search", "run", None, None]


def test_an_evaluation_named_after_its_own_search_experiment_is_refused_and_moves_nothing(tmp_path, capsys, no_ray):
    exp = _search_experiment(tmp_path)
    before = _files(tmp_path)
    for extra in ([], ["--overwrite"]):
        code = evaluate.main([str(exp), "--storage", str(exp.parent), "--name", exp.name, "--num-cpus", "2",
                              "--seeds", "1", "--ablations", "", *extra])
        err = capsys.readouterr().err
        assert code == 2 and f"--name {exp} is a search experiment" in err and "Traceback" not in err, err
        assert _files(tmp_path) == before  # not renamed, nothing written into it, no lock left
    assert not [p for p in tmp_path.rglob("*") if ".replaced-" in p.name]


def test_a_run_into_a_search_experiment_is_refused_with_or_without_overwrite(tmp_path, capsys, monkeypatch):
    exp = _search_experiment(tmp_path)
    before = _files(tmp_path)
    monkeypatch.setattr(run, "load_benchmark_for", lambda *a, **k: pytest.fail("data loaded"))
    for extra in ([], ["--overwrite"]):
        assert run.main([*TINY, "--out", str(exp), *extra]) == 2
        err = capsys.readouterr().err
        assert f"--out {exp} is a search experiment" in err and "marktune.run never writes into" in err
    assert run.main([*TINY, "--out", str(exp / "inside")]) == 2  # nested in it: refused too
    assert "lies inside" in capsys.readouterr().err
    assert _files(tmp_path) == before


def test_a_run_claims_its_folder_first_and_overwrite_moves_only_a_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert run.main([*TINY, "--out", str(out)]) == 0
    assert json.loads((out / MARKER).read_text()) == {"kind": "run"}
    assert run.main([*TINY, "--out", str(out), "--overwrite"]) == 0
    assert "--overwrite: moved the run in" in capsys.readouterr().out


def test_a_search_into_or_inside_a_run_s_folder_is_refused_before_ray(tmp_path, capsys, no_ray):
    folder = tmp_path / "runs" / "r1"
    claim(folder, "run")
    (folder / "results.json").write_text("{}")
    before = _files(tmp_path)
    assert search.main([*T, "--storage", str(folder)]) == 2
    assert f"--storage {folder} is a run's output" in capsys.readouterr().err
    assert search.main([*T, "--storage", str(folder.parent), "--name", "r1"]) == 2
    assert f"--name {folder} is a run's output" in capsys.readouterr().err
    assert _files(tmp_path) == before
