"""first-k and --benchmark on real data: a tiny first-k search on digits (3 of 5 tasks), evaluated
on the whole digits stream and on Fashion-MNIST; the report rendered in headless Chromium."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from conftest import headless_chromium, run_search, tiny_digits_space
from marktune.cli import evaluate; from marktune.cli import report
from marktune.data.benchmarks import DatasetMissingError, check_dataset

K, T = 3, 5
# one ablation, not all three: the first-k evaluation is checked run by run, whatever the
# configuration, and the ablations' settings are checked in tests/cli/test_evaluate_report.py;
# each ablation left out is 2 runs (one a seed) fewer
ONE_ABLATION = ["--ablations", "none"]


@pytest.fixture(scope="module")
def first_k(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("firstk")
    space = tiny_digits_space(
        tmp / "tiny_digits.yaml", fixed={"kb_grad_clip": 1.0, "max_train_per_task": 200, "max_test_per_task": 100},
        # grace_period = k: ASHA has no rung below max_t, so every trial runs its k tasks
        defaults={"samples": 3, "grace_period": K, "reduction_factor": 2, "cpus_per_trial": 1})
    return run_search(["--space", str(space), "--storage", str(tmp / "s"), "--name", "fk", "--num-cpus", "2",
                       "--seed", "0", "-q", "--protocol", "first-k", "--tuning-tasks", str(K)], top=3)


def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_first_k_search_trials_run_k_tasks_and_evaluation_runs_all(first_k):
    trials = sorted(first_k.glob("trial_*"))
    assert len(trials) == 3
    for trial in trials:
        lines = [json.loads(ln) for ln in (trial / "result.json").read_text().splitlines() if ln.strip()]
        assert [r["tasks_done"] for r in lines] == list(range(1, K + 1))  # exactly k tasks, none more
        assert lines[-1]["stream_tasks"] == T and len(lines[-1]["test_row"]) == K
    assert json.loads((first_k / "marktune_search.json").read_text())["protocol"] == "first-k"

    assert evaluate.main([str(first_k), "--top", "2", "--seeds", "2", "--num-cpus", "2", "-q", *ONE_ABLATION]) == 0
    runs = _rows(first_k / "evaluation.csv")
    assert runs and all(r["status"] == "COMPLETE" and int(r["tasks_done"]) == T for r in runs)
    assert {int(r["data_seed"]) for r in runs} == {0}  # the searched order, 2 fresh initialisations
    for r in runs:
        matrix = json.loads(r["test_matrix"])
        assert len(matrix) == T
        last = matrix[-1]
        # the same float64 values averaged in another order: round-off only
        assert float(r["heldout_test_acc"]) == pytest.approx(sum(last[K:]) / (T - K), abs=1e-12)
        assert float(r["test_acc"]) == pytest.approx(sum(last) / T, abs=1e-9)  # the runner's own mean (float32 rows)
    md = (first_k / "evaluation.md").read_text()
    sentence = md.splitlines()[0]
    assert sentence.startswith("On 2 seeds x 1 order, the best configuration ") and f"held-out tasks {K + 1}-{T}" in sentence
    assert "held-out ACC (%)" in md and "first-k: selected on tasks 1-3 of 5" in md
    assert sentence in (first_k / "best_config.yaml").read_text()


@pytest.mark.slow
def test_digits_search_evaluated_on_fmnist(first_k):
    try:
        check_dataset("fmnist")
    except DatasetMissingError:
        pytest.skip("Fashion-MNIST is not on this machine (Debian: apt-get install dataset-fashion-mnist)")
    assert evaluate.main([str(first_k), "--benchmark", "fmnist", "--top", "1", "--seeds", "1", "--num-cpus", "2",
                          "--ablations", "none", "-q"]) == 0  # best 1, the default, one ablation
    runs = _rows(first_k / "evaluations" / "first-k-on-fmnist.csv")
    assert len(runs) == 3 and all(r["benchmark"] == "fmnist" and r["status"] == "COMPLETE" for r in runs)
    assert (first_k / "evaluation.md").read_text().splitlines()[0].startswith(
        "On 1 seed x 1 order of fmnist (searched on digits), the best configuration")


@pytest.mark.slow
def test_report_opens_with_the_verdict_in_chromium(first_k, tmp_path):
    if not (first_k / "evaluations" / "first-k.csv").is_file():
        assert evaluate.main([str(first_k), "--top", "2", "--seeds", "2", "--num-cpus", "2", "-q", *ONE_ABLATION]) == 0
    sentence = (first_k / "evaluation.md").read_text().splitlines()[0]
    assert report.main([str(first_k)]) == 0
    page = (first_k / "report.html").read_text()
    assert "id='paired-table'" in page and "id='protocol-gap-table'" in page
    dom = headless_chromium(first_k / "report.html", tmp_path, "--dump-dom")
    body = dom[dom.index("<body"):]
    verdict = body.index("id=\"verdict\"")
    assert sentence in body[verdict:verdict + 1000]  # the rendered page opens with it
    assert verdict < body.index("id=\"best-trials\"")
    assert "held-out tasks 4-5" in body[body.index("id=\"protocol-gap-table\""):]
