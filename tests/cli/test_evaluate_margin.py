"""evaluate's non-inferiority margin: checked before anything runs, defaulted from the space's noise."""
from types import SimpleNamespace

import pytest

from marktune.cli import evaluate
from marktune.results.noise import SeedNoise


@pytest.mark.parametrize("value, said", [("-1", "must be a finite number of points >= 0, such as 0.5 (got -1)"),
                                         ("half", "expected a number of points such as 0.5, got 'half'"),
                                         ("nan", "must be a finite number of points >= 0")])
def test_a_negative_or_non_numeric_margin_is_refused_in_words(capsys, value, said):
    with pytest.raises(SystemExit) as stop:
        evaluate.build_parser().parse_args(["some/experiment", "--margin", value])
    assert stop.value.code == 2 and said in capsys.readouterr().err


def test_the_margin_is_the_flag_else_the_space_s_seed_sd_else_one_point():
    noisy = SimpleNamespace(space=SimpleNamespace(noise=SeedNoise(seed_sd=0.024, measured="docs/x.md")))
    assert evaluate.evaluation_margin(noisy, 0.5) == (0.005, "--margin")
    assert evaluate.evaluation_margin(noisy, None) == (0.024, "the space's seed-to-seed SD (docs/x.md)")
    quiet = SimpleNamespace(space=SimpleNamespace(noise=SeedNoise()))
    assert evaluate.evaluation_margin(quiet, None)[0] == 0.01
    assert evaluate.evaluation_margin(SimpleNamespace(space=None), None)[0] == 0.01
