"""Every number that sizes work is bounded before any work (issue 48, item 3): a stage that cannot
finish is refused at the start, in words, with nothing written and Ray never started."""
from __future__ import annotations

import pytest

from marktune.cli import evaluate, search

from test_search_guards import T, _complete_experiment, _files, no_ray  # noqa: F401 - a fixture


@pytest.mark.parametrize("flags, message", [
    (["--confirm-seeds", "100000000000"], "is 200,000,000,000 runs"),  # hung the driver past Ctrl-C
    (["--confirm-top", "2", "--confirm-seeds", "100000"], "is 200,000 runs"),
    (["--samples", "10000000000"], "--samples 10000000000 is 10,000,000,000 runs"),
    (["--top", "-1"], "--top must be >= 1 (got -1)"),
    (["--confirm-top", "5"], "--confirm-top 5 is more than the search's 2 trials"),
    (["--seed", "4294967294", "--confirm-top", "1"], "the confirmation's last seed 4294967298"),
])
def test_a_search_whose_counts_cannot_finish_is_refused_before_any_work(tmp_path, capsys, no_ray, flags, message):
    storage = tmp_path / "st"
    code = search.main([*T, "--storage", str(storage), *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not storage.exists()


def test_the_space_s_confirmation_shrinks_to_a_smaller_search(tmp_path):
    from marktune.cli.search import build_parser, plan_from_args

    plan = plan_from_args(build_parser().parse_args([*T, "--storage", str(tmp_path)]))  # digits: top 3, 2 trials
    assert plan.samples == 2 and plan.confirm_top == 2


def test_an_evaluation_too_large_to_finish_is_refused_before_ray(tmp_path, capsys, no_ray):
    exp = _complete_experiment(tmp_path)
    before = _files(tmp_path)
    code = evaluate.main([str(exp), "--num-cpus", "2", "--seeds", "100000000000", "--ablations", ""])
    err = capsys.readouterr().err
    assert code == 2 and "x --seeds 100000000000 is" in err and "Traceback" not in err, err
    assert _files(tmp_path) == before


def test_a_space_that_searches_the_number_of_tasks_is_refused(tmp_path, capsys, no_ray):
    space = tmp_path / "tasks.yaml"
    space.write_text("benchmark: digits\nsearch:\n  num_tasks: {type: choice, values: [2, 5]}\n"
                     "  lr_meta: {type: loguniform, low: 0.001, high: 0.1}\n")
    code = search.main(["--space", str(space), "--storage", str(tmp_path / "st"), "--num-cpus", "2", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "num_tasks cannot be searched" in err and "Traceback" not in err, err
    assert not (tmp_path / "st").exists()
