"""The confirmation stage's bookkeeping: finalists, seeds, the verdict, its file, and what the
summary and evaluate read from it."""
import csv
import math

import yaml

from marktune.results.confirmation import (CONFIRMATION_FILE, ConfirmationPlan, best_by_mean, confirmation_seeds,
                                           plan_confirmation, read_confirmation)
from marktune.results.summary import TrialRow, mark_confirmed, write_outputs


def _row(tid, val, status="COMPLETE", seed=0):
    return TrialRow(trial_id=tid, status=status, tasks_done=5 if status == "COMPLETE" else 2, val_acc=val,
                    test_acc=val - 0.01, bwt=0.0, params={"lr": 0.1}, config={"seed": seed, "lr": 0.1, "tid": tid})


def test_finalists_are_the_top_complete_trials_and_seeds_avoid_the_searchs():
    rows = [_row("a", 0.99), _row("b", 0.98), _row("c", 0.97), _row("d", 0.96)]
    plan = plan_confirmation(rows, top=3, seeds=2)
    assert [f.trial_id for f in plan.finalists] == ["a", "b", "c"]
    assert plan.seeds == (1, 2) and plan.runs == 6
    assert plan_confirmation(rows, top=0, seeds=2) is None
    assert plan_confirmation([], top=3, seeds=2) is None
    # a search whose trials used seeds 0 and 1: the extra seeds are new ones
    mixed = [_row("a", 0.99, seed=0), _row("b", 0.98, seed=1)]
    assert plan_confirmation(mixed, top=2, seeds=2).seeds == (2, 3)
    assert confirmation_seeds(5, 3) == (6, 7, 8)


def test_the_winner_is_the_best_mean_over_all_seeds_the_searchs_included():
    plan = plan_confirmation([_row("a", 0.99), _row("b", 0.97)], top=2, seeds=2)
    runs = {("a", 1): (0.95, 0.9), ("a", 2): (0.96, 0.9), ("b", 1): (0.98, 0.9), ("b", 2): (0.98, 0.9)}
    verdict = plan.decide(runs)
    assert verdict.search_pick == "a" and verdict.winner == "b"
    b = verdict.of("b")
    assert b.seeds == (0, 1, 2) and b.vals == (0.97, 0.98, 0.98)
    assert math.isclose(b.mean, (0.97 + 0.98 + 0.98) / 3)
    assert math.isclose(b.se, math.sqrt(((0.97 - b.mean) ** 2 + 2 * (0.98 - b.mean) ** 2) / 2 / 3))
    assert [c.trial_id for c in verdict.ranked()] == ["b", "a"]
    assert "the winner is b" in verdict.sentence() and "one-seed pick a" in verdict.sentence()
    # a run that failed (missing) takes its finalist out of the running
    runs.pop(("b", 2))
    assert plan.decide(runs).winner == "a"
    assert best_by_mean([("x", [math.nan]), ("y", [math.inf, 0.1])]) is None
    # a tie goes to the first listed (the better one-seed value)
    assert best_by_mean([("x", [0.9, 0.8]), ("y", [0.8, 0.9])]) == "x"


def test_the_plan_and_verdict_survive_their_file(tmp_path):
    plan = plan_confirmation([_row("a", 0.99), _row("b", 0.97)], top=2, seeds=1)
    (tmp_path / CONFIRMATION_FILE).write_text(plan.to_json())
    again = read_confirmation(tmp_path)
    assert again == plan and again.verdict == {}
    verdict = plan.decide({("a", 1): (0.9, 0.9), ("b", 1): (0.99, 0.9)})
    (tmp_path / CONFIRMATION_FILE).write_text(plan.to_json(verdict))
    assert read_confirmation(tmp_path).verdict["ranking"] == ["b", "a"]
    assert read_confirmation(tmp_path / "nowhere") is None


def test_trials_csv_and_best_config_name_the_confirmed_winner(tmp_path):
    rows = [_row("a", 0.99), _row("b", 0.97), _row("c", 0.5, status="PRUNED")]
    plan = plan_confirmation(rows[:2], top=2, seeds=2)
    verdict = plan.decide({("a", 1): (0.9, 0.9), ("a", 2): (0.9, 0.9), ("b", 1): (0.98, 0.9), ("b", 2): (0.97, 0.9)})
    mark_confirmed(rows, verdict)
    best = write_outputs(rows, tmp_path, searched=["lr"], space_name="s")
    chosen = yaml.safe_load(best.read_text())
    assert chosen["trial_id"] == "b" and chosen["config"]["tid"] == "b"
    assert chosen["confirm_seeds"] == 3 and math.isclose(chosen["confirm_val_mean"], (0.97 + 0.98 + 0.97) / 3)
    assert "confirmation's winner" in best.read_text()
    with open(tmp_path / "trials.csv") as f:
        table = {r["trial_id"]: r for r in csv.DictReader(f)}
    assert table["b"]["confirmed"] == "winner" and table["a"]["confirmed"] == "finalist"
    assert table["c"]["confirmed"] == "" and table["c"]["confirm_seeds"] == ""
    assert float(table["a"]["confirm_val_mean"]) == 0.93
    # without a verdict the one-seed best is written, as before
    plain = [_row("a", 0.99), _row("b", 0.97)]
    assert yaml.safe_load(write_outputs(plain, tmp_path / "plain", searched=["lr"],
                                        space_name="s").read_text())["trial_id"] == "a"


def test_docstring_examples_run():
    import doctest

    from marktune.results import confirmation

    failures, tried = doctest.testmod(confirmation)
    assert tried > 0 and failures == 0


# ---------------------------------------------------------------- damaged or foreign state (issue 48, item 2)
def _recorded(tmp_path):
    plan = plan_confirmation([_row("a", 0.99), _row("b", 0.97)], top=2, seeds=2)
    verdict = plan.decide({("a", 1): (0.9, 0.9), ("a", 2): (0.9, 0.9), ("b", 1): (0.99, 0.9), ("b", 2): (0.99, 0.9)})
    (tmp_path / CONFIRMATION_FILE).write_text(plan.to_json(verdict))
    return plan


import json  # noqa: E402

import pytest  # noqa: E402

from marktune.results.confirmation import ConfirmationError  # noqa: E402


@pytest.mark.parametrize("damage, message", [
    (lambda d: "{\"seeds\": [1, 2], \"finali", "cannot be read as the confirmation stage's record"),
    (lambda d: "", "cannot be read"),
    (lambda d: json.dumps({**d, "winner": "zz"}), "its winner zz is not one of its finalists"),
    (lambda d: json.dumps({**d, "seeds": [0, 1]}), "also one of its extra seeds"),
    (lambda d: json.dumps({**d, "finalists": d["finalists"] * 2}), "names a finalist or a seed twice"),
    (lambda d: json.dumps({**d, "ranking": ["zz", "a"]}), "its ranking names a trial that is not a finalist"),
])
def test_a_damaged_confirmation_record_is_refused_naming_the_file_and_the_repair(tmp_path, damage, message):
    _recorded(tmp_path)
    path = tmp_path / CONFIRMATION_FILE
    path.write_text(damage(json.loads(path.read_text())))
    with pytest.raises(ConfirmationError, match=message) as err:
        read_confirmation(tmp_path)
    assert str(path) in str(err.value) and "--replan-confirmation" in str(err.value)


def test_a_finalist_that_is_not_a_complete_trial_of_this_search_is_refused(tmp_path):
    _recorded(tmp_path)
    complete = {"a": {"seed": 0}, "b": {"seed": 0}}
    assert read_confirmation(tmp_path, complete=complete).verdict["winner"] == "b"
    with pytest.raises(ConfirmationError, match="finalist b is not a complete trial of this search"):
        read_confirmation(tmp_path, complete={"a": {"seed": 0}, "c": {"seed": 0}})
    with pytest.raises(ConfirmationError, match="finalist a's seed \\(0\\) is not the seed its trial ran at \\(7\\)"):
        read_confirmation(tmp_path, complete={"a": {"seed": 7}, "b": {"seed": 0}})
