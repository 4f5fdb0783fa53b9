"""The commands' shared flags, their typed plans, and the trial's runtime settings (no Ray)."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from marktune.cli import evaluate, flags, search
from marktune.cli.main import main as marktune_main
from marktune.results.protocols import STOP_AFTER_KEY
from marktune.tune.plan import RUNTIME_KEY, PlanError, check_trial_resources
from runners.runtime import TrialRuntime

PACKAGE = Path(__file__).resolve().parents[2] / "marktune"
COMMANDS = ("search", "evaluate", "run", "report")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


# ---------------------------------------------------------------- the trial's runtime settings
def test_trial_runtime_writes_the_params_json_keys_searches_always_wrote():
    assert RUNTIME_KEY == "marktune_runtime"
    runtime = TrialRuntime(data_dir="/data", download=True, threads=2, cpu_fallback=True, gpu_memory_fraction=0.5)
    assert list(runtime.to_dict().items()) == [("data_dir", "/data"), ("download", True), ("threads", 2),
                                               ("cpu_fallback", True), ("gpu_memory_fraction", 0.5)]
    first_k = TrialRuntime(threads=1, stop_after_tasks=3).to_dict()
    assert first_k == {"data_dir": None, "download": False, "threads": 1, "cpu_fallback": False,
                       "gpu_memory_fraction": None, STOP_AFTER_KEY: 3}
    assert TrialRuntime.from_dict(json.loads(json.dumps(first_k))) == TrialRuntime(threads=1, stop_after_tasks=3)


def test_trial_runtime_reads_an_older_experiments_dict():
    old = TrialRuntime.from_dict({"data_dir": None, "download": False, "threads": 1})  # before the GPU flags
    assert old == TrialRuntime(threads=1)
    assert TrialRuntime.from_dict(None) == TrialRuntime()
    with pytest.raises(TypeError):  # keyword-only and frozen: every setting is named where it is made
        TrialRuntime(None, False)  # type: ignore[misc]


def test_the_search_plan_carries_the_runtime_each_trial_gets():
    args = search.build_parser().parse_args(["--space", "digits", "--protocol", "first-k", "--data-dir", "/d",
                                             "--cpus-per-trial", "2.5", "--cpu-fallback",
                                             "--gpu-memory-fraction", "0.5", "--address", "auto", "--num-cpus", "3"])
    plan = search.plan_from_args(args)
    assert plan.runtime == TrialRuntime(data_dir="/d", threads=2, cpu_fallback=True, gpu_memory_fraction=0.5,
                                        stop_after_tasks=3)
    assert (plan.ray.address, plan.ray.num_cpus, plan.ray.num_gpus) == ("auto", 3, None)
    with pytest.raises(AttributeError):
        plan.samples = 3  # type: ignore[misc]


# ---------------------------------------------------------------- flags
def test_resource_flags_are_checked_once_for_both_commands(tmp_path):
    for flag, value, message in [("--cpus-per-trial", "-1", "--cpus-per-trial must be >= 0"),
                                 ("--gpus-per-trial", "1.5", "--gpus-per-trial must be a fraction"),
                                 ("--max-concurrent", "0", "--max-concurrent must be >= 1"),
                                 ("--max-failures", "-1", "--max-failures must be >= 0")]:
        with pytest.raises(PlanError, match=message):
            search.plan_from_args(search.build_parser().parse_args(["--space", "digits", flag, value]))
        with pytest.raises(PlanError, match=message):  # before the experiment is even read
            evaluate.plan_from_args(evaluate.build_parser().parse_args([str(tmp_path / "nope"), flag, value]))
    check_trial_resources(cpus_per_trial=None, gpus_per_trial=None, max_concurrent=None, max_failures=None)


def test_given_destinations_are_the_flags_on_the_command_line_only():
    parser = search.build_parser()
    assert flags.given_destinations(parser, []) == set()
    # a value equal to the default is still given; --set appends
    assert flags.given_destinations(parser, ["--space", "fmnist", "--seed", "0", "--set", "epochs=1",
                                             "--set", "kb_width=8", "--resume"]) == {"space", "seed", "overrides",
                                                                                    "resume"}
    assert search.given_flags(["--protocol", "full"]) == {"protocol"}


def test_shared_flags_are_declared_in_one_place():
    sources = {name: (PACKAGE / "cli" / f"{name}.py").read_text() for name in ("search", "evaluate")}
    for flag in ("--cpus-per-trial", "--gpus-per-trial", "--max-concurrent", "--max-failures", "--address",
                 "--num-cpus", "--num-gpus", "--data-dir", "--download", "--optuna-storage", "--protocol"):
        assert not any(f'"{flag}"' in text for text in sources.values()), flag
        assert f'"{flag}"' in (PACKAGE / "cli" / "flags.py").read_text(), flag


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_a_grouped_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        marktune_main([command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert f"python -m marktune.{command}" in out
    if command in ("search", "evaluate"):
        for group in ("resources per ", "Ray:", "data:", "output:"):
            assert group in out, group


# ---------------------------------------------------------------- layers
@pytest.mark.parametrize("command", COMMANDS)
def test_commands_are_peers(command):
    others = {f"marktune.cli.{c}" for c in COMMANDS if c != command}
    imported = _imports(PACKAGE / "cli" / f"{command}.py")
    assert not imported & others, imported & others


def test_no_argparse_namespace_below_the_command_line():
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name != "cli":
            assert "argparse" not in _imports(path), path


@pytest.mark.parametrize("argv, searcher, liar, said", [
    (["--searcher", "tpe"], "tpe", True, "Optuna's TPE (its first 4 trials random), constant liar on"),
    ([], "random", True, "Optuna's random sampler"),
    (["--searcher", "gp", "--samples", "12"], "gp", True, "Optuna's GP sampler (its first 4 trials random)"),
    (["--searcher", "qmc"], "qmc", True, "Optuna's QMC sampler (scrambled Sobol)"),
    (["--searcher", "tpe", "--no-constant-liar", "--samples", "12"], "tpe", False, "constant liar off"),
    (["--searcher", "nsga2"], "nsga2", True, "NSGA-II, whose first generation of 2 trials is random"),
    (["--searcher", "nsga2", "--samples", "40"], "nsga2", True, "NSGA-II, whose first generation of 10 trials"),
])
def test_the_searcher_and_the_constant_liar_reach_the_plan_and_its_words(argv, searcher, liar, said):
    plan = search.plan_from_args(search.build_parser().parse_args(["--space", "fmnist", *argv]))
    assert (plan.searcher, plan.constant_liar) == (searcher, liar)
    assert said in plan.strategy()


def test_the_confirmation_flags_reach_the_plan_its_words_and_the_saved_settings(tmp_path):
    from marktune.tune.folders.search_settings import KEPT_ON_RESUME, search_settings

    def plan(*argv):
        return search.plan_from_args(search.build_parser().parse_args(["--space", "fmnist", *argv]))

    base = plan()
    on = plan("--confirm-top", "4", "--confirm-seeds", "3")
    assert (on.confirm_top, on.confirm_seeds) == (4, 3)
    assert "then the top 4 complete trials run at 3 more seeds" in on.strategy()
    assert "--confirm-top 4" in on.why() and "--confirm-seeds 3" in on.why()
    off = plan("--confirm-top", "0")
    assert off.confirm_top == 0 and "no confirmation stage" in off.strategy()
    # the space's own choice, and its reason, when no flag changed it
    assert (base.confirm_top, base.confirm_seeds) == (base.space.defaults["confirm_top"],
                                                     base.space.defaults["confirm_seeds"])
    assert base.why() == base.space.defaults["why"]
    assert {"confirm_top", "confirm_seeds"} <= set(KEPT_ON_RESUME)
    assert search_settings(on)["confirm_top"] == 4 and search_settings(on)["confirm_seeds"] == 3
    with pytest.raises(PlanError, match="--confirm-top must be >= 0"):
        plan("--confirm-top", "-1")
    with pytest.raises(PlanError, match="--confirm-seeds must be >= 1"):
        plan("--confirm-seeds", "0")
