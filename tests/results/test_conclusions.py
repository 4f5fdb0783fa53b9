"""Paired statistics, verdicts, tuning protocols and --benchmark, on hand-made experiments (no Ray, no training)."""
from __future__ import annotations

import doctest
import json
import math
import statistics as pystats

import pytest
import yaml

from conftest import headless_chromium
from marktune.results import conclusions; from marktune.cli import evaluate; from marktune.results import protocols; from marktune.cli import search
from marktune.results import cost
from marktune.results import evaluation_table
from marktune.results import html as report_html
from marktune.results import statistics as mstats
from marktune.mark.config import MarkConfig
from marktune.tune.spaces import load_experiment_with_space
from tests.cli.test_evaluate_report import _digits_base, _fake_experiment

T_975_DF2 = 4.302652729696142  # Student t, 97.5 % quantile, 2 degrees of freedom (printed tables: 4.303)


@pytest.mark.parametrize("module", [mstats, protocols, conclusions])
def test_docstring_examples_run(module):
    failures, tried = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert tried > 0 and failures == 0


def _row(configuration, kind, trial, data_seed, seed, acc, *, heldout=math.nan):
    return {"configuration": configuration, "kind": kind, "source_trial": trial, "benchmark": "digits",
            "data_seed": data_seed, "seed": seed, "status": "COMPLETE", "tasks_done": 5, "tasks_total": 5,
            "test_acc": acc, "bwt": -0.01, "heldout_test_acc": heldout, "heldout_bwt": math.nan, "val_acc": acc,
            "wall_seconds": 1.0, "kb_params": 10, "task_params": 5, "device": "cpu", "settings": "{}",
            "error": "", "test_matrix": "[]"}


PAIRS = [(0, 1000), (0, 1001), (0, 1002)]
DEFAULT = [0.90, 0.80, 0.95]  # a hard pair, an easier one: pairing removes that spread
BETTER = [0.92, 0.825, 0.97]  # better on every pair, by 2, 2.5 and 2 points
MIXED = [0.93, 0.78, 0.95]  # +3, -2, 0: the sign changes


@pytest.fixture
def hand_made_csv(tmp_path):
    rows = []
    for name, kind, trial, accs in (("best 1 (trial a)", "best", "a", BETTER), ("best 2 (trial b)", "best", "b", MIXED),
                                    ("best 3 (trial c)", "best", "c", [0.85, 0.75, 0.90]),
                                    ("default (digits)", "default", "", DEFAULT)):
        rows += [_row(name, kind, trial, ds, s, acc) for (ds, s), acc in zip(PAIRS, accs)]
    path = tmp_path / "evaluation.csv"
    evaluation_table.write_csv(rows, path)
    return path


def _record(search_val=None, **kw):
    return conclusions.EvaluationRecord(protocol=kw.pop("protocol", protocols.SearchProtocol(stream_tasks=5)),
                                        seeds=[1000, 1001, 1002], data_seeds=[0], benchmark="digits",
                                        searched_benchmark="digits",
                                        search_val=search_val or {"a": 0.99, "b": 0.98, "c": 0.97}, **kw)


def test_better_on_every_pair_reads_better_and_a_sign_change_reads_not_distinguishable(hand_made_csv):
    result = conclusions.conclude(evaluation_table.read_csv(hand_made_csv), _record())
    by_name = {r.configuration: r for r in result.results}
    assert by_name["best 1 (trial a)"].difference.verdict == "better"
    assert by_name["best 2 (trial b)"].difference.verdict == "not distinguishable"
    assert by_name["best 3 (trial c)"].difference.verdict == "worse"  # 5 points below on every pair
    assert by_name["default (digits)"].difference is None  # the reference itself
    # unpaired, best 1's spread over seeds (±6.5 points) hides what pairing shows
    assert by_name["best 1 (trial a)"].test_acc[1] > 0.05
    assert result.sentence.startswith("On 3 seeds x 1 order, the best configuration is better than the space's default")


def test_interval_equals_a_hand_computation(hand_made_csv):
    result = conclusions.conclude(evaluation_table.read_csv(hand_made_csv), _record())
    d = next(r for r in result.results if r.configuration == "best 2 (trial b)").difference
    diffs = [m - b for m, b in zip(MIXED, DEFAULT)]  # +0.03, -0.02, 0.00
    mean = pystats.fmean(diffs)
    half = T_975_DF2 * pystats.stdev(diffs) / math.sqrt(len(diffs))
    # float64 round-off on a handful of subtractions: far below 1e-12
    assert d.n == 3 and d.mean == pytest.approx(mean, abs=1e-12)
    assert d.low == pytest.approx(mean - half, abs=1e-9) and d.high == pytest.approx(mean + half, abs=1e-9)


def test_kendall_tau_on_a_known_ranking(hand_made_csv):
    # the search ranks a > b > c; the evaluation's means: a 90.33, b 88.67, c 83.33 -> same order
    result = conclusions.conclude(evaluation_table.read_csv(hand_made_csv), _record())
    assert result.tau == pytest.approx(1.0)
    # the search ranked them c > a > b: of the 3 pairs, (c,a) and (c,b) are swapped, (a,b) agrees
    result = conclusions.conclude(evaluation_table.read_csv(hand_made_csv), _record({"a": 0.98, "b": 0.97, "c": 0.99}))
    assert result.tau == pytest.approx(-1 / 3)
    assert "Kendall's tau = -0.33" in conclusions.format_markdown(result)
    # a tie in the search's validation ACC between two configurations: tau-b is undefined, and says why
    rows = [r for r in evaluation_table.read_csv(hand_made_csv) if r["source_trial"] != "c"]
    result = conclusions.conclude(rows, _record({"a": 0.99, "b": 0.99}))
    assert math.isnan(result.tau) and "tie, so no pair is ordered" in conclusions.rank_sentence(result)


def test_markdown_opens_with_the_verdict_and_best_config_says_not_better(hand_made_csv, tmp_path):
    rows = [r for r in evaluation_table.read_csv(hand_made_csv) if r["source_trial"] in ("b", "")]
    for r in rows:
        if r["source_trial"] == "b":
            r["kind"], r["configuration"] = "best", "best 1 (trial b)"
    result = conclusions.conclude(rows, _record())
    text = conclusions.format_markdown(result)
    assert text.splitlines()[0] == result.sentence
    assert result.sentence == ("On 3 seeds x 1 order, the best configuration is not distinguishable from the "
                               "space's default (+0.33 points, 95 % CI −5.9 to +6.6), at 100 % of its parameters "
                               "and 100 % of its measured seconds; no collapse or error in 3 runs (worst 78.0 %), "
                               "the default: no collapse or error in 3 runs (worst 80.0 %).")
    assert "Student t on the paired differences (scipy.stats.ttest_rel)" in text
    assert "full: selected on validation ACC over the same tasks these figures report" in text
    best = tmp_path / "best_config.yaml"
    best.write_text("# Best of 3 complete trials by validation ACC (space digits).\n# Run it: x\n"
                    + yaml.safe_dump({"trial_id": "b", "config": {"lr_meta": 0.01}}))
    assert conclusions.rewrite_best_config_comment(best, result)
    text = best.read_text()
    assert result.sentence in text and "NOT shown better than the default" in text
    assert yaml.safe_load(text) == {"trial_id": "b", "config": {"lr_meta": 0.01}}  # settings untouched
    assert conclusions.rewrite_best_config_comment(best, result)  # again: one comment, not two
    assert best.read_text().count("NOT shown better") == 1


def test_first_k_heldout_figures_and_sentence():
    R = [[0.9], [0.8, 0.7], [0.6, 0.5, 0.4], [0.5, 0.5, 0.5, 0.3], [0.4, 0.4, 0.4, 0.2, 0.8]]
    assert mstats.heldout_accuracy(R, 3) == pytest.approx((0.2 + 0.8) / 2)
    assert mstats.heldout_backward_transfer(R, 3) == pytest.approx(0.2 - 0.3)  # task 3 only; the last has none
    p = protocols.SearchProtocol(name="first-k", tuning_tasks=3, stream_tasks=5)
    rows = [_row(c, k, t, 0, s, 0.9, heldout=h) for c, k, t, hs in
            (("best 1 (trial a)", "best", "a", (0.60, 0.62)), ("default (digits)", "default", "", (0.70, 0.73)))
            for s, h in zip((1000, 1001), hs)]
    result = conclusions.conclude(rows, _record(protocol=p))
    assert "on the held-out tasks 4-5 (−10.50 points" in result.sentence
    assert "held-out ACC (%)" in conclusions.format_markdown(result)


# ---------------------------------------------------------------- protocols on hand-made experiments
SEARCHED = {"lr_meta": [0.001, 0.002], "meta_step": [0.1, 0.2], "lr_mask": [0.01, 0.02],
            "mask_hidden": [0, 16], "mask_activation": ["relu", "sigmoid"], "kb_depth": [1, 2],
            "kb_width": [8, 16], "mini_tasks": [2, 3], "inner_steps": [2, 3]}


def _protocol_experiment(tmp_path, name, protocol, **extra):
    exp = _fake_experiment(tmp_path / name, {"t1": ("TERMINATED", 5, 0.9), "t2": ("TERMINATED", 5, 0.8)},
                           base=_digits_base(), searched=SEARCHED)
    settings = {"space": "digits", "overrides": [], "samples": 2, "seed": 0, "num_tasks": 5, "max_failures": 2,
                "protocol": protocol, "tuning_tasks": None, "stream_tasks": 5, "searched_data_seed": 0,
                "searched_class_order": None, **extra}
    (exp / "marktune_search.json").write_text(json.dumps(settings))
    return exp


def test_other_order_never_evaluates_the_searched_order(tmp_path):
    exp = _protocol_experiment(tmp_path, "digits-oo", "other-order")
    plan = evaluate.plan_from_args(evaluate.build_parser().parse_args([str(exp), "--orders", "3", "--seeds", "2"]))
    assert plan.protocol.name == "other-order" and len(plan.data_seeds) == 3 and 0 not in plan.data_seeds
    searched = protocols.task_sequence(MarkConfig.from_dict({**_digits_base(), "data_seed": 0}))
    sequences = {protocols.task_sequence(MarkConfig.from_dict({**_digits_base(), "data_seed": ds}))
                 for ds in plan.data_seeds}
    assert searched not in sequences and len(sequences) == 3
    # a full search is evaluated on its own order first
    full = _protocol_experiment(tmp_path, "digits-full", "full")
    plan = evaluate.plan_from_args(evaluate.build_parser().parse_args([str(full), "--orders", "2"]))
    assert plan.data_seeds[0] == 0 and len(plan.seeds) == 3  # default 3 seeds x 2 orders


def test_benchmark_setting_the_target_cannot_take_is_refused_before_ray(tmp_path, capsys):
    import ray

    # a synthetic search at 64 px searched a 5-block KB; at fmnist's 32 px the image vanishes after block 4
    base = {"benchmark": "synthetic", "synthetic_image_size": 64, "epochs": 1, "kb_grad_clip": 1.0}
    exp = _fake_experiment(tmp_path / "synth", {"s1": ("TERMINATED", 3, 0.9), "s2": ("TERMINATED", 3, 0.8)},
                           base=base, searched={"kb_depth": [5, 4]}, num_tasks=3)
    assert evaluate.main([str(exp), "--benchmark", "fmnist"]) == 2
    err = capsys.readouterr().err
    assert "--benchmark fmnist" in err and "kb_depth=5" in err and "32 px" in err
    assert not ray.is_initialized() and not (tmp_path / "synth-eval").exists()
    assert evaluate.main([str(exp), "--benchmark", "nope"]) == 2
    assert "unknown; choose one of" in capsys.readouterr().err


def test_benchmark_settings_come_from_the_target():
    config = {**_digits_base(), "num_tasks": 2, "class_order": list(range(10)), "lr_meta": 0.05}
    moved = protocols.retarget(config, benchmark="cifar100", searched=["lr_meta"])
    assert moved.benchmark == "cifar100" and moved.tasks == 20 and moved.class_order is None
    assert moved.lr_meta == 0.05 and moved.epochs == config["epochs"]
    # a searched num_tasks is the search's choice: kept, and refused where it cannot cut the classes
    with pytest.raises(protocols.ProtocolError, match="num_tasks=3"):
        protocols.retarget({**config, "num_tasks": 3}, benchmark="cifar100", searched=["num_tasks"])


def test_search_protocol_flags_are_checked_and_recorded(tmp_path):
    def plan(*flags):
        return search.plan_from_args(search.build_parser().parse_args(["--space", "digits", *flags]))

    p = plan("--protocol", "first-k")
    assert (p.protocol, p.tuning_tasks, p.num_tasks, p.stream_tasks) == ("first-k", 3, 3, 5)
    assert plan("--protocol", "first-k", "--tuning-tasks", "2").num_tasks == 2
    assert plan().num_tasks == 5 and plan().protocol == "full"
    with pytest.raises(search.SearchError, match="needs --protocol first-k"):
        plan("--tuning-tasks", "2")
    with pytest.raises(search.SearchError, match=r"--tuning-tasks must be in 1\.\.4"):
        plan("--protocol", "first-k", "--tuning-tasks", "5")
    args = search.build_parser().parse_args(["--space", "digits", "--protocol", "other-order", "--set", "data_seed=7"])
    from marktune.tune.folders.search_settings import save_settings

    save_settings(search.plan_from_args(args), str(tmp_path / "e"))
    saved = json.loads((tmp_path / "e" / "marktune_search.json").read_text())
    assert saved["protocol"] == "other-order" and saved["searched_data_seed"] == 7 and saved["stream_tasks"] == 5
    # a resumed search keeps its protocol; another one on the command line is refused
    args = search.build_parser().parse_args(["--resume", "--name", "e", "--storage", str(tmp_path),
                                             "--protocol", "full"])
    with pytest.raises(search.SearchError, match="--protocol"):
        search.apply_saved_settings(args, {"resume", "name", "storage", "protocol"})


def test_first_k_evaluation_runs_the_whole_stream(tmp_path):
    exp = _protocol_experiment(tmp_path, "digits-fk", "first-k", tuning_tasks=3)
    for trial in (exp / "trial_t1", exp / "trial_t2"):  # trials ran 3 tasks and told the runner to stop
        params = json.loads((trial / "params.json").read_text())
        params["marktune_runtime"][protocols.STOP_AFTER_KEY] = 3
        (trial / "params.json").write_text(json.dumps(params))
    args = evaluate.build_parser().parse_args([str(exp)])
    plan = evaluate.plan_from_args(args)
    assert plan.protocol.heldout_tasks == [3, 4]
    from runners.runtime import TrialRuntime

    searched = TrialRuntime.from_dict(plan.experiment.runtime())
    assert searched.to_dict().get(protocols.STOP_AFTER_KEY) == 3  # the search's trials stopped
    assert protocols.STOP_AFTER_KEY not in plan.runtime.to_dict()  # the evaluation's runs do not
    assert all(c.config.tasks == 5 for c in plan.configs)
    assert load_experiment_with_space(exp).num_tasks == 5


def test_best_config_comment_speaks_of_its_own_trial(hand_made_csv, tmp_path):
    # best_config.yaml holds trial c (worse than the default), the evaluation's "best 1" is trial a (better)
    result = conclusions.conclude(evaluation_table.read_csv(hand_made_csv), _record())
    best = tmp_path / "best_config.yaml"
    best.write_text("# Best of 3 complete trials.\n" + yaml.safe_dump({"trial_id": "c", "config": {}}))
    conclusions.rewrite_best_config_comment(best, result)
    text = best.read_text()
    assert "this configuration (best 3 (trial c)) is worse than the space's default" in text
    assert "NOT shown better" in text


def test_report_opens_with_the_verdict_rendered_in_chromium(hand_made_csv, tmp_path):
    from marktune.cli import report

    exp = _protocol_experiment(tmp_path, "digits-full", "full")
    rows = evaluation_table.read_csv(hand_made_csv)
    for r in rows:  # the experiment's trials are t1 and t2
        r["source_trial"] = {"a": "t1", "b": "t2"}.get(r["source_trial"], r["source_trial"])
    evaluation_table.write_csv(rows, exp / "evaluation.csv")
    record = _record({"t1": 0.9, "t2": 0.8})
    conclusions.save(exp, record, exp / "evaluation.csv")
    sentence = conclusions.conclude(evaluation_table.read_csv(exp / "evaluation.csv"), record).sentence
    page = report.build_report(load_experiment_with_space(exp))
    dom = headless_chromium(page, tmp_path, "--dump-dom")
    body = dom[dom.index("<body"):]
    # the first paragraph after the title is the verdict
    first = body[body.index("</h1>"):]
    first = first[first.index("<p"):first.index("</p>")]
    assert "id=\"verdict\"" in first and sentence in first
    gap = body[body.index("id=\"protocol-gap-table\""):]
    assert "full: test ACC, searched class order" in gap and "90.50 ± " in gap  # best 1's mean over the 3 pairs


def test_report_verdict_without_evaluation_or_with_an_old_one(tmp_path):
    from marktune.cli import report

    exp = _protocol_experiment(tmp_path, "digits-old", "full")
    assert "Not evaluated yet, so no verdict" in report_html.verdict_paragraph(load_experiment_with_space(exp))
    # an evaluation.csv from before paired statistics (no data_seed column, no evaluation.json)
    (exp / "evaluation.csv").write_text("configuration,kind,source_trial,seed,status,tasks_done,test_acc,bwt,val_acc,"
                                        "wall_seconds,kb_params,task_params,device,settings,error\n"
                                        "best 1 (trial t1),best,t1,1000,COMPLETE,5,0.9,0.0,0.9,1.0,1,1,cpu,{},\n")
    assert "no paired record" in report_html.verdict_paragraph(load_experiment_with_space(exp))
    assert evaluation_table.read_csv(exp / "evaluation.csv")[0]["data_seed"] == 1000  # then the seed set the order too
    page = report.build_report(load_experiment_with_space(exp)).read_text()
    assert "id='evaluation-table'" in page


def test_a_validation_tie_goes_to_the_trial_in_best_config_yaml(tmp_path):
    exp = _fake_experiment(tmp_path / "tie", {"t1": ("TERMINATED", 5, 0.9), "t2": ("TERMINATED", 5, 0.9),
                                              "t3": ("TERMINATED", 5, 0.8)}, base=_digits_base(), searched=SEARCHED)
    assert [t.trial_id for t in load_experiment_with_space(exp).best_complete(3)] == ["t1", "t2", "t3"]
    (exp / "best_config.yaml").write_text("# Best of 3\n" + yaml.safe_dump({"trial_id": "t2", "config": {}}))
    assert [t.trial_id for t in load_experiment_with_space(exp).best_complete(3)] == ["t2", "t1", "t3"]


def test_after_a_confirmation_stage_its_winner_is_best_1_and_its_seeds_are_not_fresh(tmp_path):
    from marktune.cli.evaluate import fresh_seeds
    from marktune.results.confirmation import CONFIRMATION_FILE, ConfirmationPlan, Finalist

    exp = _fake_experiment(tmp_path / "confirmed", {"t1": ("TERMINATED", 5, 0.9), "t2": ("TERMINATED", 5, 0.85),
                                                    "t3": ("TERMINATED", 5, 0.8)}, base=_digits_base(),
                           searched=SEARCHED)
    plan = ConfirmationPlan(finalists=(Finalist("t1", {"seed": 0}, 0.9, 0.9), Finalist("t2", {"seed": 0}, 0.85, 0.85)),
                            seeds=(1000, 1001))
    verdict = plan.decide({("t1", 1000): (0.7, 0.7), ("t1", 1001): (0.7, 0.7),
                           ("t2", 1000): (0.9, 0.9), ("t2", 1001): (0.9, 0.9)})
    (exp / CONFIRMATION_FILE).write_text(plan.to_json(verdict))
    loaded = load_experiment_with_space(exp)
    assert [t.trial_id for t in loaded.best_complete(3)] == ["t2", "t1", "t3"]
    assert {1000, 1001} <= loaded.seeds_used()
    assert fresh_seeds(loaded, 2) == [1002, 1003]
    # before its verdict (an interrupted stage) the ranking is the search's
    (exp / CONFIRMATION_FILE).write_text(plan.to_json())
    assert [t.trial_id for t in load_experiment_with_space(exp).best_complete(3)] == ["t1", "t2", "t3"]


def _pick_and_default(hand_made_csv, **changes):
    rows = [r for r in evaluation_table.read_csv(hand_made_csv) if r["source_trial"] in ("b", "")]
    for r in rows:
        if r["source_trial"] == "b":
            r.update(kind="best", configuration="best 1 (trial b)", **changes)
    return rows


def test_a_margin_turns_not_distinguishable_into_as_accurate_within_it_or_says_it_is_not_shown(hand_made_csv):
    rows = _pick_and_default(hand_made_csv)  # paired 95 % CI -5.9 to +6.6 points
    wide = conclusions.conclude(rows, _record(margin=0.07)).sentence
    assert "is as accurate as the space's default within 7.00 points (+0.33 points, 95 % CI −5.9 to +6.6)" in wide
    narrow = conclusions.conclude(rows, _record(margin=0.05)).sentence
    assert "is not distinguishable from the space's default (+0.33 points, 95 % CI −5.9 to +6.6), and not " \
           "shown as accurate within 5.00 points" in narrow
    record = _record(margin=0.07, margin_source="--margin")  # kept in evaluation.json
    assert conclusions.EvaluationRecord.from_json(record.to_json()).margin == 0.07


def test_the_verdict_gives_the_cost_ratios_against_the_default(hand_made_csv):
    # the default: 10 + 5 x 5 = 35 parameters, 1 s; the pick: 2 + 5 x 1 = 7 parameters, 0.25 s, a quarter of the FLOPs
    rows = _pick_and_default(hand_made_csv, kb_params=2, task_params=1, wall_seconds=0.25)
    for r in rows:
        r["train_flops"] = 1e9 if r["kind"] == "best" else 4e9
    result = conclusions.conclude(rows, _record())
    assert "at 25 % of its training FLOPs, 20 % of its parameters and 25 % of its measured seconds" in result.sentence
    cells = conclusions.result_cells(result.best, first_k=False)
    head = conclusions.paired_table_head(result.record)
    assert dict(zip(head, cells))["params"] == "0.20" and dict(zip(head, cells))["FLOPs"] == "0.25"


def test_collapsed_and_errored_runs_and_the_worst_run_are_counted(hand_made_csv):
    rows = _pick_and_default(hand_made_csv)
    picked = [r for r in rows if r["kind"] == "best"]
    picked[0]["tasks_at_chance"] = 1  # complete, with a task at chance
    picked[1]["status"] = "ERROR"  # a diverged run
    result = conclusions.conclude(rows, _record())
    assert "; 1 collapsed (a task at chance) and 1 errored of 3 runs (worst 93.0 %), the default: no collapse " \
           "or error in 3 runs (worst 80.0 %)" in result.sentence
    assert cost.tasks_at_chance([0.99, 0.52, 0.56, 0.9], classes_per_task=2) == 1  # 0.55 is chance + 0.05
