"""State is checked, not trusted (issue 48, item 2): a damaged or foreign confirmation.json and a
deleted winner are refused in words by evaluate and report before any work, never evaluated or
named in their place. In-process; Ray never starts."""
from __future__ import annotations

import json
import shutil

import yaml

from marktune.cli import evaluate, report
from marktune.results.confirmation import CONFIRMATION_FILE
from marktune.results.experiment_reader import load_experiment

from test_search_guards import _complete_experiment, _files, no_ray  # noqa: F401 - a fixture

EVALUATE = ["--num-cpus", "2", "--seeds", "1", "--ablations", ""]


def _confirmation(exp, finalists, winner):
    trials = {t.trial_id: t for t in load_experiment(exp).trials}
    (exp / CONFIRMATION_FILE).write_text(json.dumps({
        "seeds": [1], "winner": winner, "ranking": [winner],
        "finalists": [{"trial_id": f, "search_val": 0.9, "search_test": 0.9,
                       "config": trials[f].config if f in trials else {"seed": 0}} for f in finalists]}))


def test_a_confirmation_naming_a_trial_that_is_not_a_finalist_of_this_search_is_refused(tmp_path, capsys, no_ray):
    exp = _complete_experiment(tmp_path)
    _confirmation(exp, ["aaaa0002", "zzzz9999"], "zzzz9999")  # a foreign trial named the winner
    before = _files(tmp_path)
    assert evaluate.main([str(exp), *EVALUATE]) == 2
    err = capsys.readouterr().err
    assert "finalist zzzz9999 is not a complete trial of this search" in err and "--replan-confirmation" in err
    assert report.main([str(exp)]) == 2
    assert "finalist zzzz9999 is not a complete trial" in capsys.readouterr().err
    assert _files(tmp_path) == before  # nothing written: no verdict under a wrong winner


def test_a_truncated_confirmation_is_refused_not_ignored(tmp_path, capsys, no_ray):
    exp = _complete_experiment(tmp_path)
    _confirmation(exp, ["aaaa0001", "aaaa0002"], "aaaa0002")
    text = (exp / CONFIRMATION_FILE).read_text()
    (exp / CONFIRMATION_FILE).write_text(text[: len(text) // 2])
    assert evaluate.main([str(exp), *EVALUATE]) == 2
    assert "cannot be read as the confirmation stage's record" in capsys.readouterr().err


def test_a_deleted_winner_is_reported_missing_and_nothing_is_evaluated_in_its_place(tmp_path, capsys, no_ray):
    exp = _complete_experiment(tmp_path)
    (exp / "best_config.yaml").write_text(yaml.safe_dump({"trial_id": "aaaa0001", "config": {}}))
    shutil.rmtree(exp / "trial_aaaa0001")
    trial = next(t for t in load_experiment(exp).trials if t.trial_id == "aaaa0001")
    assert trial.status == "MISSING" and "trial_aaaa0001 is missing" in trial.error  # not "PRUNED 0/5"
    before = _files(tmp_path)
    assert evaluate.main([str(exp), *EVALUATE]) == 2
    err = capsys.readouterr().err
    assert "best_config.yaml names trial aaaa0001 as the search's winner" in err and "restore it" in err
    assert _files(tmp_path) == before


def test_the_report_shows_the_confirmation_s_finalists_means_and_winner(tmp_path, no_ray):
    from marktune.results.confirmation import plan_confirmation
    from marktune.results.html import build_report, Importances
    from marktune.tune.spaces import load_experiment_with_space

    exp = _complete_experiment(tmp_path)
    complete = [t for t in load_experiment(exp).best_complete(2)]
    plan = plan_confirmation(complete, top=2, seeds=2)
    page = lambda: build_report(load_experiment_with_space(exp), importances=Importances(None, "none")).read_text()  # noqa: E731
    assert "id='confirmation'" not in page()  # no stage: no section
    (exp / CONFIRMATION_FILE).write_text(plan.to_json())
    assert "Planned, not finished: finalists aaaa0001, aaaa0002 at seeds 1, 2" in page()
    verdict = plan.decide({("aaaa0001", 1): (0.80, 0.8), ("aaaa0001", 2): (0.80, 0.8),
                           ("aaaa0002", 1): (0.90, 0.8), ("aaaa0002", 2): (0.90, 0.8)})
    (exp / CONFIRMATION_FILE).write_text(plan.to_json(verdict))
    text = page()
    assert "the winner is <b>aaaa0002</b>" in text and "one-seed pick was aaaa0001" in text
    row = text.split("id='confirmation-table'")[1].split("<td class='l'>aaaa0002</td>")[1].split("</tr>")[0]
    assert "<td>0.8667</td>" in row and "winner" in row  # mean of 0.80 (its search value), 0.90, 0.90


def test_the_report_of_a_search_that_still_runs_does_not_call_it_interrupted(tmp_path, capsys):
    from test_evaluate_report import _digits_base, _fake_experiment

    from marktune.tune.folders.lock import ExperimentLock

    exp = _fake_experiment(tmp_path / "live", {"aaaa0001": ("TERMINATED", 5, 0.9), "aaaa0002": ("RUNNING", 2, 0.8)},
                           base=_digits_base(), searched={"lr_meta": [0.01, 0.02]})
    assert report.main([str(exp)]) == 0
    assert "interrupted search: 1 unfinished" in capsys.readouterr().out  # nobody runs it: interrupted
    with ExperimentLock(exp, what="search", command="python -m marktune.search --name live"):
        assert report.main([str(exp)]) == 0
        out = capsys.readouterr().out
    assert "search still running (a search (pid" in out and "interrupted" not in out
    assert "Search still running" in (exp / "report.html").read_text()


def test_resuming_a_finished_search_says_so_without_starting_ray(tmp_path):
    from marktune.cli import search
    from marktune.tune.folders.search_state import finished_words

    exp = tmp_path / "st" / "done"
    exp.mkdir(parents=True)
    (exp / "best_config.yaml").write_text("trial_id: a\n")

    def plan(*extra):
        return search.plan_from_args(search.build_parser().parse_args(
            ["--space", "digits", "--samples", "2", "--resume", "--name", "done", "--storage", str(tmp_path / "st"),
             *extra]))

    def table(*statuses):
        (exp / "trials.csv").write_text("trial_id,status\n" + "".join(f"t{i},{s}\n" for i, s in enumerate(statuses)))

    table("COMPLETE", "PRUNED")
    assert finished_words(plan("--confirm-top", "0")).startswith(f"experiment {exp} has finished")
    assert finished_words(plan()) == ""  # the space's confirmation has not run: resume runs it
    table("COMPLETE", "RUNNING")
    assert finished_words(plan("--confirm-top", "0")) == ""  # a trial was cut short: resume it


def test_replan_confirmation_moves_a_damaged_record_aside_and_never_over_an_earlier_one(tmp_path):
    import pytest

    from marktune.cli import search
    from marktune.results.confirmation import ConfirmationError
    from marktune.tune.folders.search_state import replan_or_check_confirmation

    exp = tmp_path / "st" / "exp"
    exp.mkdir(parents=True)
    plan = search.plan_from_args(search.build_parser().parse_args(
        ["--space", "digits", "--resume", "--name", "exp", "--storage", str(tmp_path / "st")]))
    for text in ("{broken", "{also broken"):
        (exp / CONFIRMATION_FILE).write_text(text)
        with pytest.raises(ConfirmationError, match="cannot be read"):
            replan_or_check_confirmation(plan, replan=False)
        replan_or_check_confirmation(plan, replan=True)  # moved aside: nothing left to check
        assert not (exp / CONFIRMATION_FILE).exists()
    aside = sorted(p.read_text() for p in exp.glob(f"{CONFIRMATION_FILE}.replaced-*"))
    assert aside == ["{also broken", "{broken"]  # both kept, the second not written over the first
