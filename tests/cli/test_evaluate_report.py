"""From search to result: ``marktune.evaluate`` and ``marktune.report``.

Quick tests work on experiment directories written by hand (Tune's file layout, no Ray);
the slow ones run a tiny real search on scikit-learn's digits, evaluate it over two fresh
seeds and render the report in headless Chromium.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import headless_chromium, run_search, tiny_digits_space
from marktune.cli import evaluate; from marktune.cli import report
from marktune.mark.config import MarkConfig
from marktune.results import html as report_html
from marktune.results.evaluation_table import aggregate, read_csv
from marktune.results.pareto import parameter_counts
from marktune.tune.spaces import load_experiment_with_space, load_space

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- hand-made experiments
def _result(task: int, num_tasks: int, val: float, counts: int | None = None) -> dict:
    rows = [[val] * (t + 1) for t in range(task)]
    out = {"tasks_done": task, "num_tasks": num_tasks, "mean_val_acc": val, "mean_test_acc": val - 0.01,
           "bwt_test": -0.01, "val_row": rows[-1], "test_row": [v - 0.01 for v in rows[-1]],
           "task_started_at": 100.0 + task, "task_finished_at": 101.0 + task,
           "train_flops": 10 ** 9 * task}  # cumulative (marktune.mark.flops)
    if counts is not None:  # validation images a task (since marktune.results.noise)
        out.update(val_counts=[counts] * task, val_images=counts * task)
    return out


def _fake_experiment(root: Path, trials: dict[str, tuple[str, int, float]], *, base: dict,
                     searched: dict[str, list], num_tasks: int = 5, counts: int | None = None) -> Path:
    """trials: id -> (Tune status, tasks reported, last val acc). Writes Tune's layout; ``counts``:
    validation images per task in each result (None: not reported, as before they were)."""
    root.mkdir(parents=True)
    state = []
    for i, (tid, (status, tasks, val)) in enumerate(trials.items()):
        config = {**base, **{k: v[i % len(v)] for k, v in searched.items()},
                  "marktune_runtime": {"data_dir": None, "download": False, "threads": 1}}
        if status != "NEVER":
            tdir = root / f"trial_{tid}"
            tdir.mkdir()
            (tdir / "params.json").write_text(json.dumps(config))
            (tdir / "result.json").write_text(
                "".join(json.dumps(_result(t, num_tasks, val, counts)) + "\n" for t in range(1, tasks + 1)))
        info = {"trial_id": tid, "trainable_name": "train_mark_sequence", "config": config,
                "status": "PENDING" if status == "NEVER" else status, "relative_logdir": f"trial_{tid}",
                "evaluated_params": {k: config[k] for k in searched}}
        state.append([json.dumps(info), json.dumps({"error_filename": None, "last_result": {}})])
    (root / "experiment_state-2026-01-01_00-00-00.json").write_text(
        json.dumps({"trial_data": state, "runner_data": {}, "stats": {}}))
    return root


def _digits_base(**overrides) -> dict:
    space = load_space("digits")
    return {**space.base_config(), **overrides}


@pytest.fixture
def interrupted(tmp_path):
    trials = {"aaaa0001": ("TERMINATED", 5, 0.90), "aaaa0002": ("TERMINATED", 5, 0.95),
              "aaaa0003": ("TERMINATED", 2, 0.70), "aaaa0004": ("RUNNING", 3, 0.80),
              "aaaa0005": ("NEVER", 0, 0.0)}
    searched = {k: [0.001 * (i + 1) for i in range(5)] for k in ("lr_meta", "meta_step", "lr_mask")}
    searched.update({"mask_hidden": [0, 16], "mask_activation": ["relu", "sigmoid"], "kb_depth": [1, 2, 3],
                     "kb_width": [8, 16], "mini_tasks": [2, 3], "inner_steps": [2, 3]})
    return _fake_experiment(tmp_path / "digits-20260101-000000", trials, base=_digits_base(), searched=searched)


def test_interrupted_search_statuses_and_missing_trials(interrupted):
    exp = load_experiment_with_space(interrupted)
    status = {t.trial_id: t.status for t in exp.trials}
    assert status == {"aaaa0001": "COMPLETE", "aaaa0002": "COMPLETE", "aaaa0003": "PRUNED",
                      "aaaa0004": "RUNNING", "aaaa0005": "MISSING"}
    assert [t.trial_id for t in exp.best_complete(5)] == ["aaaa0002", "aaaa0001"]  # by validation
    note = exp.missing_note()
    assert "aaaa0004" in note and "aaaa0005" in note and "never reported" in note
    # the trials match search_spaces/digits.yaml: its default configuration
    assert exp.space_name == "digits" and exp.overrides == {}
    assert exp.default_config()[0] == load_space("digits").default_trial_config()


def test_default_configuration_rule_with_overrides_and_unknown_space(tmp_path):
    searched = {"lr_meta": [0.001, 0.002], "meta_step": [0.1, 0.2], "lr_mask": [0.01, 0.02],
                "mask_hidden": [0, 16], "mask_activation": ["relu", "sigmoid"], "kb_depth": [1, 2],
                "kb_width": [8, 16], "mini_tasks": [2, 3], "inner_steps": [2, 3]}
    trials = {"b1": ("TERMINATED", 5, 0.9), "b2": ("TERMINATED", 5, 0.8)}
    # `--set epochs=1` in the search: the space's default configuration with that override
    exp = load_experiment_with_space(_fake_experiment(tmp_path / "x1", trials, base=_digits_base(epochs=1), searched=searched))
    assert exp.space_name == "digits" and exp.overrides == {"epochs": 1}
    default = exp.default_config()[0]
    assert default == load_space("digits").default_trial_config({"epochs": 1})
    assert default.mini_tasks == 2  # the space file's fixed value of a searched setting
    # searched settings of no space file: shared settings, learner defaults for the searched ones
    exp = load_experiment_with_space(_fake_experiment(tmp_path / "x2", trials, base=_digits_base(),
                                           searched={"lr_meta": [0.001, 0.002]}))
    assert exp.space is None and exp.searched == ["lr_meta"]
    default, rule = exp.default_config()
    assert default.lr_meta == MarkConfig().lr_meta and default.epochs == 4 and "no space file" in rule


def test_plan_has_top_k_default_and_ablations_with_fresh_seeds(interrupted):
    args = evaluate.build_parser().parse_args([str(interrupted), "--top", "2", "--seeds", "3"])
    plan = evaluate.plan_from_args(args)
    kinds = [c.kind for c in plan.configs]
    assert kinds == ["best", "best", "default", "ablation", "ablation", "ablation"]
    assert plan.configs[0].source_trial == "aaaa0002"
    best = plan.configs[0].config.to_dict()
    # each ablation is the best configuration with exactly one thing removed, said in words
    removed = {"none": {"meta_update": "none"}, "finetune": {"meta_update": "finetune"},
               "nomask": {"use_masks": False}}
    for ablation, (name, change) in zip(plan.configs[3:], removed.items()):
        assert ablation.config.to_dict() == {**best, **change}
        assert f"{name} ablation: " in ablation.label and ablation.source_trial == "aaaa0002"
    assert "no metalearning" in plan.configs[3].label and "no masks" in plan.configs[5].label
    assert len(plan.seeds) == 3 and 0 not in plan.seeds  # the search's seed is never reused


def test_ablations_flag_picks_and_checks_the_ablations(interrupted):
    args = evaluate.build_parser().parse_args([str(interrupted), "--top", "1", "--ablations", "nomask"])
    plan = evaluate.plan_from_args(args)
    assert [c.kind for c in plan.configs] == ["best", "default", "ablation"]
    assert plan.configs[-1].config.use_masks is False
    args = evaluate.build_parser().parse_args([str(interrupted), "--ablations", ""])
    assert [c.kind for c in evaluate.plan_from_args(args).configs][-1] == "default"
    args = evaluate.build_parser().parse_args([str(interrupted), "--ablations", "none,nometa"])
    with pytest.raises(evaluate.EvaluateError, match="unknown ablation.*nometa.*none, finetune, nomask"):
        evaluate.plan_from_args(args)


def test_report_of_an_interrupted_search_says_what_is_missing(interrupted):
    exp = load_experiment_with_space(interrupted)
    page = report.build_report(exp).read_text()
    for anchor in ("id='best-trials'", "id='curves'", "id='accuracy-matrix'", "id='importances'", "id='evaluation'"):
        assert anchor in page
    assert "id='missing-trials'" in page and "aaaa0005" in page
    assert "No Optuna study" in page  # no optuna_journal.log: said, not failed
    assert page.count("data:image/png;base64,") == 3  # curves, matrix, the search's trade-offs
    assert {p.name for p in (interrupted / "figures").glob("*.png")} == {"curves.png", "accuracy_matrix.png",
                                                                         "pareto_search.png"}


def test_report_out_never_replaces_a_file_it_did_not_write_nor_writes_into_another_record(interrupted, tmp_path,
                                                                                            capsys):
    """The folder rule for report --out (marktune/tune/folders): its own report is rewritten; a
    file it did not write, a folder, and a folder holding another run's or experiment's record
    are refused, each left as it was."""
    assert report.main([str(interrupted)]) == 0
    assert report.main([str(interrupted), "--out", str(interrupted / "report.html")]) == 0  # its own, again
    page = tmp_path / "page.html"
    assert report.main([str(interrupted), "--out", str(page)]) == 0 and report.main(
        [str(interrupted), "--out", str(page)]) == 0  # a report it wrote elsewhere: rewritten
    capsys.readouterr()
    run = tmp_path / "a-run"
    run.mkdir()
    (run / "results.json").write_text('{"tasks_done": 5, "num_tasks": 5}')
    notes = tmp_path / "notes.html"
    notes.write_text("<p>my notes</p>")
    other = tmp_path / "other-search"
    other.mkdir()
    (other / "marktune_search.json").write_text("{}")
    for out, words in [(run / "results.json", "is not a marktune report"), (run / "report.html", "another run's record"),
                       (notes, "is not a marktune report"), (tmp_path, "is a folder"),
                       (other / "report.html", "another experiment's record")]:
        before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and interrupted not in p.parents}
        assert report.main([str(interrupted), "--out", str(out)]) == 2, out
        err = capsys.readouterr().err
        assert words in err and "give another --out" in err, err
        assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and interrupted not in p.parents} \
            == before


def test_report_pareto_section_on_hand_made_trials(tmp_path):
    # three complete trials: c is bigger (kb_width 16) and no more accurate than b, so only a
    # and b are on the parameters front; trial times make c the slowest
    trials = {"aaaa000a": ("TERMINATED", 5, 0.80), "aaaa000b": ("TERMINATED", 5, 0.90),
              "aaaa000c": ("TERMINATED", 5, 0.85), "aaaa000d": ("TERMINATED", 2, 0.99)}
    exp_dir = _fake_experiment(tmp_path / "digits-20260101-000000", trials,
                               base=_digits_base(kb_depth=1, mask_hidden=0),
                               searched={"kb_width": [8, 8, 16, 8], "lr_meta": [0.01, 0.02, 0.03, 0.04]})
    exp = load_experiment_with_space(exp_dir)
    points = {p.label: p for p in report_html.search_points(exp)}
    assert set(points) == {"aaaa000a", "aaaa000b", "aaaa000c"}  # complete only: not the pruned d
    counts = {p.params for p in points.values()}
    assert points["aaaa000a"].params == points["aaaa000b"].params < points["aaaa000c"].params, counts
    kb, task = parameter_counts(MarkConfig.from_dict(exp.trials[2].config))
    assert points["aaaa000c"].params == kb + 5 * task
    page = report.build_report(exp).read_text()
    table = page[page.index("id='pareto-search-table'"):]
    table = table[:table.index("</table>")]
    rows = {r.split("</td>")[0].split(">")[-1]: r for r in table.split("<tr>")[2:]}
    assert "params" in rows["aaaa000b"].split("<td class='l'>")[-1]
    assert "params" not in rows["aaaa000a"].split("<td class='l'>")[-1]  # b: same size, more accurate
    assert "params" not in rows["aaaa000c"].split("<td class='l'>")[-1]  # bigger and less accurate than b


def test_report_tables_list_the_best_trials_and_every_non_dominated_one_not_all(tmp_path, monkeypatch):
    """At 10,000 trials the page held two tables of 10,000 rows each: they keep the best
    TABLE_ROWS (the best trial and every non-dominated one always) and say where the rest are."""
    monkeypatch.setattr(report_html, "TABLE_ROWS", 3)
    # accuracy falls with the id; the bigger kb_width (16) of the last trial makes it no more
    # accurate and bigger: dominated; the smallest (kb_width 4) and least accurate: non-dominated
    trials = {f"aaaa000{i}": ("TERMINATED", 5, 0.90 - 0.01 * i) for i in range(8)}
    exp_dir = _fake_experiment(tmp_path / "digits-20260101-000000", trials,
                               base=_digits_base(kb_depth=1, mask_hidden=0),
                               searched={"kb_width": [8, 8, 8, 8, 8, 8, 4, 16],
                                         "lr_meta": [0.01 * (i + 1) for i in range(8)]})
    page = report.build_report(load_experiment_with_space(exp_dir)).read_text()

    def listed(table_id: str) -> list[str]:
        table = page[page.index(f"id='{table_id}'"):]
        table = table[:table.index("</table>")]
        return [r.split("</td>")[0].split(">")[-1] for r in table.split("<tr")[2:]]

    assert listed("best-trials-table") == ["aaaa0000", "aaaa0001", "aaaa0002"]
    assert "5 more trials, ranked below these" in page and "trials.csv" in page
    assert listed("pareto-search-table") == ["aaaa0000", "aaaa0001", "aaaa0002", "aaaa0006"]
    assert "4 more, dominated and less accurate than these" in page


@pytest.mark.parametrize("counts, tied", [(60, {"aaaa000b"}), (100_000, set())])
def test_report_marks_the_trials_within_the_noise_of_the_best(tmp_path, counts, tied):
    # 0.90 best, 0.89 one point behind, 0.80 far; 60 images a task: SE ~ 0.017, so b is tied
    trials = {"aaaa000a": ("TERMINATED", 5, 0.90), "aaaa000b": ("TERMINATED", 5, 0.89),
              "aaaa000c": ("TERMINATED", 5, 0.80), "aaaa000d": ("TERMINATED", 2, 0.895)}
    exp_dir = _fake_experiment(tmp_path / "digits-20260101-000000", trials, base=_digits_base(),
                               searched={"lr_meta": [0.01, 0.02, 0.03, 0.04]}, counts=counts)
    exp = load_experiment_with_space(exp_dir)
    page = report.build_report(exp).read_text()
    table = page[page.index("id='best-trials-table'"):]
    table = table[:table.index("</table>")]
    head = [h.split(">")[-1] for h in table.split("<tr")[1].split("</th>")[:-1]]
    rows = {r.split("</td>")[0].split(">")[-1]: [c.split(">")[-1] for c in r.split("</td>")[:-1]]
            for r in table.split("<tr")[2:]}  # <tr class='best'>, <tr class='tied'>, <tr>
    column = head.index("tied")
    assert {tid for tid, cells in rows.items() if cells[column] == "tied"} == tied
    assert rows["aaaa000a"][column] == "best" and rows["aaaa000d"][column] == ""  # pruned: never tied
    flops = head.index("training FLOPs")  # the tasks it ran: 5 and 2
    assert rows["aaaa000a"][flops] == "5e+09" and rows["aaaa000d"][flops] == "2e+09"
    sentence = page[page.index("id='noise-floor'"):].split("</p>")[0]
    assert f"on {5 * counts:,} validation images" in sentence and "seed-to-seed SD unknown" in sentence
    if tied:
        assert "1 trial is within the noise of the best, aaaa000a" in sentence
        assert f"python -m marktune.evaluate {exp_dir.resolve()} --top 2 --seeds 3" in sentence
    else:
        assert "No trial is within the noise of the best, aaaa000a" in sentence


def test_report_of_an_old_search_without_counts_says_the_noise_is_unknown(interrupted, monkeypatch):
    # the digits space states its seed SD: with it, ties come from the seed SD alone
    page = report.build_report(load_experiment_with_space(interrupted)).read_text()
    sentence = page[page.index("id='noise-floor'"):].split("</p>")[0]
    assert "binomial SE unknown" in sentence and "seed-to-seed SD 0.0240 (measured: docs/benchmark.md)" in sentence
    # a space without one: nothing is known of the noise, and no trial is marked as tied
    from marktune.results.noise import SeedNoise
    from marktune.tune import spaces

    load = spaces.load_space
    monkeypatch.setattr(spaces, "load_space", lambda *a, **k: dataclasses.replace(load(*a, **k), noise=SeedNoise()))
    page = report.build_report(load_experiment_with_space(interrupted)).read_text()
    sentence = page[page.index("id='noise-floor'"):].split("</p>")[0]
    assert "binomial SE unknown" in sentence and "no trial is marked as tied" in sentence


@pytest.mark.parametrize("module", ["evaluate", "report"])
def test_missing_or_foreign_directory_is_a_clear_error(module, tmp_path, capsys):
    import ray

    main = {"evaluate": evaluate.main, "report": report.main}[module]
    assert main([str(tmp_path / "nope")]) == 2
    assert "no experiment directory at" in capsys.readouterr().err
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("hello")
    assert main([str(tmp_path / "foreign")]) == 2
    assert "not a marktune search experiment" in capsys.readouterr().err
    other = tmp_path / "other_tune" / "trial_1"
    other.mkdir(parents=True)
    (other / "params.json").write_text(json.dumps({"lr": 0.1}))  # some other Tune experiment
    assert main([str(tmp_path / "other_tune")]) == 2
    assert "not made by runners.mark_sequence" in capsys.readouterr().err
    assert not ray.is_initialized()  # refused before Ray starts


def test_command_line_error_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "marktune.evaluate", str(tmp_path / "missing")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "error: no experiment directory" in proc.stderr


def test_no_complete_trial_is_a_clear_error(tmp_path, capsys):
    exp = _fake_experiment(tmp_path / "e", {"c1": ("TERMINATED", 2, 0.5), "c2": ("RUNNING", 1, 0.4)},
                           base=_digits_base(), searched={"lr_meta": [0.001, 0.002]})
    assert evaluate.main([str(exp)]) == 2
    assert "no trial finished every task" in capsys.readouterr().err


# ---------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A tiny real search on digits (4 trials), then its evaluation over 2 fresh seeds."""
    tmp = tmp_path_factory.mktemp("e2e")
    space = tiny_digits_space(tmp / "tiny_digits.yaml",
                              search={"lr_mask": {"type": "loguniform", "low": 1.0e-2, "high": 3.0e-1}},
                              defaults={"samples": 4, "grace_period": 2, "reduction_factor": 2, "cpus_per_trial": 1})
    # the study in a SQLite database instead of the default journal file
    experiment = run_search(["--space", str(space), "--storage", str(tmp / "s"), "--name", "tiny", "--num-cpus", "2",
                             "--seed", "0", "-q", "--optuna-storage", f"sqlite:///{tmp / 'studies.db'}"], top=4)
    code = evaluate.main([str(experiment), "--top", "2", "--seeds", "2", "--num-cpus", "2", "-q",
                          "--ablations", "none,nomask"])
    assert code == 0
    return experiment


@pytest.mark.slow
def test_study_in_a_sqlite_url_is_read_back_by_a_fresh_process(evaluated):
    """Another process (as optuna-dashboard would) sees every trial with its state and its
    value after every task it ran, from the database alone."""
    code = (
        "import json, optuna, sys\n"
        "study = optuna.load_study(study_name='tiny', storage=sys.argv[1])\n"
        "print(json.dumps([[t.state.name, {str(k): v for k, v in t.intermediate_values.items()}, t.value]"
        " for t in study.trials]))\n")
    proc = subprocess.run([sys.executable, "-c", code, f"sqlite:///{evaluated.parent.parent / 'studies.db'}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    trials = json.loads(proc.stdout.strip().splitlines()[-1])
    exp = load_experiment_with_space(evaluated)
    assert len(trials) == len(exp.trials) == 4
    expected = sorted((t.status, [round(v, 6) for v in t.curve()]) for t in exp.trials)
    seen = sorted((state, [round(values[str(k)], 6) for k in range(1, len(values) + 1)]) for state, values, _ in trials)
    assert seen == expected  # COMPLETE/PRUNED as the experiment says, one value per task run
    for state, values, value in trials:
        if state == "COMPLETE":
            assert value == pytest.approx(values[str(len(values))])
    assert not (evaluated / "optuna_journal.log").exists()  # the URL, not the default journal


@pytest.mark.slow
def test_evaluation_table_has_every_configuration_seed_and_the_ablation(evaluated):
    exp = load_experiment_with_space(evaluated)
    n_best = min(2, len(exp.best_complete(2)))
    with open(evaluated / "evaluation.csv") as f:
        runs = list(csv.DictReader(f))
    configs = list(dict.fromkeys(r["configuration"] for r in runs))
    assert len(configs) == n_best + 3  # the best ones, the default, the two ablations asked for
    kinds = [next(r["kind"] for r in runs if r["configuration"] == c) for c in configs]
    assert kinds == ["best"] * n_best + ["default", "ablation", "ablation"]
    for c in configs:
        mine = [r for r in runs if r["configuration"] == c]
        assert sorted(int(r["seed"]) for r in mine) == [1000, 1001]
        assert all(r["status"] == "COMPLETE" for r in mine)
    ablation = [r for r in runs if r["kind"] == "ablation"]
    assert sorted((json.loads(r["settings"])["meta_update"], json.loads(r["settings"])["use_masks"])
                  for r in ablation) == [("none", True)] * 2 + [("reptile", False)] * 2
    summaries = aggregate(read_csv(evaluated / "evaluation.csv"))
    for s in summaries:
        assert s.ok == 2 and s.test_acc[1] > 0  # two different seeds, two different results
        assert s.kb_params > 0 and s.task_params > 0 and s.wall_seconds > 0
    md = (evaluated / "evaluation.md").read_text()
    assert md.startswith("On 2 seeds x 1 order, the best configuration ")  # the verdict first
    md = md.split("# Evaluation of")[1]  # the per-configuration table (the paired one comes before it)
    table = [ln for ln in md.splitlines() if ln.startswith("| ") and "configuration" not in ln]
    assert len(table) == len(configs)
    assert any("no metalearning" in ln for ln in table) and any("no masks" in ln for ln in table)
    assert all(" ± " in ln for ln in table)


@pytest.mark.slow
def test_report_has_every_element_and_renders_in_chromium(evaluated, tmp_path):
    assert report.main([str(evaluated)]) == 0
    page = (evaluated / "report.html").read_text()
    assert "id='best-trials-table'" in page and "id='evaluation-table'" in page
    assert "validation curves of all trials" in page and "accuracy matrix heat map" in page
    assert ("parameter importances" in page) or ("Too few complete trials" in page)
    assert "src='http" not in page and "src=\"http" not in page  # self-contained
    pngs = {p.name for p in (evaluated / "figures").glob("*.png")}
    assert {"curves.png", "accuracy_matrix.png", "pareto_search.png", "pareto_evaluation.png"} <= pngs
    assert "id='pareto'" in page and "pareto front of the search" in page and "pareto front of the evaluation" in page
    assert "id='pareto-search-table'" in page and "id='pareto-evaluation-table'" in page
    exp = load_experiment_with_space(evaluated)
    for t in exp.trials:  # stopped trials' curves are shorter
        assert len(t.curve()) == t.tasks_done

    shot = tmp_path / "report.png"
    headless_chromium(evaluated / "report.html", tmp_path, f"--screenshot={shot}", "--window-size=1200,2000")
    import matplotlib.image
    import numpy as np

    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (2000, 1200)
    assert pixels.var() > 0.005, "the screenshot is blank"
    colours = np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 50, f"only {len(colours)} colours: the figures did not render"
