"""The search's noise floor: the binomial SE from validation counts, the space's seed SD, and
which trials the summary marks as tied with the best (hand-made rows, no Ray)."""
from __future__ import annotations

import csv
import doctest
import math
from types import SimpleNamespace

import pytest

from marktune.mark.metrics import METRIC, TIME_ATTR
from marktune.results import noise as noise_module
from marktune.results.noise import SeedNoise, binomial_se
from marktune.results.summary import format_table, mark_ties, trial_rows, write_outputs


def test_docstring_examples_run():
    failures, tried = doctest.testmod(noise_module)
    assert tried > 0 and failures == 0


def _results(counts_per_task):
    """Three complete trials over two tasks, 0.95 / 0.94 / 0.90 mean validation ACC; each scored
    on ``counts_per_task`` images a task (None: an experiment from before counts were reported)."""
    out = []
    for tid, row in (("best", [0.96, 0.94]), ("near", [0.95, 0.93]), ("far", [0.91, 0.89])):
        metrics = {"trial_id": tid, TIME_ATTR: 2, METRIC: sum(row) / 2, "mean_test_acc": 0.9, "bwt_test": 0.0,
                   "val_row": row}
        if counts_per_task is not None:
            metrics["val_counts"] = [counts_per_task] * 2
            metrics["val_images"] = 2 * counts_per_task
        out.append(SimpleNamespace(metrics=metrics, config={"lr_meta": 0.1}, error=None, path=f"/x/trial_{tid}"))
    return out


def test_few_validation_images_make_a_close_trial_tied_many_do_not(tmp_path):
    # 150 images a task: SE ~ 0.012, margin ~ 0.034 > 0.01 apart: tied; 0.05 apart is not
    rows = trial_rows(_results(150), searched=["lr_meta"], num_tasks=2)
    ties = mark_ties(rows)
    assert {r.trial_id: r.tied for r in rows} == {"best": "best", "near": "tied", "far": "no"}
    assert ties.best == "best" and ties.tied == ("near",) and ties.images == 300
    sentence = ties.sentence("results/x")
    assert "1 trial is within the noise of the best, best" in sentence
    assert "on 300 validation images" in sentence and "seed-to-seed SD unknown" in sentence
    assert "python -m marktune.evaluate results/x --top 2 --seeds 3" in sentence
    table = format_table(rows, ["lr_meta"], top=5)
    head, _, first, second, third = table.splitlines()
    assert head.split()[8] == "tied" and "best" in first and " tied " in second and "tied" not in third
    # the same accuracies on 100,000 images a task: SE ~ 0.0005, 0.01 apart is no tie
    rows = trial_rows(_results(100_000), searched=["lr_meta"], num_tasks=2)
    ties = mark_ties(rows)
    assert ties.tied == () and [r.tied for r in rows] == ["best", "no", "no"]
    assert ties.sentence("results/x").startswith("No trial is within the noise of the best, best")
    # trials.csv carries it, after error (readers take the columns between bwt and error as settings)
    write_outputs(rows, tmp_path, searched=["lr_meta"], space_name="s")
    with open(tmp_path / "trials.csv") as f:
        head = next(csv.reader(f))
    assert head[head.index("bwt") + 1: head.index("error")] == ["lr_meta"] and head[head.index("error") + 3] == "tied"
    with open(tmp_path / "trials.csv") as f:
        assert [r["tied"] for r in csv.DictReader(f)] == ["best", "no", "no"]


def test_a_measured_seed_sd_widens_the_noise():
    rows = trial_rows(_results(100_000), searched=["lr_meta"], num_tasks=2)
    ties = mark_ties(rows, noise=SeedNoise(seed_sd=0.011, measured="docs/results/x.md"))
    assert ties.tied == ("near",)  # 0.01 < 2 * sqrt(2) * 0.011
    assert "seed-to-seed SD 0.0110 (measured: docs/results/x.md)" in ties.sentence("x")


def test_old_experiments_without_counts_say_unknown_and_mark_nothing():
    rows = trial_rows(_results(None), searched=["lr_meta"], num_tasks=2)
    assert all(math.isnan(r.val_se) and r.val_images is None for r in rows)
    ties = mark_ties(rows)
    assert ties.tied == () and [r.tied for r in rows] == ["best", "", ""]
    assert "binomial SE unknown" in ties.sentence("x") and "no trial is marked" in ties.sentence("x")
    assert mark_ties(rows[:1]).sentence("x").startswith("The best, best, is the only complete trial")
    # a seed SD alone is enough to mark ties
    assert mark_ties(rows, noise=SeedNoise(seed_sd=0.011, measured="m.md")).tied == ("near",)


def test_binomial_se_is_the_mean_over_tasks():
    # sqrt(0.5*0.5/100 + 0.9*0.1/400) / 2
    assert binomial_se([0.5, 0.9], [100, 400]) == pytest.approx(math.sqrt(0.0025 + 0.000225) / 2)


def test_a_trial_reports_the_validation_images_of_the_tasks_seen():
    from marktune.data import load_benchmark_for
    from marktune.mark.config import MarkConfig
    from marktune.mark.learner import MarkLearner
    from marktune.results.noise import scored_from_result
    from marktune.results.records import results_dict, task_scalars

    cfg = MarkConfig(benchmark="synthetic", num_tasks=2, epochs=1, kb_epochs=1, kb_grad_clip=1.0, meta_epochs=1,
                     mini_tasks=2, inner_steps=1, kb_width=8, latent_dim=16, fe_channels=8, batch_size=16)
    benchmark = load_benchmark_for(cfg)
    sizes = [len(task.val) for task in benchmark.tasks[:2]]
    learner = MarkLearner(cfg, benchmark, verbose=0)
    first = learner.train_next_task()
    assert first.val_counts == sizes[:1] and task_scalars(first)["val_images"] == sizes[0]
    second = learner.train_next_task()
    scalars = task_scalars(second)  # what runners/mark_sequence.py reports, with val_counts
    assert second.val_counts == sizes and scalars["val_images"] == sum(sizes)
    assert results_dict(learner)["val_counts"] == sizes  # marktune.run's results.json
    scored = scored_from_result("t", {**scalars, "val_row": second.val_row, "val_counts": second.val_counts})
    assert scored.images == sum(sizes) and scored.se == pytest.approx(binomial_se(second.val_row, sizes))


def test_the_evaluate_command_reaches_the_last_tied_trial():
    from marktune.results.noise import Scored, find_ties

    # b is closer but measured precisely (not tied); c is further but on few images (tied):
    # marktune.evaluate --top takes the best-ranked, so it must reach c, the third
    ties = find_ties([Scored("a", 0.99, 0.001, 10_000), Scored("b", 0.985, 0.001, 10_000),
                      Scored("c", 0.98, 0.02, 50)], seed_sd=None)
    assert ties.tied == ("c",) and "--top 3 --seeds 3" in ties.sentence("x")
