"""The search's summary names the cheapest trial within the noise of the best (issue 50)."""
import csv
import math

from marktune.results.noise import SeedNoise
from marktune.results.summary import TrialRow, cheapest_sentence, cheapest_tied, mark_ties, write_outputs


def _row(trial_id, val, flops, status="COMPLETE"):
    return TrialRow(trial_id, status, 5, val, val, 0.0, {}, {}, val_se=0.005, val_images=400, train_flops=flops)


def test_the_cheapest_tied_trial_is_named_with_its_flops_ratio():
    rows = [_row("best", 0.95, 8e11), _row("cheap", 0.945, 2e11), _row("cheaper", 0.80, 1e11)]
    mark_ties(rows, noise=SeedNoise(seed_sd=0.01))
    assert [r.tied for r in rows] == ["best", "tied", "no"]
    assert cheapest_tied(rows).trial_id == "cheap"  # "cheaper" is not within the noise of the best
    assert cheapest_sentence(rows) == ("the cheapest trial within the noise of the best: cheap, val ACC 0.9450 "
                                       "against 0.9500, at 25 % of the best's training FLOPs (2e+11 against 8e+11)")


def test_no_sentence_when_the_best_is_the_cheapest_or_flops_are_unknown():
    rows = [_row("best", 0.95, 1e11), _row("dear", 0.945, 2e11)]
    mark_ties(rows, noise=SeedNoise(seed_sd=0.01))
    assert cheapest_sentence(rows) == ""
    unknown = [_row("best", 0.95, math.nan), _row("other", 0.945, math.nan)]
    mark_ties(unknown, noise=SeedNoise(seed_sd=0.01))
    assert cheapest_tied(unknown) is None


def test_trials_csv_has_the_flops_column(tmp_path):
    rows = [_row("a", 0.95, 8e11), _row("b", 0.5, math.nan, status="ERROR")]
    write_outputs(rows, tmp_path, searched=[], space_name="x")
    with open(tmp_path / "trials.csv") as f:
        table = list(csv.DictReader(f))
    assert [t["train_flops"] for t in table] == ["800000000000", ""]
