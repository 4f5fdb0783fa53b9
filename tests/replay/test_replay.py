"""The replay bench (marktune.replay, bench/replay.py) on hand-made curves with known outcomes."""
from __future__ import annotations

import doctest
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import load_bench

from marktune.results.curves import CurveRow, CurvesTable, read_curves, write_curves
from marktune.replay import search as replay_module
from marktune.replay import costs as costs_module
from marktune.replay import repeats as repeats_module
from marktune.replay import curve_models
from marktune.replay import features as replay_features
from marktune.replay import surrogates as surrogates_module
from marktune.replay import seed_roles as seed_roles_module
from marktune.replay import table as replay_table_module
from marktune.replay.repeats import Interval
from marktune.replay.search import Strategy, replay
from marktune.replay.surrogates import NearestRecorded, WeightedNearest, make_surrogate
from marktune.replay.table import ReplayTable, config_index
from marktune.tune.spaces import Param, SearchSpace

ROOT = Path(__file__).resolve().parents[2]
SPACE = SearchSpace(name="hand", path=Path("hand.yaml"), benchmark="fmnist", fixed={}, params={
    "lr_meta": Param("lr_meta", "loguniform", low=1e-3, high=1e-1),
    "kb_width": Param("kb_width", "choice", values=(32, 64))})
RANDOM = Strategy(name="random", proposals="table")


def curves_table(configs: dict[str, tuple[float, int, list[float], float, list[float]]],
                 tmp_path: Path | None = None) -> ReplayTable:
    """key -> (lr_meta, kb_width, val per task, final test, seconds per task); through the CSV
    format when tmp_path is given. Test ACC before the last task is the val ACC (unused)."""
    rows = []
    for key, (lr, width, val, final_test, seconds) in configs.items():
        for k, (v, s) in enumerate(zip(val, seconds), start=1):
            rows.append(CurveRow(trial_id=key, status="TERMINATED", params={"lr_meta": lr, "kb_width": width},
                                 task=k, val_acc=v, test_acc=final_test if k == len(val) else v, seconds=s))
    table = CurvesTable(searched=["lr_meta", "kb_width"], rows=rows)
    if tmp_path is not None:
        write_curves(tmp_path / "curves.csv", rows, searched=table.searched)
        table = read_curves(tmp_path / "curves.csv")
    return ReplayTable.from_curves(table)


# A (the best at the end) starts worst and its first task is slow: every other trial reports
# task 1 before it does, so ASHA with grace period 1 stops it there, whatever the draw order.
# B leads the others at every task, so ASHA never stops it and it is picked instead.
PRUNED_BEST = {
    "A": (0.001, 32, [0.50, 0.60, 0.99], 0.95, [100.0, 1.0, 1.0]),
    "B": (0.010, 32, [0.90, 0.90, 0.90], 0.90, [1.0, 1.0, 1.0]),
    "C": (0.030, 64, [0.80, 0.70, 0.70], 0.70, [1.0, 1.0, 1.0]),
    "D": (0.090, 64, [0.70, 0.80, 0.80], 0.80, [1.0, 1.0, 1.0]),
}
# first-1 picks B (best after task 1), first-2 picks D (best after task 2)
FIRST_K = {
    "A": (0.001, 32, [0.50, 0.60, 0.99], 0.95, [1.0, 1.0, 1.0]),
    "B": (0.010, 32, [0.90, 0.70, 0.90], 0.90, [1.0, 1.0, 1.0]),
    "C": (0.030, 64, [0.80, 0.75, 0.70], 0.70, [1.0, 1.0, 1.0]),
    "D": (0.090, 64, [0.70, 0.85, 0.80], 0.80, [1.0, 1.0, 1.0]),
}


def test_docstring_examples_run():
    for module in (replay_module, replay_table_module, surrogates_module, seed_roles_module, repeats_module, costs_module):
        failures, tried = doctest.testmod(module)
        assert tried > 0 and failures == 0, module.__name__


def test_an_exhaustive_search_without_pruning_has_zero_regret(tmp_path):
    table = curves_table(PRUNED_BEST, tmp_path)
    assert table.best_final_test == 0.95 and table.num_tasks == 3
    for seed in range(5):
        outcome = replay(table=table, space=SPACE, strategy=RANDOM, samples=4, workers=2, seed=seed)
        assert sorted(t.config for t in outcome.trials) == [0, 1, 2, 3]  # each drawn once
        assert outcome.pick(1.0).config == config_index(table, "A")
        assert outcome.regret(1.0) == 0.0
        assert outcome.task_trainings == outcome.budget == 12


def test_asha_with_grace_1_stops_the_slow_starter_and_the_regret_is_known():
    table = curves_table(PRUNED_BEST)
    asha = Strategy(name="asha", proposals="table", grace_period=1, reduction_factor=2)
    for seed in range(5):
        outcome = replay(table=table, space=SPACE, strategy=asha, samples=4, workers=2, seed=seed)
        a = next(t for t in outcome.trials if t.config == config_index(table, "A"))
        assert (a.tasks_run, a.finished) == (1, False)
        assert outcome.pick(1.0).config == config_index(table, "B")
        assert outcome.regret(1.0) == pytest.approx(0.05)
        assert outcome.task_trainings < outcome.budget


def test_first_k_picks_by_the_value_after_k_tasks_and_pays_k_per_trial():
    table = curves_table(FIRST_K)
    for k, picked, regret in ((1, "B", 0.05), (2, "D", 0.15)):
        strategy = Strategy(name=f"first-{k}", proposals="table", stop_after=k)
        outcome = replay(table=table, space=SPACE, strategy=strategy, samples=4, workers=2, seed=0)
        assert outcome.pick(1.0).config == config_index(table, picked)
        assert outcome.regret(1.0) == pytest.approx(regret)
        assert outcome.task_trainings == 4 * k
    assert replay(table=table, space=SPACE, strategy=RANDOM, samples=4, seed=0).regret(1.0) == 0.0


def test_a_budget_fraction_picks_among_the_trials_finished_by_then():
    table = curves_table(FIRST_K)
    for seed in range(4):
        outcome = replay(table=table, space=SPACE, strategy=RANDOM, samples=4, workers=1, seed=seed)
        # one worker, 3 tasks a trial, budget 12: half the budget is the first two trials
        first_two = outcome.trials[:2]
        expected = max(first_two, key=lambda t: t.curve.val[-1])
        assert outcome.pick(0.5) is expected
        assert outcome.regret(0.5) == pytest.approx(0.95 - table.configs[expected.config].final_test)
        assert outcome.pick(0.2) is None  # 2.4 task-trainings: no trial has finished


def test_the_simulated_clock_follows_the_recorded_seconds():
    seconds = {"A": [3.0, 1.0, 2.0], "B": [1.0, 1.0, 1.5], "C": [2.0, 0.5, 2.0]}
    table = curves_table({key: (lr, 32, [0.8, 0.8, 0.8], 0.8, seconds[key])
                          for key, lr in zip(seconds, (0.001, 0.01, 0.1))})
    for workers in (1, 2):
        outcome = replay(table=table, space=SPACE, strategy=RANDOM, samples=3, workers=workers, seed=1)
        steps = [seconds[table.configs[t.config].key] for t in outcome.trials]
        starts = [0.0] * workers
        free = []  # when each worker frees: a trial starts when the first of them is free
        expected = []
        for i, step in enumerate(steps):
            begin = starts[i] if i < workers else min(free)
            if i >= workers:
                free.remove(begin)
            clock = list(itertools.accumulate(step, initial=begin))[1:]
            expected += [(c, outcome.trials[i].trial_id, k) for k, c in enumerate(clock, start=1)]
            free.append(clock[-1])
        assert sorted(outcome.events) == sorted(expected)
        assert outcome.wall_s == max(c for c, _, _ in expected)
    assert replay(table=table, space=SPACE, strategy=RANDOM, samples=3, workers=1).wall_s == 14.0


def test_tpe_and_asha_are_the_search_s_own_and_the_study_agrees():
    table = curves_table(PRUNED_BEST)
    surrogate = NearestRecorded(table=table, space=SPACE)
    strategy = Strategy(name="tpe", proposals="tpe", grace_period=1, reduction_factor=2, n_startup_trials=2)
    outcome = replay(table=table, space=SPACE, strategy=strategy, samples=6, workers=2, seed=3, surrogate=surrogate)
    study = outcome.study
    assert len(study.trials) == 6
    for trial, ot in zip(outcome.trials, study.trials):
        assert trial.config == surrogate.nearest(ot.params)  # each proposal replays its nearest curve
        assert ot.state.name == ("COMPLETE" if trial.finished else "PRUNED")
        assert sorted(ot.intermediate_values) == list(range(1, trial.tasks_run + 1))
        if trial.finished:
            assert ot.value == trial.curve.val[-1]
    assert any(not t.finished for t in outcome.trials)  # ASHA stopped some


def test_the_surrogate_is_nearest_in_log_space_and_counts_category_mismatches():
    table = curves_table({"lo": (0.001, 32, [0.9], 0.9, [1.0]), "hi": (0.02, 32, [0.8], 0.8, [1.0]),
                          "wide": (0.1, 64, [0.5], 0.5, [1.0])})
    surrogate = NearestRecorded(table=table, space=SPACE)
    assert surrogate.nearest({"lr_meta": 0.02, "kb_width": 32}) == config_index(table, "hi")
    # 0.005 is nearer 0.001 on a linear scale, nearer 0.02 on a log scale
    assert surrogate.nearest({"lr_meta": 0.005, "kb_width": 32}) == config_index(table, "hi")
    assert surrogate.distances({"lr_meta": 0.1, "kb_width": 32})[config_index(table, "wide")] == 1.0
    # leave-one-out: lo <- hi (0.1), hi <- lo (0.1), wide <- hi (0.3); the mean of the others: 0.25, 0.1, 0.35
    mae, baseline = surrogate.leave_one_out()
    assert mae == pytest.approx(0.5 / 3) and baseline == pytest.approx(0.7 / 3)


def test_incomplete_curves_are_dropped_and_rung_tau_is_per_task():
    table = curves_table(FIRST_K)
    full = [CurveRow(trial_id=c.key, status="TERMINATED", params=c.params, task=k + 1, val_acc=v,
                     test_acc=c.curves[0].test[k], seconds=1.0)
            for c in table.configs for k, v in enumerate(c.curves[0].val)]
    short = CurveRow(trial_id="E", status="PRUNED", params={"lr_meta": 0.05, "kb_width": 32}, task=1,
                     val_acc=0.9, test_acc=0.9, seconds=1.0)
    with_short = ReplayTable.from_curves(CurvesTable(searched=table.searched, rows=full + [short]))
    assert [c.key for c in with_short.configs] == ["A", "B", "C", "D"] and with_short.dropped == 1
    taus = with_short.rung_tau()
    assert [k for k, _, _ in taus] == [1, 2]
    # val after task 2 (A .60, B .70, C .75, D .85) against final val (.99, .90, .70, .80):
    # only C-D of the 6 pairs is ordered alike
    assert taus[1][1] == pytest.approx((1 - 5) / 6)


def test_an_interval_is_a_t_interval_over_the_seeds_with_a_value():
    interval = Interval.of([0.0, 0.02, float("nan"), 0.04])
    assert interval.n == 3 and interval.mean == pytest.approx(0.02)
    assert interval.high - interval.mean == pytest.approx(4.302653 * 0.02 / 3 ** 0.5, rel=1e-5)
    assert Interval.of([0.01] * 20).low == pytest.approx(0.01)


def _bench():
    return load_bench("replay")


def test_the_bench_prints_every_strategy_on_a_synthetic_table(tmp_path, capsys):
    markdown = tmp_path / "replay.md"
    assert _bench().main(["--synthetic", "12", "--space", "fmnist", "--samples", "6", "--replay-seeds", "3",
                          "--score", "seen", "--jobs", "1", "--markdown", str(markdown), "--tpe-startup", "2,10"]) == 0
    out = capsys.readouterr().out
    for name in ("random ", "random + asha g1 r2", "random + asha g2 r3", "tpe s2 ", "tpe s10 + asha g1 r3",
                 "first-1", "first-4", "cross-validated mean absolute error", "Kendall's tau", "machine:"):
        assert name in out, name
    assert "| tpe s2 + asha g2 r2 |" in markdown.read_text()


SHIPPED = sorted((ROOT / "bench" / "curves").glob("*.csv"))


def shipped_slice(path: Path, tmp_path: Path, *, configs: int = 24) -> Path:
    """The rows of a shipped table's first ``configs`` configurations, as a table of their own."""
    table = read_curves(path)
    keep = list(dict.fromkeys(r.trial_id for r in table.rows))[:configs]
    out = tmp_path / path.name
    write_curves(out, [r for r in table.rows if r.trial_id in keep], searched=table.searched)
    return out


@pytest.mark.slow
@pytest.mark.skipif(not SHIPPED, reason="no curves shipped under bench/curves yet")
def test_the_bench_runs_on_slices_of_the_shipped_curves(tmp_path, capsys):
    for path in SHIPPED:  # bench/curves/NAME.csv was recorded in search_spaces/NAME.yaml
        assert _bench().main([str(shipped_slice(path, tmp_path)), "--space",
                              str(ROOT / "search_spaces" / f"{path.stem}.yaml"), "--replay-seeds", "4",
                              "--jobs", "2", *(["--score", "seen"] if path.stem == "fmnist" else [])]) == 0
    assert "regret at 100 %" in capsys.readouterr().out


def test_a_configuration_at_several_seeds_is_worth_its_mean_and_replays_one_seed_a_trial():
    rows = []
    for key, lr, finals in (("A", 0.001, (0.90, 0.80)), ("B", 0.01, (0.84, 0.84))):
        for seed, final in enumerate(finals):
            rows += [CurveRow(trial_id=key, status="TERMINATED", params={"lr_meta": lr, "kb_width": 32}, task=k,
                              val_acc=final, test_acc=final, seconds=1.0, seed=seed) for k in (1, 2)]
    table = ReplayTable.from_curves(CurvesTable(searched=["lr_meta", "kb_width"], rows=rows))
    assert [len(c.curves) for c in table.configs] == [2, 2]
    assert table.best_final_test == pytest.approx(0.85)  # A's mean, though one of its seeds reached 0.90
    seen = set()
    for seed in range(20):
        outcome = replay(table=table, space=SPACE, strategy=RANDOM, samples=2, seed=seed)
        a = next(t for t in outcome.trials if t.config == config_index(table, "A"))
        seen.add(a.curve.seed)
        # A is picked when its drawn seed shows 0.90 (regret 0), B when A's shows 0.80 (regret 0.01)
        assert outcome.regret(1.0) == pytest.approx(0.0 if a.curve.seed == 0 else 0.01)
    assert seen == {0, 1}


# ---------------------------------------------------------------- the weighted surrogate
NOISY_SPACE = SearchSpace(name="noisy", path=Path("noisy.yaml"), benchmark="fmnist", fixed={}, params={
    "lr_task": Param("lr_task", "loguniform", low=1e-4, high=1e-1),
    "kb_dropout": Param("kb_dropout", "uniform", low=0.0, high=0.7),
    "weight_decay": Param("weight_decay", "loguniform", low=1e-4, high=1e-1),
    "kb_width": Param("kb_width", "choice", values=(32, 64))})


def one_setting_matters(configs: int = 16) -> ReplayTable:
    """Final val ACC 0.5 + 0.4 x lr_task's place in its log range; the other settings random noise
    (fixed draws). lr_task's places are spread evenly, so each configuration has neighbours in it."""
    rng = np.random.default_rng(0)
    places = rng.permutation(configs) / (configs - 1)
    rows = []
    for i, place in enumerate(places):
        params = {"lr_task": float(1e-4 * 1000 ** place), "kb_dropout": float(0.7 * rng.random()),
                  "weight_decay": float(1e-4 * 1000 ** rng.random()), "kb_width": int(rng.choice([32, 64]))}
        final = round(0.5 + 0.4 * float(place), 4)
        rows += [CurveRow(trial_id=f"c{i:02d}", status="TERMINATED", params=params, task=k, val_acc=v,
                          test_acc=v, seconds=1.0) for k, v in ((1, 0.9), (2, final))]
    return ReplayTable.from_curves(CurvesTable(searched=list(NOISY_SPACE.params), rows=rows))


def test_the_weighted_surrogate_learns_the_setting_that_matters_and_predicts_better():
    table = one_setting_matters()
    weighted = WeightedNearest(table=table, space=NOISY_SPACE)
    plain = NearestRecorded(table=table, space=NOISY_SPACE)
    shares = weighted.setting_weights()
    assert max(shares, key=shares.get) == "lr_task" and shares["lr_task"] > 0.9
    (weighted_mae, weighted_bar), (plain_mae, plain_bar) = weighted.leave_one_out(), plain.leave_one_out()
    assert weighted_bar == plain_bar  # the same mean-of-the-others bar
    # neighbours in lr_task are 1/15 of the range apart: 0.4 / 15 = 0.027 at worst but for the ends
    assert weighted_mae < 0.04 < plain_mae and weighted_mae < plain_mae / 2
    # a proposal with the low end's lr_task and the high end's other settings
    low = min(range(len(table.configs)), key=lambda i: table.configs[i].params["lr_task"])
    high = max(range(len(table.configs)), key=lambda i: table.configs[i].params["lr_task"])
    proposal = {**table.configs[high].params, "lr_task": table.configs[low].params["lr_task"] * 1.1}
    assert weighted.nearest(proposal) == low  # agrees on the setting that matters
    assert plain.nearest(proposal) != low  # all settings alike: the noise outvotes it
    assert make_surrogate(kind="nearest", table=table, space=NOISY_SPACE).nearest(proposal) == plain.nearest(proposal)
    assert make_surrogate(kind="weighted", table=table, space=NOISY_SPACE).nearest(proposal) == low


@pytest.mark.parametrize("folds", [8, 4])
def test_the_weighted_leave_one_out_refits_without_the_held_out_fold(monkeypatch, folds):
    table = one_setting_matters(configs=8)
    fits = []
    fit = replay_features.gp_weights

    def spy(features, finals):
        fits.append(features.copy())
        return fit(features, finals)

    monkeypatch.setattr(surrogates_module, "gp_weights", spy)  # the surrogate's own fit
    monkeypatch.setattr(curve_models, "gp_weights", spy)  # its leave-one-out's, through the curve models
    surrogate = WeightedNearest(table=table, space=NOISY_SPACE)
    assert len(fits) == 1 and len(fits[0]) == 8  # fitted once on the table: not per proposal
    surrogate.nearest(table.configs[0].params)
    assert len(fits) == 1
    surrogate.leave_one_out(folds=folds)
    assert len(fits) == 1 + folds  # one fit per fold, not per configuration
    everyone = fits[0]
    fold = replay_features.fold_of(8, folds)
    for f, features in enumerate(fits[1:]):
        assert len(features) == 8 - 8 // folds
        for i in np.flatnonzero(fold == f):  # the fold's configurations were held out of its fit
            assert not (features == everyone[i]).all(axis=1).any()


# ---------------------------------------------------------------- the modelled curves (the default)
def test_the_modelled_stand_in_predicts_between_the_recorded_and_is_worth_its_prediction():
    table = one_setting_matters()  # final val (= test) 0.5 + 0.4 x lr_task's place; every task-1 val 0.9
    surrogate = make_surrogate(table=table, space=NOISY_SPACE)
    assert isinstance(surrogate, surrogates_module.ModelledCurves)
    shares = surrogate.setting_weights()
    assert max(shares, key=shares.get) == "lr_task"
    rng = np.random.default_rng(0)
    for place in (0.23, 0.5, 0.81):  # between recorded places (multiples of 1/15)
        proposal = {**table.configs[0].params, "lr_task": 1e-4 * 1000 ** place}
        stand_in = surrogate.stand_in(proposal, rng)
        truth = 0.5 + 0.4 * place
        assert stand_in.worth == pytest.approx(truth, abs=0.02)  # a smooth truth, noise-free: interpolated
        assert stand_in.curve.val[-1] == pytest.approx(truth, abs=0.02)  # one seed: no seed noise to add
        assert stand_in.curve.val[0] == pytest.approx(0.9, abs=0.01)
        nearest = table.configs[stand_in.config]
        assert stand_in.curve.seconds == nearest.curves[0].seconds  # the recorded run's clock


def test_the_modelled_stand_in_carries_a_recorded_seed_s_deviation_and_a_replay_is_worth_it():
    rows = []
    for i, lr in enumerate((0.002, 0.005, 0.01, 0.03, 0.08)):
        for seed, shift in ((0, -0.02), (1, 0.02)):  # every configuration: its mean -/+ 0.02 at seeds 0/1
            final = 0.6 + 0.3 * i / 4 + shift
            rows += [CurveRow(trial_id=f"c{i}", status="COMPLETE", params={"lr_meta": lr, "kb_width": 32}, task=k,
                              val_acc=v, test_acc=v, seconds=1.0, seed=seed) for k, v in ((1, 0.95 + shift), (2, final))]
    table = ReplayTable.from_curves(CurvesTable(searched=["lr_meta", "kb_width"], rows=rows))
    surrogate = surrogates_module.ModelledCurves(table=table, space=SPACE)
    predicted, _ = surrogate.predict(table.configs[2].params)
    seen = set()
    for seed in range(8):
        stand_in = surrogate.stand_in(table.configs[2].params, np.random.default_rng(seed))
        assert stand_in.config == 2
        shift = -0.02 if stand_in.curve.seed == 0 else 0.02
        assert np.allclose(np.array(stand_in.curve.val) - predicted, shift)
        seen.add(stand_in.curve.seed)
    assert seen == {0, 1}
    strategy = Strategy(name="tpe", proposals="tpe", n_startup_trials=2)
    outcome = replay(table=table, space=SPACE, strategy=strategy, samples=5, workers=2, seed=0, surrogate=surrogate)
    picked = outcome.pick(1.0)
    assert outcome.regret(1.0) == pytest.approx(table.best_final_test - picked.worth)
    assert all(t.worth == pytest.approx(surrogate.predict(ot.params)[1]) for t, ot in zip(outcome.trials,
                                                                                        outcome.study.trials))


@pytest.mark.parametrize("model", sorted(curve_models.CURVE_MODELS))
def test_every_curve_model_cross_validates_without_the_held_out_configuration(model):
    table = one_setting_matters()
    x, y = replay_features.table_features(table, NOISY_SPACE)
    prediction = curve_models.cross_validate(curve_models.CURVE_MODELS[model](), x, y, folds=4)
    assert prediction.mean.shape == y.shape and np.isfinite(prediction.mean).all()
    scored = curve_models.score(table, y, prediction)
    assert scored.configs == 16 and scored.final_error < scored.mean_of_others_error
    top = curve_models.score(table, y, prediction, top=0.75)
    assert top.configs == 4 and top.subset == "top 25 %"
    if model in ("weighted", "gp", "gp-raw"):  # those that learn a length-scale per setting: far better than the bar
        assert scored.final_error < scored.mean_of_others_error / 2
    # a held-out configuration is never its own prediction: with its own curve in, the nearest is exact
    own = curve_models.NearestModel(weighted=False).fit_predict(x, y, x)
    assert np.allclose(own.mean, y) and not np.allclose(prediction.mean, y)


def test_the_seed_sd_is_pooled_over_the_configurations_with_two_seeds():
    rows = [CurveRow(trial_id=key, status="COMPLETE", params={"lr_meta": 0.01, "kb_width": 32}, task=1, val_acc=v,
                     test_acc=v, seconds=1.0, seed=seed)
            for key, values in (("a", (0.5, 0.7)), ("b", (0.9, 0.9)), ("c", (0.6,))) for seed, v in enumerate(values)]
    table = ReplayTable.from_curves(CurvesTable(searched=["lr_meta", "kb_width"], rows=rows))
    assert curve_models.seed_sd(table) == pytest.approx((0.02 / 2) ** 0.5)  # var 0.02 and 0: mean 0.01
    assert curve_models.seed_sd(table, np.array([1])) == 0.0


def test_the_bench_says_which_surrogate_it_used(capsys):
    common = ["--synthetic", "6", "--space", "fmnist", "--samples", "2", "--replay-seeds", "2", "--jobs", "1",
              "--score", "seen"]
    assert _bench().main(common) == 0
    out = capsys.readouterr().out
    assert "(--surrogate gp): Gaussian process on logit ACC" in out
    assert "surrogate's weight per setting" in out
    assert _bench().main([*common, "--surrogate", "weighted"]) == 0
    out = capsys.readouterr().out
    assert "(--surrogate weighted): nearest recorded configuration, weighted per setting" in out
    assert _bench().main([*common, "--surrogate", "nearest"]) == 0
    out = capsys.readouterr().out
    assert "(--surrogate nearest): nearest recorded configuration (normalised space" in out
    assert "surrogate's weight per setting" not in out


# ---------------------------------------------------------------- a table is checked before it is used
def _write_table(tmp_path: Path, edit=None) -> Path:
    """A two-configuration, two-task table of SPACE written to CSV; ``edit(lines)`` changes its lines."""
    rows = [CurveRow(trial_id=key, status="COMPLETE", params={"lr_meta": lr, "kb_width": 32}, task=k, val_acc=0.9,
                     test_acc=0.9, seconds=1.0, seed=0) for key, lr in (("a", 0.01), ("b", 0.02)) for k in (1, 2)]
    path = tmp_path / "curves.csv"
    write_curves(path, rows, searched=["lr_meta", "kb_width"])
    if edit is not None:
        lines = path.read_text().splitlines()
        edit(lines)
        path.write_text("\n".join(lines) + "\n")
    return path


def _cells(lines: list[str], line: int, column: int, value: str) -> None:
    cells = lines[line - 1].split(",")
    cells[column] = value
    lines[line - 1] = ",".join(cells)


# (what is wrong, the edit of the file, what the error must name); columns: trial_id, status,
# lr_meta, kb_width, task, val_acc, test_acc, seconds, seed; line 1 is the header
BAD_TABLES = [
    ("an empty setting", lambda ls: _cells(ls, 3, 2, ""), "line 3 (trial a seed 0 task 2), column lr_meta: empty"),
    ("a setting outside the space", lambda ls: _cells(ls, 4, 2, "0.5"),
     "line 4 (trial b seed 0 task 1), column lr_meta: 0.5 is outside the space's range"),
    ("a choice the space lacks", lambda ls: _cells(ls, 5, 3, "48"),
     "line 5 (trial b seed 0 task 2), column kb_width: 48 is not one of [32, 64]"),
    ("a setting that is not a number", lambda ls: _cells(ls, 2, 2, "fast"),
     "line 2 (trial a seed 0 task 1), column lr_meta: 'fast' is not a number"),
    ("a task gap", lambda ls: _cells(ls, 3, 4, "3"), "line 3 (trial a seed 0 task 3), column task"),
    ("a repeated task", lambda ls: _cells(ls, 3, 4, "1"), "(trial a seed 0 task 1), column task"),
    ("an accuracy outside [0, 1]", lambda ls: _cells(ls, 5, 5, "1.5"),
     "line 5 (trial b seed 0 task 2), column val_acc: 1.5 is not an accuracy"),
    ("an empty accuracy", lambda ls: _cells(ls, 4, 6, ""), "line 4 (trial b seed 0 task 1), column test_acc"),
    ("an accuracy that is not a number", lambda ls: _cells(ls, 2, 5, "n/a"),
     "line 2 (trial a), column val_acc: 'n/a' is not a number"),
]


@pytest.mark.parametrize("what, edit, message", BAD_TABLES, ids=[b[0] for b in BAD_TABLES])
def test_a_bad_table_is_refused_naming_its_row_and_column(tmp_path, capsys, what, edit, message):
    path = _write_table(tmp_path, edit)
    from marktune.replay.table import check_table
    from marktune.results.curves import CurvesError

    with pytest.raises((replay_table_module.ReplayTableError, CurvesError)) as caught:
        check_table(read_curves(path), SPACE, source=str(path))
    assert message in str(caught.value) and str(path) in str(caught.value)


DIGITS = ROOT / "bench" / "curves" / "digits.csv"


def test_the_benches_refuse_a_bad_slice_of_the_shipped_table_before_any_work(tmp_path, capsys):
    lines = DIGITS.read_text().splitlines()[:51]  # the header and 10 curves of 5 tasks
    header = lines[0].split(",")
    cells = lines[7].split(",")
    cells[header.index("kb_depth")] = ""
    lines[7] = ",".join(cells)
    path = tmp_path / "slice.csv"
    path.write_text("\n".join(lines) + "\n")
    separation = load_bench("separation")
    for bench, extra in ((_bench(), ["--jobs", "1"]), (load_bench("surrogates"), [])):
        assert bench.main([str(path), "--space", "digits", *extra]) == 2
        assert f"{path}, line 8 (trial c00 seed 1 task 2), column kb_depth: empty" in capsys.readouterr().err
    assert separation.main(["--space", "digits", "--out", str(path), "--report-only"]) == 2
    assert "line 8 (trial c00 seed 1 task 2), column kb_depth: empty" in capsys.readouterr().err
    defaults_only = ROOT / "bench" / "curves" / "defaults" / "digits.csv"  # the default's rows alone
    assert separation.main(["--space", "digits", "--out", str(defaults_only), "--report-only"]) == 2
    assert "has 0 random configurations with a final result at every seed [0, 1]" in capsys.readouterr().err


def test_a_good_table_passes_and_its_errored_runs_are_listed_as_results(tmp_path):
    def failed_runs(lines):
        lines.append("c,ERROR: NonFiniteLossError,0.05,64,0,,,,0")  # failed in its first task: task 0, no values
        lines.append("d,ERROR: NonFiniteLossError,0.05,64,1,0.5,0.5,1.0,0")  # failed in its second task
    path = _write_table(tmp_path, failed_runs)
    from marktune.replay.table import check_table

    check = check_table(read_curves(path), SPACE, source=str(path))
    assert check.runs == 4 and [str(e) for e in check.errored] == [
        "c seed 0: ERROR: NonFiniteLossError after 0 task(s)", "d seed 0: ERROR: NonFiniteLossError after 1 task(s)"]
    assert len(ReplayTable.from_curves(read_curves(path)).configs) == 2  # only whole curves are replayed
    default = [CurveRow(trial_id="default", status="COMPLETE", params={"lr_meta": None, "kb_width": None}, task=1,
                        val_acc=0.9, test_acc=0.9, seconds=1.0)]
    with pytest.raises(replay_table_module.ReplayTableError, match="column lr_meta: empty"):
        check_table(CurvesTable(searched=["lr_meta", "kb_width"], rows=default), SPACE, source="defaults")
    assert check_table(CurvesTable(searched=["lr_meta", "kb_width"], rows=default), SPACE, source="defaults",
                       blank_ids=["default"], min_configs=0).errored == []  # a default's table: one configuration


def test_the_fresh_seed_bench_picks_the_best_the_worst_and_ranks_between():
    rows = [CurveRow(trial_id=f"c{i}", status="COMPLETE", params={"lr_meta": 0.01, "kb_width": 32}, task=1,
                     val_acc=0.5 + 0.04 * i, test_acc=0.5 + 0.04 * i, seconds=1.0, seed=seed)
            for i in range(10) for seed in (0, 1)]
    rows += [CurveRow(trial_id="one-seed", status="COMPLETE", params={"lr_meta": 0.01, "kb_width": 32}, task=1,
                      val_acc=0.99, test_acc=0.99, seconds=1.0, seed=0)]  # no seed SD: never chosen
    table = ReplayTable.from_curves(CurvesTable(searched=["lr_meta", "kb_width"], rows=rows))
    picked = load_bench("fresh_seeds").chosen(table, 4)
    assert [table.configs[i].key for _, i in picked] == ["c9", "c6", "c3", "c0"]
    assert [rank for rank, _ in picked] == [0, 3, 6, 9]


def test_the_separation_bench_gives_the_seed_sd_per_band_of_accuracy():
    y = np.array([[0.5, 0.7], [0.6, 0.6], [0.9, 0.92], [0.95, 0.95]])  # variances 0.02, 0, 0.0002, 0
    bands = load_bench("separation").seed_sd_by_band(y, quantiles=(0.0, 0.5, 1.0))
    assert [(configs, round(sd, 6)) for _, _, configs, sd in bands] == [(2, 0.1), (2, 0.01), (4, round(0.00505 ** 0.5, 6))]


def test_the_benchmark_grid_replays_every_sampler_and_hyperband():
    from marktune.replay.grid import benchmark_strategies

    grid = benchmark_strategies(num_tasks=3, n_startup_trials=2)
    names = [s.name for s in grid]
    assert {"random", "qmc", "tpe", "tpe no-liar", "tpe-independent", "tpe-group", "gp", "random-sampler",
            "tpe + asha g2 r3", "gp + hyperband g1 r2", "first-1", "first-2"} <= set(names)
    assert next(s for s in grid if s.name == "tpe no-liar").constant_liar is False
    assert next(s for s in grid if s.name == "qmc + hyperband g1 r2").brackets == 3
    only = benchmark_strategies(num_tasks=3, proposals=["gp"], schedulers=["", "asha g1 r2"])
    assert [s.name for s in only] == ["gp", "gp + asha g1 r2"]
    table = curves_table(PRUNED_BEST)
    surrogate = NearestRecorded(table=table, space=SPACE)
    for strategy in benchmark_strategies(num_tasks=3, n_startup_trials=2,
                                         proposals=["qmc", "tpe no-liar", "gp", "tpe-group"],
                                         schedulers=["", "hyperband g1 r2"]):
        outcome = replay(table=table, space=SPACE, strategy=strategy, samples=5, workers=2, seed=1, surrogate=surrogate)
        assert len(outcome.study.trials) == 5, strategy.name
        assert outcome.regret(1.0) >= 0.0 or math.isnan(outcome.regret(1.0))
        again = replay(table=table, space=SPACE, strategy=strategy, samples=5, workers=2, seed=1, surrogate=surrogate)
        assert [t.config for t in again.trials] == [t.config for t in outcome.trials], strategy.name  # seeded


def test_the_confirmation_stage_re_runs_the_top_trials_and_picks_on_their_mean():
    rows = []
    for key, lr, finals in (("A", 0.001, (0.99, 0.80, 0.80)), ("B", 0.01, (0.95, 0.95, 0.95)),
                            ("C", 0.05, (0.70, 0.70, 0.70))):
        for seed, final in enumerate(finals):
            rows += [CurveRow(trial_id=key, status="COMPLETE", params={"lr_meta": lr, "kb_width": 32}, task=k,
                              val_acc=final, test_acc=final, seconds=1.0, seed=seed) for k in (1, 2)]
    table = ReplayTable.from_curves(CurvesTable(searched=["lr_meta", "kb_width"], rows=rows))
    fooled = 0
    for seed in range(30):
        outcome = replay(table=table, space=SPACE, strategy=RANDOM, samples=3, seed=seed)
        a = next(t for t in outcome.trials if t.config == config_index(table, "A"))
        plain = outcome.confirm(top=0, seeds=0, rng=np.random.default_rng(seed))
        assert plain.picked is outcome.pick(1.0) and plain.extra_runs == 0
        confirmed = outcome.confirm(top=2, seeds=2, rng=np.random.default_rng(seed))
        assert table.configs[confirmed.picked.config].key == "B"  # A's lucky seed does not carry it
        assert confirmed.regret == pytest.approx(0.0) and confirmed.extra_runs == 4
        if a.curve.seed == 0:  # A showed 0.99: the plain pick is fooled, regret 0.95 - 0.8633
            fooled += 1
            assert table.configs[plain.picked.config].key == "A"
            assert plain.regret == pytest.approx(0.95 - (0.99 + 0.80 + 0.80) / 3)
            assert confirmed.value == pytest.approx(0.95)
    assert 0 < fooled < 30
    one_more = replay(table=table, space=SPACE, strategy=RANDOM, samples=3, seed=0).confirm(
        top=3, seeds=5, rng=np.random.default_rng(0))
    assert one_more.extra_runs == 3 * 2  # only two seeds are left to draw for each


def test_the_fresh_seed_bench_can_take_the_top_of_a_one_seed_table_and_pool_its_seed_sd(tmp_path, capsys):
    bench = load_bench("fresh_seeds")
    rows = [CurveRow(trial_id=f"c{i}", status="COMPLETE", params={"lr_meta": 0.01, "kb_width": 32}, task=1,
                     val_acc=0.5 + 0.1 * i, test_acc=0.5, seconds=1.0, seed=0) for i in range(4)]
    table = ReplayTable.from_curves(CurvesTable(searched=["lr_meta", "kb_width"], rows=rows))
    picked = bench.chosen(table, 2, top=True)
    assert [table.configs[i].key for _, i in picked] == ["c3", "c2"]
    out = tmp_path / "fresh.csv"
    out.write_text(",".join(bench.COLUMNS) + "\n" + "c3,1,3,0.5,0.7,,,,,,,,,,,1\nc2,2,3,0.5,0.8,,,,,,,,,,,1\n")
    bench.print_top_seed_sd(table, picked, out)  # c3: 0.8, 0.7; c2: 0.7, 0.8: variance 0.005 each
    assert "pooled over these 2 configurations: 0.0707" in capsys.readouterr().out


def test_a_slice_of_the_shipped_table_converts_to_syne_tune_s_tabular_shape(tmp_path):
    from marktune.replay import blackbox

    assert doctest.testmod(blackbox).failed == 0
    path = shipped_slice(DIGITS, tmp_path, configs=12)
    curves = read_curves(path)
    arrays = blackbox.to_blackbox_arrays(ReplayTable.from_curves(curves))
    assert arrays.seeds == [0, 1, 2, 3, 4] and list(arrays.fidelities) == [1, 2, 3, 4, 5]
    assert arrays.objectives.shape == (12 - len(arrays.dropped), 5, 5, 3)
    first = [r for r in curves.rows if r.trial_id == arrays.config_ids[0] and r.seed == 1]
    cell = arrays.objectives[0, 1]  # the first kept configuration at seed 1, every task
    assert list(cell[:, 0]) == [r.val_acc for r in first] and list(cell[:, 1]) == [r.test_acc for r in first]
    assert cell[-1, 2] == pytest.approx(sum(r.seconds for r in first))  # the clock is cumulative
    (tmp_path / "more").mkdir()
    with_error = blackbox.to_blackbox_arrays(ReplayTable.from_curves(read_curves(
        shipped_slice(DIGITS, tmp_path / "more", configs=120))))
    assert "c104" in with_error.dropped and "c104" not in with_error.config_ids  # an errored seed: left out
    from marktune.tune.spaces import load_space

    blackbox.save_blackbox(arrays, tmp_path / "bb.npz", space=load_space("digits"))
    saved = np.load(tmp_path / "bb.npz")
    assert list(saved["config_ids"]) == arrays.config_ids and np.array_equal(saved["objectives"], arrays.objectives)
    assert list(saved["objectives_names"]) == list(blackbox.OBJECTIVES)
    settings = [json.loads(str(s)) for s in saved["settings"]]  # what a settings-proposing searcher is answered by
    assert settings[0] == first[0].params and len(settings) == len(arrays.config_ids)
    space = {p["name"]: p for p in json.loads(str(saved["space"]))}
    assert space["lr_meta"] == {"name": "lr_meta", "kind": "loguniform", "low": 1e-3, "high": 1e-1, "values": None}
    assert space["mask_activation"]["values"] == ["relu", "sigmoid"] and set(space) == set(first[0].params)


def test_the_syne_tune_bench_answers_a_proposal_with_the_nearest_configuration_and_scores_as_the_replay(tmp_path):
    from marktune.replay import blackbox
    from marktune.tune.spaces import load_space

    bench = load_bench("syne_tune_check")  # its table side is numpy only: it runs here without Syne Tune
    arrays = blackbox.to_blackbox_arrays(ReplayTable.from_curves(read_curves(shipped_slice(DIGITS, tmp_path, configs=12))))
    blackbox.save_blackbox(arrays, tmp_path / "bb.npz", space=load_space("digits"))
    table = bench.Table(tmp_path / "bb.npz")
    assert [table.nearest(table.encode(s)) for s in arrays.settings] == list(range(len(arrays.settings)))
    near = dict(arrays.settings[2], lr_meta=arrays.settings[2]["lr_meta"] * 1.01)  # a proposal off the table
    assert table.nearest(table.encode(near)) == 2
    assert table.unit.min() >= 0 and table.unit.max() <= 1
    worst, best = int(np.argmin(table.worth)), int(np.argmax(table.worth))
    R = bench.Report
    # a trial of the worst configuration ends first with the higher val; the best ends after half the budget
    reports = [R(clock=t, trial=0, tasks=t, val=0.9, config=worst) for t in range(1, 6)]
    reports += [R(clock=10 + t, trial=1, tasks=t, val=0.5, config=best) for t in range(1, 6)]
    reports += [R(clock=20 + t, trial=2, tasks=t, val=0.95, config=best) for t in range(1, 6)]
    scored = bench.score(reports, table, budget=20)  # 15 task-trainings of 20
    assert scored.regrets[0.25] == pytest.approx(table.best - table.worth[worst])  # 5 trainings: trial 0 only
    assert scored.regrets[0.5] == pytest.approx(table.best - table.worth[worst])  # 10: trial 1 ends at 10, lower val
    assert scored.regrets[1.0] == pytest.approx(0.0)  # trial 2's val is the best
    assert scored.trainings == pytest.approx(15 / 20) and scored.wall_s == 25


def test_a_multi_objective_replay_reports_a_pareto_set_and_its_hypervolume_regret():
    from marktune.replay.costs import ParameterCounts, final_costs
    from marktune.replay.table import synthetic_curves
    from marktune.results.objectives import dominates, parse_objectives
    from marktune.tune.spaces import load_space

    space = load_space("fmnist")
    table = ReplayTable.from_curves(synthetic_curves(space=space, configs=8, seed=0))
    table_sizes = final_costs(ParameterCounts(space), [c.params for c in table.configs], tasks=table.num_tasks)
    two = parse_objectives("val_acc,params")
    regrets = {}
    for samples in (2, 8):
        outcome = replay(table=table, space=space, strategy=Strategy(name="r", proposals="table", objectives=two),
                         samples=samples, workers=2, seed=0)
        picks = outcome.pareto_pick()
        assert picks and all(not dominates((-a.value, a.size), (-b.value, b.size)) for a in picks for b in picks)
        assert all(t.size == table_sizes[t.config] for t in outcome.trials)  # a function of the settings
        regrets[samples] = outcome.hypervolume_regret(table_sizes)
    assert 0 <= regrets[8] < regrets[2]  # seeing every configuration misses (almost) nothing of the front
    pruned = replay(table=table, space=space, strategy=Strategy(name="m", proposals="table", objectives=two,
                                                                grace_period=1, reduction_factor=2),
                    samples=8, workers=2, seed=0)
    assert pruned.task_trainings < pruned.budget and math.isfinite(pruned.hypervolume_regret(table_sizes))
    with pytest.raises(ValueError, match="val_acc and params or flops only"):
        Strategy(name="x", proposals="table", objectives=parse_objectives("val_acc,forgetting"))


def test_a_shared_trial_seed_shows_every_trial_at_that_recorded_seed_as_a_live_search_runs_them():
    from marktune.tune.spaces import load_space

    root = Path(__file__).resolve().parents[2]
    table = ReplayTable.from_curves(read_curves(root / "bench" / "curves" / "fmnist-lowdata.csv"))
    space = load_space("fmnist-lowdata")
    strategy = Strategy(name="random", proposals="table")
    shared = replay(table=table, space=space, strategy=strategy, samples=16, workers=2, seed=0, trial_seed=1)
    assert {t.curve.seed for t in shared.trials} == {1}
    drawn = replay(table=table, space=space, strategy=strategy, samples=16, workers=2, seed=0)
    assert len({t.curve.seed for t in drawn.trials}) > 1
    # the confirmation then re-runs the finalists at the other recorded seeds
    confirmed = shared.confirm(top=3, seeds=2, rng=np.random.default_rng(0))
    assert confirmed.extra_runs == 6 and confirmed.picked is not None


# ---------------------------------------------------------------- held-out scoring
def seeded_table(finals: dict[str, tuple[float, ...]]) -> ReplayTable:
    """key -> final val = test ACC per seed 0, 1, ... (two tasks, the first equal to the last)."""
    rows = []
    for i, (key, per_seed) in enumerate(finals.items()):
        for seed, final in enumerate(per_seed):
            rows += [CurveRow(trial_id=key, status="COMPLETE", params={"lr_meta": 0.001 * (i + 1), "kb_width": 32},
                              task=k, val_acc=final, test_acc=final, seconds=1.0, seed=seed) for k in (1, 2)]
    return ReplayTable.from_curves(CurvesTable(searched=["lr_meta", "kb_width"], rows=rows))


def test_a_held_out_pick_is_never_scored_at_the_seed_that_selected_it():
    from marktune.replay.seed_roles import SeedRoles

    # A is lucky at seed 0 only; B is steady. A search at seed 0 picks A.
    table = seeded_table({"A": (0.99, 0.80, 0.80), "B": (0.90, 0.90, 0.90)})
    held_out = replay(table=table, space=SPACE, strategy=RANDOM, samples=2, seed=0,
                      roles=SeedRoles(search=0, confirm=(), score=(1, 2)))
    assert {t.curve.seed for t in held_out.trials} == {0}
    assert table.configs[held_out.pick(1.0).config].key == "A"
    assert held_out.regret(1.0) == pytest.approx(0.90 - 0.80)  # A at seeds 1 and 2 only, not 0.99 at seed 0
    seen = replay(table=table, space=SPACE, strategy=RANDOM, samples=2, seed=0, trial_seed=0)
    assert seen.regret(1.0) == pytest.approx(0.90 - (0.99 + 0.80 + 0.80) / 3)  # the biased score, for contrast


def test_a_held_out_confirmation_re_runs_at_its_confirm_seeds_and_never_at_the_score_seeds():
    from marktune.replay.seed_roles import SeedRoles

    # A is lucky at seeds 0 and 1: confirmed at seed 1 it still wins, and it is worth 0.80 on seeds 2-3
    table = seeded_table({"A": (0.99, 0.99, 0.80, 0.80), "B": (0.90, 0.90, 0.90, 0.90)})
    roles = SeedRoles(search=0, confirm=(1,), score=(2, 3))
    for seed in range(5):
        outcome = replay(table=table, space=SPACE, strategy=RANDOM, samples=2, seed=seed, roles=roles)
        confirmed = outcome.confirm(top=2, seeds=1, rng=np.random.default_rng(seed))
        assert confirmed.extra_runs == 2
        assert table.configs[confirmed.picked.config].key == "A" and confirmed.regret == pytest.approx(0.10)


def test_seed_roles_give_every_seed_one_role_and_too_few_seeds_are_refused_in_words():
    from marktune.replay.seed_roles import SeedRoles, TooFewSeedsError, assignments

    roles = assignments([0, 1, 2, 3, 4], confirm=2)
    assert len(roles) == 30 and len(set(roles)) == 30
    for r in roles:
        assert sorted(r.seeds) == [0, 1, 2, 3, 4] and len(r.score) == 2
    with pytest.raises(TooFewSeedsError, match="at least 4 recorded seeds.*--score seen"):
        assignments([0, 1, 2], confirm=2)
    with pytest.raises(ValueError, match="two roles"):
        SeedRoles(search=0, confirm=(1,), score=(0,))


def test_the_benches_score_held_out_by_default_and_refuse_a_table_of_too_few_seeds(tmp_path, capsys):
    table = tmp_path / "three.csv"
    rows = []
    for i in range(6):
        for seed in range(3):
            rows += [CurveRow(trial_id=f"c{i}", status="COMPLETE", params={"lr_meta": 0.001 * (i + 1),
                                                                           "kb_width": 32},
                              task=k, val_acc=0.5 + 0.05 * i, test_acc=0.5 + 0.05 * i, seconds=1.0, seed=seed)
                     for k in (1, 2)]
    write_curves(table, rows, searched=["lr_meta", "kb_width"])
    default = tmp_path / "defaults" / "three.csv"
    default.parent.mkdir()
    write_curves(default, [CurveRow(trial_id="default", status="COMPLETE", params={}, task=k, val_acc=0.7,
                                    test_acc=0.7, seconds=1.0, seed=s) for s in range(3) for k in (1, 2)],
                 searched=["lr_meta", "kb_width"])
    space = tmp_path / "hand.yaml"
    space.write_text("benchmark: fmnist\nfixed: {num_tasks: 2}\nsearch:\n"
                     "  lr_meta: {type: loguniform, low: 0.0001, high: 0.1}\n"
                     "  kb_width: {type: choice, values: [32, 64]}\n")
    confirm = load_bench("confirm")
    assert confirm.main([str(table), "--space", str(space), "--samples", "4", "--replays", "4"]) == 2
    assert "at least 4 recorded seeds" in capsys.readouterr().err
    assert confirm.main([str(table), "--space", str(space), "--samples", "4", "--replays", "6",
                         "--rules", "2x1"]) == 0
    out = capsys.readouterr().out
    assert "scored on held-out seeds" in out and "search 0, confirm 1, score 2" in out
    assert confirm.main([str(table), "--space", str(space), "--samples", "4", "--replays", "4",
                         "--score", "seen"]) == 0
    assert "biased" in capsys.readouterr().out
    assert _bench().main([str(table), "--space", str(space), "--samples", "4", "--replay-seeds", "3",
                          "--jobs", "1"]) == 0
    assert "scored on held-out seeds" in capsys.readouterr().out


def test_the_benches_refuse_a_header_only_or_one_configuration_table_and_zero_counts_in_words(tmp_path, capsys):
    header_only, one = tmp_path / "h.csv", tmp_path / "one.csv"
    lines = DIGITS.read_text().splitlines()
    header_only.write_text(lines[0] + "\n")
    one.write_text("\n".join([lines[0], *[ln for ln in lines[1:] if ln.startswith("c00,")]]) + "\n")
    for name in ("replay", "confirm", "calibration", "surrogates"):
        for table, found in ((header_only, "0 configuration(s) ran all 5 tasks"),
                             (one, "1 configuration(s) ran all 5 tasks")):
            assert load_bench(name).main([str(table), "--space", "digits"]) == 2, name
            err = capsys.readouterr().err
            assert found in err and "Traceback" not in err, (name, err)
    for name, flags in (("replay", ["--workers", "0"]), ("replay", ["--replay-seeds", "0"]),
                        ("confirm", ["--samples", "0"]), ("calibration", ["--replays", "1"])):
        with pytest.raises(SystemExit) as stop:
            load_bench(name).main([str(DIGITS), "--space", "digits", *flags])
        assert stop.value.code == 2 and "must be at least" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        load_bench("separation").main(["--space", "digits", "--configs", "0", "--out", str(tmp_path / "s.csv")])
    assert "--configs: must be at least 2" in capsys.readouterr().err and not (tmp_path / "s.csv").exists()


def test_the_tie_bench_checks_the_rule_on_held_out_seeds_and_refuses_a_table_of_one_seed(tmp_path, capsys):
    tie = load_bench("tie_check")
    # two configurations, A ahead by 0.01 at seed 0 (within any margin): tied, and the same held out
    rows = []
    for key, lr, finals in (("A", 0.001, (0.91, 0.90, 0.90, 0.90)), ("B", 0.01, (0.90, 0.90, 0.90, 0.90)),
                            ("C", 0.02, (0.50, 0.50, 0.50, 0.50))):
        for seed, final in enumerate(finals):
            rows += [CurveRow(trial_id=key, status="COMPLETE", params={"lr_meta": lr, "kb_width": 32}, task=k,
                              val_acc=final, test_acc=final + 0.001 * seed * (key == "B"), seconds=1.0, seed=seed)
                     for k in (1, 2)]
    table = ReplayTable.from_curves(CurvesTable(searched=["lr_meta", "kb_width"], rows=rows))
    val, test = tie.finals(table, [0, 1, 2, 3])
    c = tie.check(val, test, sd=0.02, samples=3, replays=4)
    assert c["tied"] >= 1 and c["tied_within"] == c["tied"]  # B (or A) within the margin held out
    assert c["other"] >= 1 and c["other_within"] == 0  # C, far below: never tied, never within
    one = tmp_path / "one.csv"
    write_curves(one, [r for r in read_curves(DIGITS).rows if r.seed == 0], searched=read_curves(DIGITS).searched)
    assert tie.main([str(one), "--space", "digits"]) == 2
    assert "needs 3 or more" in capsys.readouterr().err


def test_a_replay_on_flops_reports_each_trials_counted_flops_after_every_task(tmp_path):
    import csv

    from marktune.replay.costs import FLOPS_COLUMNS, FlopsTable, counted_settings
    from marktune.replay.table import synthetic_curves
    from marktune.results.objectives import parse_objectives
    from marktune.tune.spaces import load_space

    combinations = load_bench("flops_table").combinations
    space = load_space("digits")
    table = ReplayTable.from_curves(synthetic_curves(space=space, configs=12, seed=0))
    names = counted_settings(space)

    def count(settings, task):  # a made-up count, distinct for every combination and task
        return task * (1 + settings["kb_width"] * settings["kb_depth"] + 7 * settings["inner_steps"]
                       + 100 * settings["mini_tasks"] + settings["mask_hidden"])
    path = tmp_path / "flops.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FLOPS_COLUMNS[:1] + names + FLOPS_COLUMNS[1:])
        writer.writeheader()
        for combo in combinations(space):
            for task in range(1, table.num_tasks + 1):
                writer.writerow({"source": "grid", **combo, "task": task, "train_flops": count(combo, task),
                                 "status": "COMPLETE", "seconds": 1})
    flops = FlopsTable(path, space)
    assert len(flops) == len(combinations(space)) == 2 * 3 * 2 * 3 * 5
    two = parse_objectives("val_acc,flops")
    told = []
    outcome = replay(table=table, space=space, costs=flops, samples=12, workers=2, seed=0,
                     strategy=Strategy(name="m", proposals="tpe", objectives=two, grace_period=1, reduction_factor=2))
    for study_trial, trial in zip(outcome.study.trials, outcome.trials):  # in the order they were asked
        expected = count({n: study_trial.params[n] for n in names}, trial.tasks_run)
        assert trial.size == expected  # its own settings' count, at the task it stopped after
        told.append(study_trial.values is None or study_trial.values[1] == expected)
    assert any(not t.finished for t in outcome.trials)  # ASHA stopped some: their counts are partial
    assert all(told)
    with pytest.raises(ValueError, match="needs its costs"):
        replay(table=table, space=space, samples=2, strategy=Strategy(name="m", proposals="table", objectives=two))
    gone = {n: combinations(space)[0][n] for n in names}
    path.write_text("\n".join(line for line in path.read_text().splitlines()
                               if not line.startswith("grid," + ",".join(str(gone[n]) for n in names) + ",")))
    with pytest.raises(KeyError, match="flops_table.py"):
        FlopsTable(path, space).curve(gone, tasks=table.num_tasks)


def test_the_flops_bench_never_writes_over_a_table_without_resume(tmp_path, capsys):
    table = tmp_path / "flops.csv"
    table.write_text("source,task\ngrid,1\n")
    with pytest.raises(SystemExit) as exit_:
        load_bench("flops_table").main(["--space", "digits", "--out", str(table)])
    assert exit_.value.code == 2 and "add --resume" in capsys.readouterr().err
    assert table.read_text() == "source,task\ngrid,1\n"
