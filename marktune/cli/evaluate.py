"""Re-evaluate a search's best configurations over fresh seeds: ``python -m marktune.evaluate EXP``.

A search selects on one seed's validation accuracy. A paper reports test ACC and BWT as
mean +- std over seeds, next to baselines. This command re-runs, each with ``--seeds`` fresh
seeds (never the search's own):

* the ``--top`` best COMPLETE trials of the search (ranked by validation ACC, as the search);
* the space's default configuration (rule in ``marktune.results.experiment.Experiment.default_config``);
* ablations of the best configuration, each removing one thing (``--ablations``, default all
  three): ``none`` (no metalearning), ``finetune`` (the KB fine-tuned on each task instead of
  metalearned) and ``nomask`` (no masks).

Every configuration runs on the same (data_seed, seed) pairs: ``--orders`` class orders x
``--seeds`` initialisations, so each is compared with the default pair by pair
(``marktune.results.conclusions``, ``marktune.results.statistics``); what the search selected on (its
``--protocol``, ``marktune.results.protocols``) decides what is reported as unseen. ``--benchmark``
moves the configurations to another benchmark of the same shape.

Every run is one Ray Tune trial of ``runners.mark_sequence.train_mark_sequence`` (the search's
trainable), from a grid over (configuration, data seed, seed), with no scheduler: every run goes
to the last task. Output, in the experiment directory: ``evaluation.csv`` (one row per run),
``evaluation.md`` (the verdict sentence, the paired table, one row per configuration),
``evaluation.json`` and ``evaluations/<protocol>.*``. The runs' own Tune directories go to
``<storage>/<experiment>-eval``.

This module is the command line: parse the flags (shared ones in :mod:`marktune.cli.flags`),
build the typed plan (:class:`marktune.tune.plan.EvalPlan`), check it and start Ray
(:mod:`marktune.tune.runs.launch`), run it (:mod:`marktune.tune.runs.evaluation_run`), write the tables.
"""
from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from marktune.cli import flags
from marktune.results import conclusions
from marktune.mark.config import ConfigError, MarkConfig
from marktune.results.evaluation_table import aggregate, format_markdown, write_csv
from marktune.results.experiment import Experiment, ExperimentError
from marktune.results.confirmation import unused_seeds
from marktune.results.files import is_remote, write_atomic
from marktune.tune.runs.evaluation_run import conclude_and_save, front_verdicts, run_evaluation, run_records
from marktune.results.files import LOCK_FILE
from marktune.tune.folders.output import RunFolderTaken, check_evaluation_folder, move_aside
from marktune.tune.folders.ownership import MARKER, FolderOwned, check_kind, claim
from marktune.tune.folders.lock import ExperimentLock, lock_search_directory
from marktune.tune.runs.launch import check_evaluation, shutdown_ray, start_ray
from marktune.tune.runs.preflight import check_cluster_resources
from marktune.tune.plan import (EvalConfig, EvalPlan, PlanError, check_name, check_seed,
                                check_stage_size, check_trial_resources, trial_threads)
from marktune.tune.spaces import load_experiment_with_space
from runners.runtime import TrialRuntime

FIRST_SEED = 1000  # evaluation seeds are the first S integers >= this that no search trial used
DEFAULT_SEEDS, DEFAULT_ORDERS = 3, 1
DEFAULT_TOP = 3  # best trials re-run (a multi-objective search's: its whole Pareto set)  # a space may set its own (defaults.eval_seeds, defaults.eval_orders)


class EvaluateError(ValueError):
    """A flag or experiment problem found before Ray starts."""


# ---------------------------------------------------------------- what to run
# The ablations of the best configuration: the settings that make each, and what it removes,
# in words (the table's label). docs/method.md, "Ablations".
ABLATIONS: dict[str, tuple[dict[str, Any], str]] = {
    "none": ({"meta_update": "none"},
             "no metalearning (phase 4 skipped, phase 5 kept: the KB learns on task 1 only)"),
    "finetune": ({"meta_update": "finetune"},
                 "metalearning replaced by fine-tuning the KB on each task (released use_meta: False)"),
    "nomask": ({"use_masks": False},
               "no masks (every mask is one; only the task heads are trained in phases 3 and 5)"),
}
DEFAULT_ABLATIONS = tuple(ABLATIONS)


def parse_ablations(text: str) -> tuple[str, ...]:
    """``"none,finetune"`` -> ``("none", "finetune")``; an empty string: no ablation."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in ABLATIONS]
    if unknown:
        raise EvaluateError(f"--ablations: unknown ablation(s) {', '.join(unknown)}; choose from "
                            f"{', '.join(ABLATIONS)} (comma-separated)")
    return tuple(dict.fromkeys(names))


def ablation_configs(best: Any, names: Sequence[str]) -> list[EvalConfig]:
    """The best configuration (a trial) with each named ablation applied, one row each."""
    return [EvalConfig(f"best 1 {name} ablation: {ABLATIONS[name][1]} (trial {best.trial_id})", "ablation",
                       best.trial_id, MarkConfig.from_dict({**best.config, **ABLATIONS[name][0]}))
            for name in names]


def plan_configs(exp: Experiment, top: int | None, ablations: Sequence[str] = DEFAULT_ABLATIONS) -> list[EvalConfig]:
    missing = exp.missing_winner()
    if missing:  # nothing is evaluated, or named "best 1", in the winner's place
        raise EvaluateError(missing)
    front = exp.pareto_set()  # a multi-objective search: its Pareto set, most accurate first
    best = front[:top] if front else exp.best_complete(DEFAULT_TOP if top is None else top)
    if not best:
        counts = {s: len(exp.by_status(s)) for s in ("PRUNED", "RUNNING", "MISSING", "ERROR")}
        raise EvaluateError(
            f"{exp.path}: no trial finished every task ({exp.num_tasks}), so there is no configuration "
            f"to re-evaluate ({', '.join(f'{v} {k.lower()}' for k, v in counts.items() if v)}). "
            "Resume the search (python -m marktune.search --resume --name ...) or run more trials.")
    rows = []
    for i, trial in enumerate(best, 1):
        rows.append(EvalConfig(f"best {i} (trial {trial.trial_id})", "best", trial.trial_id,
                               MarkConfig.from_dict(trial.config)))
    default, _ = exp.default_config()
    rows.append(EvalConfig(f"default ({exp.space_name or 'shared settings'})", "default", "", default))
    rows += ablation_configs(best[0], ablations)
    return rows


def fresh_seeds(exp: Experiment, n: int) -> list[int]:
    """``n`` seeds from FIRST_SEED on that neither the search's trials nor its confirmation used."""
    return list(unused_seeds(FIRST_SEED, n, used=exp.seeds_used()))


# ---------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m marktune.evaluate",
        description="Re-run a search's best configurations, its space's default and ablations of the "
                    "best one with fresh seeds; report test ACC and BWT as mean +- std.",
        epilog="Example:\n  python -m marktune.evaluate results/fmnist-20261123-190000 --top 3 --seeds 3\n"
               "Then: python -m marktune.report results/fmnist-20261123-190000",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    flags.add_experiment_argument(p)
    g = p.add_argument_group("what to run")
    g.add_argument("--top", type=int, metavar="N",
                   help="best complete trials to re-run (default 3); after a search with several --objectives, "
                        "the Pareto set's N most accurate members (default: the whole set), and the verdict says "
                        "which stay non-dominated on the fresh seeds")
    g.add_argument("--seeds", type=int, metavar="N",
                   help=f"fresh initialisation seeds per class order (default: the space's, else {DEFAULT_SEEDS})")
    g.add_argument("--orders", type=int, metavar="N",
                   help=f"class orders (data seeds) per configuration (default: the space's, else {DEFAULT_ORDERS}); "
                        "the searched order first, then fresh ones; --protocol other-order searches: fresh ones only")
    g.add_argument("--margin", type=flags.points, metavar="POINTS",
                   help="non-inferiority margin, in points of test ACC: a configuration whose paired 95 %% CI "
                        "against the default lies above -POINTS is 'as accurate as the default within POINTS' "
                        "(default: the space's seed-to-seed SD, else 1 point)")
    g.add_argument("--benchmark", help="evaluate on another benchmark of the same shape (e.g. a digits search "
                                       "on fmnist); tasks, class order and image size come from it")
    g.add_argument("--ablations", default=",".join(DEFAULT_ABLATIONS), metavar="LIST",
                   help="ablations of the best configuration, comma-separated (default: all): "
                        + "; ".join(f"{k}: {v[1]}" for k, v in ABLATIONS.items()) + "; '' for none")
    g = p.add_argument_group("where the runs go")
    g.add_argument("--storage", metavar="DIR|URL",
                   help="where the runs' Tune directories go (default: next to the experiment)")
    g.add_argument("--name", help="name of the runs' Tune experiment: one folder name of letters, digits, '.', "
                                  "'_' and '-' (default: <experiment>-eval); one that holds another evaluation's "
                                  "runs is refused")
    g.add_argument("--overwrite", action="store_true",
                   help="--name's folder holds another evaluation: move it aside (renamed to NAME.replaced-<time>) "
                        "and start anew")
    flags.add_resource_flags(p, unit="run")
    flags.add_ray_flags(p)
    flags.add_data_flags(p, unit="run", default_dir="the search's")
    g = p.add_argument_group("output")
    g.add_argument("-q", "--quiet", action="store_true", help="no Ray trial table")
    return p


def plan_from_args(args: argparse.Namespace) -> EvalPlan:
    """Everything checked before Ray starts; raises ExperimentError, EvaluateError, PlanError or ConfigError."""
    if args.top is not None and args.top < 1:
        raise EvaluateError(f"--top must be >= 1 (got {args.top})")
    if args.seeds is not None and args.seeds < 1:
        raise EvaluateError(f"--seeds must be >= 1 (got {args.seeds})")
    if args.orders is not None and args.orders < 1:
        raise EvaluateError(f"--orders must be >= 1 (got {args.orders})")
    check_trial_resources(cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                          max_concurrent=args.max_concurrent, max_failures=args.max_failures)
    if args.name is not None:
        check_name(args.name)
    ablations = parse_ablations(args.ablations)
    exp = load_experiment_with_space(args.experiment)
    configs = plan_configs(exp, args.top, ablations)
    cpus = args.cpus_per_trial
    if cpus is None:
        cpus = float(exp.space.defaults["cpus_per_trial"]) if exp.space is not None else 1.0
    gpus = args.gpus_per_trial
    if gpus is None and exp.space is not None:
        gpus = exp.space.defaults["gpus_per_trial"]
    storage = args.storage or str(exp.path.parent)
    if not is_remote(storage):
        storage = str(Path(storage).expanduser().resolve())
    name = args.name or f"{exp.name}-eval"
    if args.name is None and not is_remote(storage) and (Path(storage) / name).exists():
        name = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    protocol, configs, benchmark, data_seeds = plan_pairs(exp, configs, benchmark=args.benchmark, orders=args.orders)
    defaults = exp.space.defaults if exp.space is not None else {}
    n_seeds = args.seeds if args.seeds is not None else int(defaults.get("eval_seeds") or DEFAULT_SEEDS)
    check_stage_size(len(configs) * n_seeds * max(len(data_seeds), 1),
                     what=f"{len(configs)} configurations x --seeds {n_seeds}"
                     + (f" x {len(data_seeds)} class orders" if len(data_seeds) > 1 else ""))
    seeds = fresh_seeds(exp, n_seeds)
    for seed in seeds:
        check_seed(seed, flag="evaluation seed")
    for seed in data_seeds:
        check_seed(seed, flag="evaluation data seed")
    margin, margin_source = evaluation_margin(exp, args.margin)
    return EvalPlan(experiment=exp, configs=configs, seeds=seeds, cpus_per_trial=cpus, margin=margin,
                    margin_source=margin_source,
                    gpus_per_trial=gpus, storage=storage, name=name, default_rule=exp.default_config()[1],
                    reuse_actors=args.reuse_actors,
                    runtime=runs_runtime(exp, data_dir=args.data_dir, download=args.download, cpus_per_trial=cpus),
                    data_seeds=data_seeds, protocol=protocol, benchmark=benchmark,
                    max_concurrent=args.max_concurrent, max_failures=args.max_failures,
                    ray=flags.ray_settings(args), quiet=args.quiet)


def evaluation_margin(exp: Experiment, given: float | None) -> tuple[float, str]:
    """The non-inferiority margin (a fraction) and where it comes from: ``--margin`` in points, else
    the space's measured seed-to-seed SD (one run's spread from seed to seed), else 1 point."""
    if given is not None:
        return given / 100, "--margin"
    noise = exp.space.noise if exp.space is not None else None
    if noise is not None and noise.seed_sd is not None:
        return noise.seed_sd, f"the space's seed-to-seed SD{f' ({noise.measured})' if noise.measured else ''}"
    return 0.01, "1 point: the space has no measured noise; set --margin"


def plan_pairs(exp: Experiment, configs: list[EvalConfig], *, benchmark: str | None, orders: int | None):
    """(protocol, configurations, benchmark, data seeds): the protocol's class orders and, with
    --benchmark, the configurations moved there."""
    from marktune.results.protocols import ProtocolError, evaluation_data_seeds, read_protocol, retarget

    try:
        protocol = read_protocol(exp)
    except (ProtocolError, ConfigError) as err:
        raise EvaluateError(f"{exp.path}: {err}") from None
    defaults = exp.space.defaults if exp.space is not None else {}
    orders = orders if orders is not None else int(defaults.get("eval_orders") or DEFAULT_ORDERS)
    benchmark = benchmark or exp.benchmark
    searched_config = configs[0].config
    if benchmark != exp.benchmark:
        from marktune.mark.config import BENCHMARKS

        if benchmark not in BENCHMARKS:
            raise EvaluateError(f"--benchmark {benchmark!r}: unknown; choose one of {', '.join(BENCHMARKS)}")
        moved = []
        for c in configs:
            try:
                moved.append(EvalConfig(c.label, c.kind, c.source_trial,
                                        retarget(c.config.to_dict(), benchmark=benchmark, searched=exp.searched)))
            except ProtocolError as err:
                raise EvaluateError(
                    f"--benchmark {benchmark}: {c.label} has a setting {benchmark} cannot take: {err}. Searched "
                    f"settings ({', '.join(exp.searched)}) are kept as the search chose them; evaluate on a "
                    f"benchmark of the same shape as {exp.benchmark}.") from None
        configs = moved
    try:
        data_seeds = evaluation_data_seeds(protocol=protocol, orders=orders, searched=searched_config,
                                           target=configs[0].config if benchmark != exp.benchmark else None)
    except ProtocolError as err:
        raise EvaluateError(str(err)) from None
    return protocol, configs, benchmark, data_seeds


def runs_runtime(exp: Experiment, *, data_dir: str | None, download: bool, cpus_per_trial: float) -> TrialRuntime:
    """Every run's runtime settings: the search's (data directory, download, GPU use) where this
    command gives none, this command's threads, and every task (a first-k search's trials
    stopped early; its evaluation runs the whole stream)."""
    from dataclasses import replace

    searched = TrialRuntime.from_dict(exp.runtime())
    return replace(searched, data_dir=data_dir or searched.data_dir, download=download or searched.download,
                   threads=trial_threads(cpus_per_trial), stop_after_tasks=None)


# ---------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 when runs ended, 1 when every run errored, 2 for bad input (also: a search
    or another evaluation holds the experiment)."""
    args = build_parser().parse_args(argv)
    # the lock, once taken, is released on every way out: a refusal, Ctrl-C, a bug, the end
    with contextlib.ExitStack() as held:
        try:
            if args.name is not None:
                check_name(args.name)
            # evaluation.* and best_config.yaml's comment go into the search's directory: one command
            # at a time there (a search that still runs is named, not only "no trial finished")
            lock = lock_search_directory(args.experiment, what="evaluation", command=shlex.join(
                ["python", "-m", "marktune.evaluate", *(sys.argv[1:] if argv is None else argv)]))
            if lock is not None:
                held.callback(lock.release)
            plan = plan_from_args(args)
            if not is_remote(plan.storage):  # its own folder: never another evaluation's, one command at a time
                own = Path(plan.tune_experiment)
                check_kind(own, "evaluation", flag="--name")  # a search's or a run's folder: never touched
                if args.name is not None and args.overwrite and own.is_dir() and any(own.iterdir()):
                    print(f"[marktune] --overwrite: moved the evaluation in {own} aside to {move_aside(own)}",
                          flush=True)
                check_evaluation_folder(own, name=plan.name, ignore=(LOCK_FILE, MARKER))
                claim(own, "evaluation")
                held.callback(ExperimentLock(own, what="evaluation", command=shlex.join(
                    ["python", "-m", "marktune.evaluate", *(sys.argv[1:] if argv is None else argv)])).acquire().release)
            note = plan.experiment.missing_note()
            if note:
                print(f"[marktune] {note}; evaluating the trials that finished.", flush=True)
            check_evaluation(plan)
            print(f"[marktune] non-inferiority margin: {100 * plan.margin:.2f} points ({plan.margin_source})",
                  flush=True)
            start_ray(plan.ray)
            check_cluster_resources(cpus_per_trial=plan.cpus_per_trial, gpus_per_trial=plan.gpus_per_trial,
                                    address=plan.ray.address, unit="run")
        except (ExperimentError, EvaluateError, ConfigError, PlanError, RunFolderTaken, FolderOwned) as err:
            shutdown_ray()
            print(f"error: {err}", file=sys.stderr)
            return 2
        return _run_and_report(plan, note)


def _run_and_report(plan: EvalPlan, note: str | None) -> int:
    try:
        results = run_evaluation(plan)
    finally:
        import ray
        ray.shutdown()
    records = run_records(results, plan)
    out = plan.experiment.path
    write_csv(records, out / "evaluation.csv")
    summaries = aggregate(records)
    text = format_markdown(summaries, experiment=plan.experiment.name, seeds=plan.seeds, note=note,
                           default_rule=plan.default_rule, data_seeds=plan.data_seeds)
    conclusion = conclude_and_save(plan, records)
    text = conclusions.format_markdown(conclusion) + "\n" + text
    front = front_verdicts(plan, records)
    if front:
        text = front + "\n\n" + text
    write_atomic(out / "evaluation.md", text)
    print("\n" + text)
    print(f"[marktune] {conclusion.sentence}")
    if front:
        print(f"[marktune] {front.splitlines()[0].replace('**', '')}")
    for r in records:
        if r["status"] != "COMPLETE":
            print(f"[marktune] {r['configuration']} seed {r['seed']}: {r['status']} {r['error']}")
    print(f"[marktune] evaluation.csv, evaluation.md and evaluation.json in {out} (this protocol's copy in "
          f"{out / conclusions.HISTORY_DIR}); best_config.yaml's comment carries the verdict")
    print(f"[marktune] next: python -m marktune.report {out}")
    if records and all(r["status"] == "ERROR" for r in records):
        print(f"[marktune] the evaluation failed: every run ({len(records)} of {len(records)}) errored (the "
              "errors are above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
