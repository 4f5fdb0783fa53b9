"""``--resume --name X``: the settings a search started with come back from the experiment."""
from __future__ import annotations

import pytest

from marktune import search
from marktune.search import SearchError


def _args(argv):
    args = search.build_parser().parse_args(argv)
    return search.apply_saved_settings(args, search.given_flags(argv))


def test_resume_takes_space_samples_and_seed_from_the_experiment(tmp_path):
    start = _args(["--space", "digits", "--samples", "3", "--seed", "7", "--set", "epochs=1",
                   "--storage", str(tmp_path), "--name", "x"])
    plan = search.plan_from_args(start)
    search.save_settings(plan, start, str(tmp_path / "x"))

    resumed = _args(["--resume", "--name", "x", "--storage", str(tmp_path)])
    assert (resumed.space, resumed.samples, resumed.seed, resumed.overrides) == ("digits", 3, 7, ["epochs=1"])
    assert search.plan_from_args(resumed).samples == 3
    # the same values given again are fine; different ones are refused, naming the flag
    assert _args(["--resume", "--name", "x", "--storage", str(tmp_path), "--samples", "3"]).samples == 3
    with pytest.raises(SearchError, match="--samples 3"):
        _args(["--resume", "--name", "x", "--storage", str(tmp_path), "--samples", "8"])
    with pytest.raises(SearchError, match="--space 'digits'"):
        _args(["--resume", "--name", "x", "--storage", str(tmp_path), "--space", "fmnist"])


def test_resume_without_saved_settings_keeps_the_flags(tmp_path):
    (tmp_path / "old").mkdir()
    args = _args(["--resume", "--name", "old", "--storage", str(tmp_path), "--samples", "5"])
    assert args.samples == 5 and args.space == "fmnist"


def test_resume_refuses_another_max_failures(tmp_path):
    start = _args(["--space", "digits", "--max-failures", "3", "--storage", str(tmp_path), "--name", "x"])
    search.save_settings(search.plan_from_args(start), start, str(tmp_path / "x"))
    assert _args(["--resume", "--name", "x", "--storage", str(tmp_path)]).max_failures == 3
    with pytest.raises(SearchError, match="--max-failures 3"):
        _args(["--resume", "--name", "x", "--storage", str(tmp_path), "--max-failures", "1"])
