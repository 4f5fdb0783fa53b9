"""Several objectives: parsing --objectives, non-dominated ranks, the epsilon-net order, and the
Pareto set a multi-objective search reports."""
import csv
import doctest
import math

import pytest

from marktune.results import objectives as objs
from marktune.results.noise import SeedNoise
from marktune.results.objectives import (ObjectiveError, minimised, nondominated_order, nondominated_ranks,
                                         parse_objectives)
from marktune.results.summary import TrialRow, format_front, mark_fronts, write_outputs


def test_docstring_examples_run():
    assert doctest.testmod(objs).failed == 0


def test_objectives_parse_with_their_directions_and_bad_lists_are_refused_saying_how():
    assert [o.name for o in parse_objectives(None)] == ["val_acc"]
    got = parse_objectives("params, val_acc,forgetting")
    assert [o.name for o in got] == ["val_acc", "params", "forgetting"]  # val_acc first
    assert [o.direction for o in got] == ["max", "min", "min"]
    assert [o.metric for o in got] == ["mean_val_acc", "total_params", "forgetting_val"]
    with pytest.raises(ObjectiveError, match="unknown objective 'size'; choose from val_acc, params"):
        parse_objectives("val_acc,size")
    with pytest.raises(ObjectiveError, match="params given twice"):
        parse_objectives("val_acc,params,params")
    with pytest.raises(ObjectiveError, match="must include val_acc"):
        parse_objectives("params,seconds")


def test_ranks_put_trade_offs_on_one_front_and_the_order_spreads_it():
    objectives = parse_objectives("val_acc,params")
    points = [(0.99, 900_000), (0.97, 100_000), (0.98, 500_000), (0.96, 950_000), (0.90, 90_000), (0.985, 480_000)]
    low = minimised(points, objectives)
    # 2 is dominated by 5 (less accurate, bigger); 3 by 0 and by 2; the rest trade accuracy against size
    assert nondominated_ranks(low) == [0, 0, 1, 2, 0, 0]
    order = nondominated_order(low)
    assert order[0] == 0  # the most accurate first
    assert order[1] == 4  # then the farthest from it: the smallest, not its nearest neighbour 5
    assert set(order[:4]) == {0, 1, 4, 5} and order[4:] == [2, 3]


def _row(tid, val, params, se=0.005):
    return TrialRow(trial_id=tid, status="COMPLETE", tasks_done=5, val_acc=val, test_acc=val, bwt=0.0,
                    params={}, config={}, val_se=se, values=(val, params))


def test_the_pareto_set_and_the_trials_within_its_noise_reach_trials_csv(tmp_path):
    objectives = parse_objectives("val_acc,params")
    rows = [_row("big", 0.99, 900_000), _row("small", 0.95, 100_000), _row("close", 0.985, 950_000),
            _row("far", 0.80, 960_000),
            TrialRow(trial_id="cut", status="PRUNED", tasks_done=2, val_acc=0.5, test_acc=0.5, bwt=0.0,
                     params={}, config={}, values=(0.5, 10.0))]
    front = mark_fronts(rows, objectives, noise=SeedNoise(seed_sd=0.0))
    assert [r.trial_id for r in front] == ["big", "small"]  # most accurate first; a pruned trial never
    by = {r.trial_id: r for r in rows}
    assert by["close"].front == 1 and by["close"].near_front  # 0.005 behind: inside 2 x sqrt(2) x 0.005
    assert by["far"].front == 2 and not by["far"].near_front
    assert by["cut"].front is None
    text = format_front(front, [by["close"]], objectives)
    assert "900,000" in text and "near" in text.splitlines()[-1]
    write_outputs(rows, tmp_path, searched=[], space_name="s", objectives=objectives)
    with open(tmp_path / "trials.csv") as f:
        table = {r["trial_id"]: r for r in csv.DictReader(f)}
    assert table["big"]["front"] == "0" and table["close"]["front"] == "1" and table["close"]["near_front"] == "yes"
    assert float(table["small"]["params"]) == 100_000 and table["cut"]["front"] == ""
    # a single-objective search's trials.csv has no such columns
    write_outputs(rows, tmp_path / "one", searched=[], space_name="s")
    with open(tmp_path / "one" / "trials.csv") as f:
        assert "front" not in next(csv.reader(f))
    assert math.isfinite(front[0].val_se)


def test_a_member_is_beaten_only_by_a_no_larger_rival_better_beyond_the_paired_interval():
    from marktune.results.objectives import front_on_fresh_seeds

    def rows(label, values):
        return [{"configuration": label, "data_seed": 0, "seed": s, "test_acc": v} for s, v in enumerate(values)]

    table = (rows("small", [0.90, 0.91, 0.92]) + rows("big", [0.95, 0.96, 0.97]) + rows("default", [0.93, 0.95, 0.94])
             + rows("noisy", [0.80, 0.99, 0.90]))
    got = {v.label: v for v in front_on_fresh_seeds(table, [("small", 1000), ("big", 5000), ("noisy", 1000)],
                                                     rivals=[("default", 900)])}
    assert got["small"].beaten_by == ("default",)  # smaller and better on every pair
    assert got["big"].stays  # "default" is smaller but not better beyond the interval
    assert got["noisy"].stays and abs(got["noisy"].mean - (0.80 + 0.99 + 0.90) / 3) < 1e-12  # a wide interval: no verdict
