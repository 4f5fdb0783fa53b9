"""The search's end summary on Tune's results faked (no Ray): the noise floor and the trials tied
with the best, printed under the table and written to trials.csv."""
from __future__ import annotations

import csv
import dataclasses
from types import SimpleNamespace

import pytest

from marktune.cli import search
from marktune.results.noise import SeedNoise
from marktune.tune.runs.search_run import SearchRun


def _run(tmp_path, vals, counts):
    results = []
    for i, val in enumerate(vals):
        tid = f"t{i}"
        metrics = {"trial_id": tid, "tasks_done": 2, "mean_val_acc": val, "mean_test_acc": val, "bwt_test": 0.0,
                   "val_row": [val, val], "val_counts": [counts, counts], "val_images": 2 * counts}
        results.append(SimpleNamespace(metrics=metrics, config={"lr_meta": 0.01 * (i + 1)}, error=None,
                                       path=str(tmp_path / f"trial_{tid}")))
    return SearchRun(results=results, experiment=str(tmp_path / "s" / "x"), study=None, states={})


@pytest.mark.parametrize("counts, tied", [(100, ["t1"]), (100_000, [])])
def test_summary_says_which_trials_are_within_the_noise(tmp_path, capsys, counts, tied):
    plan = search.plan_from_args(search.build_parser().parse_args(
        ["--space", "digits", "--samples", "3", "--storage", str(tmp_path / "s"), "--name", "x", "--set",
         "num_tasks=2"]))
    plan = dataclasses.replace(plan, space=dataclasses.replace(plan.space, noise=SeedNoise()))  # SD unknown
    search.summarize(_run(tmp_path, [0.95, 0.94, 0.80], counts), plan, top=5)
    out = capsys.readouterr().out
    assert "tied" in next(ln for ln in out.splitlines() if ln.startswith("trial ")).split()  # the table's head
    with open(plan.local_dir() / "trials.csv") as f:
        marks = {r["trial_id"]: r["tied"] for r in csv.DictReader(f)}
    assert marks == {"t0": "best", "t1": "tied" if tied else "no", "t2": "no"}
    if tied:
        assert (f"1 trial is within the noise of the best, t0 (binomial SE 0.0154 on {2 * counts:,} validation "
                "images; seed-to-seed SD unknown): t1. Tell them apart on fresh seeds: python -m "
                f"marktune.evaluate {plan.local_dir()} --top 2 --seeds 3") in out
    else:
        assert "No trial is within the noise of the best, t0" in out
    # the space's measured seed SD goes into the rule: 0.01 apart is then within the noise
    measured = dataclasses.replace(plan, space=dataclasses.replace(
        plan.space, noise=SeedNoise(seed_sd=0.011, measured="docs/results/m.md")))
    search.summarize(_run(tmp_path, [0.95, 0.94, 0.80], counts), measured, top=5)
    assert "seed-to-seed SD 0.0110 (measured: docs/results/m.md)): t1." in capsys.readouterr().out
