"""The strategy layer: one registry of samplers and schedulers that the flags, the plan, the
search run and the replay all read; hyperband added through it."""
from types import SimpleNamespace

import pytest

from marktune.cli import search
from marktune.mark.metrics import METRIC, TIME_ATTR
from marktune.replay.grid import BENCHMARK_SCHEDULERS, PROPOSALS, benchmark_strategies
from marktune.replay.search import replay_scheduler
from marktune.tune.strategy.strategies import SAMPLERS, SCHEDULERS, SearchStrategy, StrategyError


def test_the_replay_and_the_live_search_accept_the_same_names():
    parser = search.build_parser()
    choices = {a.dest: a.choices for a in parser._actions if a.dest in ("searcher", "scheduler")}
    assert list(choices["searcher"]) == list(SAMPLERS) and list(choices["scheduler"]) == list(SCHEDULERS)
    # every scheduler the live search runs is in the replay's grid, and the grid runs no other
    assert {name for name, *_ in BENCHMARK_SCHEDULERS} == set(SCHEDULERS)
    # every sampler is replayed (Optuna's random sampler as "random-sampler"; "table" is random search too)
    assert set(SAMPLERS) - {"random"} <= set(PROPOSALS) and "random-sampler" in PROPOSALS
    for strategy in benchmark_strategies(num_tasks=4, proposals=["random"]):
        scheduler = replay_scheduler(strategy, num_tasks=4)
        if strategy.prunes:  # built by the registry's factory under its own name
            assert type(scheduler).__name__ == "ResumableASHA" and strategy.scheduler in SCHEDULERS


def test_help_lists_every_registered_name_and_its_words():
    text = search.build_parser().format_help()
    for name, entry in {**SAMPLERS, **SCHEDULERS}.items():
        assert f"{name} ({entry.help.split()[0]}" in " ".join(text.split()), name


def test_a_strategy_is_the_flags_else_the_space_s_defaults_checked_once():
    defaults = {"searcher": "tpe", "n_startup_trials": 10, "constant_liar": True, "scheduler": "asha",
                "grace_period": 2, "reduction_factor": 3, "brackets": 3}
    s = SearchStrategy.chosen(defaults, searcher="random", scheduler=None)
    assert (s.searcher, s.scheduler, s.grace_period, s.reduction_factor) == ("random", "asha", 2, 3)
    with pytest.raises(StrategyError, match="unknown scheduler 'bohb'; one of asha, hyperband, none"):
        SearchStrategy.chosen(defaults, scheduler="bohb")
    with pytest.raises(StrategyError, match="brackets must be a number >= 1"):
        SearchStrategy.chosen({**defaults, "brackets": 0})
    assert s.check_tasks(1) == "grace_period (2) exceeds the 1 tasks a trial runs"
    assert SearchStrategy.chosen(defaults, scheduler="none").check_tasks(1) is None


def test_hyperband_is_asha_over_the_space_s_brackets_and_refills_its_rungs():
    strategy = SearchStrategy(searcher="random", scheduler="hyperband", grace_period=1, reduction_factor=2,
                              brackets=3)
    scheduler = strategy.make_scheduler(num_tasks=5)
    assert [sorted(r) for r in scheduler.rungs()] == [[1, 2, 4], [2, 4], [4]]
    assert "asynchronous Hyperband stops weak trials (grace period 1 tasks, reduction factor 2, 3 brackets)" \
        in strategy.words(samples=8, num_tasks=5)
    scheduler.set_search_properties(METRIC, "max")
    trial = SimpleNamespace(trial_id="t0", storage=None, has_reported_at_least_once=False)
    scheduler.on_trial_add(None, trial)
    scheduler.refill(trial, [{TIME_ATTR: t, METRIC: 0.5 + t / 10} for t in (1, 2, 3, 4)])
    recorded = {m: v["t0"] for rungs in scheduler.rungs() for m, v in rungs.items() if "t0" in v}
    assert recorded and all(value == pytest.approx(0.5 + m / 10) for m, value in recorded.items())


def test_hyperband_with_several_objectives_is_refused_before_ray_starts(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(search, "start_ray", lambda *a, **k: pytest.fail("Ray was started"))
    code = search.main(["--space", "digits", "--scheduler", "hyperband", "--objectives", "val_acc,params",
                        "--storage", str(tmp_path / "st"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "--scheduler hyperband ranks one objective; with several --objectives use " \
                         "--scheduler asha or --scheduler none" in err, err
    assert not (tmp_path / "st").exists()


def test_a_hyperband_plan_says_so_and_its_why_names_the_flag(tmp_path):
    args = search.build_parser().parse_args(["--space", "digits", "--scheduler", "hyperband",
                                             "--storage", str(tmp_path), "--name", "x"])
    plan = search.plan_from_args(args)
    assert plan.scheduler == "hyperband" and "asynchronous Hyperband" in plan.strategy()
    assert "--scheduler hyperband" in plan.why()


def test_nsga2_s_generation_is_sized_to_the_search_unless_the_space_sets_it():
    sized = SearchStrategy(searcher="nsga2")
    assert [sized.population_for(n) for n in (8, 32, 400)] == [2, 8, 50]  # a quarter, from 2 to Optuna's 50
    assert sized.make_sampler(seed=0, samples=32)._population_size == 8
    assert SearchStrategy(searcher="nsga2", population=6).make_sampler(seed=0, samples=400)._population_size == 6
    assert "first generation of 8 trials is random" in sized.words(samples=32, num_tasks=5)
    with pytest.raises(StrategyError, match="population must be a number >= 2"):
        SearchStrategy(searcher="nsga2", population=1)
