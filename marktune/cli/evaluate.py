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

Every run is one Ray Tune trial of ``marktune.tune.trainable.train_mark_sequence`` (the search's
trainable), from a grid over (configuration, data seed, seed), with no scheduler: every run goes
to the last task. Output, in the experiment directory: ``evaluation.csv`` (one row per run),
``evaluation.md`` (the verdict sentence, the paired table, one row per configuration),
``evaluation.json`` and ``evaluations/<protocol>.*``. The runs' own Tune directories go to
``<storage>/<experiment>-eval``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any, Sequence

from marktune.results import conclusions
from marktune.mark.config import ConfigError, MarkConfig
from marktune.results.evaluation_table import aggregate, as_float, format_markdown, write_csv
from marktune.results.experiment import Experiment, ExperimentError
from marktune.results.pareto import parameter_counts
from marktune.results.protocols import SearchProtocol
from marktune.results.statistics import heldout_accuracy, heldout_backward_transfer
from marktune.tune.spaces import load_experiment_with_space

FIRST_SEED = 1000  # evaluation seeds are the first S integers >= this that no search trial used
DEFAULT_SEEDS, DEFAULT_ORDERS = 3, 1  # a space may set its own (defaults.eval_seeds, defaults.eval_orders)


class EvaluateError(ValueError):
    """A flag or experiment problem found before Ray starts."""


# ---------------------------------------------------------------- what to run
@dataclass
class EvalConfig:
    label: str
    kind: str  # best, default, ablation
    source_trial: str
    config: MarkConfig


# The ablations of the best configuration: the settings that make each, and what it removes,
# in words (the table's label). MARK.md, "Ablations".
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


def plan_configs(exp: Experiment, top: int, ablations: Sequence[str] = DEFAULT_ABLATIONS) -> list[EvalConfig]:
    best = exp.best_complete(top)
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
    used = {int(t.config.get("seed", 0)) for t in exp.trials if t.config}
    seeds: list[int] = []
    for s in count(FIRST_SEED):
        if len(seeds) == n:
            return seeds
        if s not in used:
            seeds.append(s)
    return seeds


# ---------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m marktune.evaluate",
        description="Re-run a search's best configurations, its space's default and ablations of the "
                    "best one with fresh seeds; report test ACC and BWT as mean +- std.",
        epilog="Example:\n  python -m marktune.evaluate results/fmnist-20261123-190000 --top 3 --seeds 3\n"
               "Then: python -m marktune.report results/fmnist-20261123-190000",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", help="the search's experiment directory (<storage>/<name>)")
    p.add_argument("--top", type=int, default=3, help="best complete trials to re-run (default 3)")
    p.add_argument("--seeds", type=int,
                   help=f"fresh initialisation seeds per class order (default: the space's, else {DEFAULT_SEEDS})")
    p.add_argument("--orders", type=int,
                   help=f"class orders (data seeds) per configuration (default: the space's, else {DEFAULT_ORDERS}); "
                        "the searched order first, then fresh ones; --protocol other-order searches: fresh ones only")
    p.add_argument("--benchmark", help="evaluate on another benchmark of the same shape (e.g. a digits search "
                                       "on fmnist); tasks, class order and image size come from it")
    p.add_argument("--cpus-per-trial", type=float, help="CPUs per run (default: the space's, else 1)")
    p.add_argument("--gpus-per-trial", type=float,
                   help="GPUs per run (default: 0.25 where the cluster has GPUs, else 0)")
    p.add_argument("--max-concurrent", type=int, help="runs at once (default: as resources allow)")
    p.add_argument("--address", help="Ray cluster: 'auto', HOST:PORT or ray://HOST:10001 (default: local Ray)")
    p.add_argument("--storage", help="where the runs' Tune directories go (default: next to the experiment)")
    p.add_argument("--name", help="name of the runs' Tune experiment (default: <experiment>-eval)")
    p.add_argument("--max-failures", type=int, default=2, help="retries of a run whose worker died (default 2)")
    p.add_argument("--data-dir", help="data directory on every node (default: the search's)")
    p.add_argument("--download", action="store_true", help="let runs download their data set")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    p.add_argument("--num-gpus", type=float, help="GPUs declared to the local Ray (default: detected)")
    p.add_argument("--ablations", default=",".join(DEFAULT_ABLATIONS), metavar="LIST",
                   help="ablations of the best configuration, comma-separated (default: all): "
                        + "; ".join(f"{k}: {v[1]}" for k, v in ABLATIONS.items()) + "; '' for none")
    p.add_argument("-q", "--quiet", action="store_true", help="no Ray trial table")
    return p


@dataclass
class EvalPlan:
    experiment: Experiment
    configs: list[EvalConfig]
    seeds: list[int]
    cpus_per_trial: float
    gpus_per_trial: float | None
    storage: str
    name: str
    default_rule: str
    # paired design (marktune.results.protocols, marktune.results.conclusions): every configuration runs every
    # (data_seed, seed) pair
    data_seeds: list[int] = field(default_factory=list)
    protocol: SearchProtocol = field(default_factory=SearchProtocol)
    benchmark: str = ""  # evaluated on: the search's, or --benchmark


def plan_from_args(args: argparse.Namespace) -> EvalPlan:
    """Everything checked before Ray starts; raises ExperimentError, EvaluateError or ConfigError."""
    if args.top < 1:
        raise EvaluateError(f"--top must be >= 1 (got {args.top})")
    if args.seeds is not None and args.seeds < 1:
        raise EvaluateError(f"--seeds must be >= 1 (got {args.seeds})")
    if args.orders is not None and args.orders < 1:
        raise EvaluateError(f"--orders must be >= 1 (got {args.orders})")
    if args.cpus_per_trial is not None and (args.cpus_per_trial < 0 or not math.isfinite(args.cpus_per_trial)):
        raise EvaluateError(f"--cpus-per-trial must be >= 0 (got {args.cpus_per_trial})")
    gpus = args.gpus_per_trial
    if gpus is not None and (gpus < 0 or (gpus > 1 and not float(gpus).is_integer())):
        raise EvaluateError(f"--gpus-per-trial must be a fraction in [0, 1] or a whole number (got {gpus})")
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise EvaluateError(f"--max-concurrent must be >= 1 (got {args.max_concurrent})")
    ablations = parse_ablations(args.ablations)
    exp = load_experiment_with_space(args.experiment)
    configs = plan_configs(exp, args.top, ablations)
    cpus = args.cpus_per_trial
    if cpus is None:
        cpus = float(exp.space.defaults["cpus_per_trial"]) if exp.space is not None else 1.0
    if gpus is None and exp.space is not None:
        gpus = exp.space.defaults["gpus_per_trial"]
    storage = args.storage or str(exp.path.parent)
    if "://" not in storage:
        storage = str(Path(storage).expanduser().resolve())
    name = args.name or f"{exp.name}-eval"
    if args.name is None and "://" not in storage and (Path(storage) / name).exists():
        name = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    plan = EvalPlan(experiment=exp, configs=configs, seeds=[], cpus_per_trial=cpus,
                    gpus_per_trial=gpus, storage=storage, name=name, default_rule=exp.default_config()[1])
    return plan_pairs(plan, args)


def plan_pairs(plan: EvalPlan, args: argparse.Namespace) -> EvalPlan:
    """The protocol's (data_seed, seed) grid and, with --benchmark, the configurations moved there."""
    from marktune.results.protocols import ProtocolError, evaluation_data_seeds, read_protocol, retarget

    exp = plan.experiment
    try:
        protocol = read_protocol(exp)
    except (ProtocolError, ConfigError) as err:
        raise EvaluateError(f"{exp.path}: {err}") from None
    defaults = exp.space.defaults if exp.space is not None else {}
    seeds = args.seeds if args.seeds is not None else int(defaults.get("eval_seeds") or DEFAULT_SEEDS)
    orders = args.orders if args.orders is not None else int(defaults.get("eval_orders") or DEFAULT_ORDERS)
    benchmark = args.benchmark or exp.benchmark
    searched_config = plan.configs[0].config
    if benchmark != exp.benchmark:
        from marktune.mark.config import BENCHMARKS

        if benchmark not in BENCHMARKS:
            raise EvaluateError(f"--benchmark {benchmark!r}: unknown; choose one of {', '.join(BENCHMARKS)}")
        moved = []
        for c in plan.configs:
            try:
                moved.append(EvalConfig(c.label, c.kind, c.source_trial,
                                        retarget(c.config.to_dict(), benchmark=benchmark, searched=exp.searched)))
            except ProtocolError as err:
                raise EvaluateError(
                    f"--benchmark {benchmark}: {c.label} has a setting {benchmark} cannot take: {err}. Searched "
                    f"settings ({', '.join(exp.searched)}) are kept as the search chose them; evaluate on a "
                    f"benchmark of the same shape as {exp.benchmark}.") from None
        plan.configs = moved
    try:
        data_seeds = evaluation_data_seeds(protocol=protocol, orders=orders, searched=searched_config,
                                           target=plan.configs[0].config if benchmark != exp.benchmark else None)
    except ProtocolError as err:
        raise EvaluateError(str(err)) from None
    plan.seeds, plan.data_seeds, plan.protocol, plan.benchmark = fresh_seeds(exp, seeds), data_seeds, protocol, benchmark
    return plan


# ---------------------------------------------------------------- running
def _pick(key: str, rows: list[dict[str, Any]]):
    from ray import tune

    return tune.sample_from(lambda config: rows[config["eval_row"]][key])


def data_runtime(plan: EvalPlan, args: argparse.Namespace) -> dict[str, Any]:
    """The search's runtime settings (data directory, download), where this command gives none."""
    runtime = dict(plan.experiment.runtime())
    if args.data_dir:
        runtime["data_dir"] = args.data_dir
    if args.download:
        runtime["download"] = True
    return runtime


def trial_runtime(plan: EvalPlan, args: argparse.Namespace) -> dict[str, Any]:
    """The runtime settings every evaluation run gets: the search's data settings, threads, every task."""
    from marktune.results.protocols import STOP_AFTER_KEY

    runtime = data_runtime(plan, args)
    runtime.pop(STOP_AFTER_KEY, None)  # a first-k search's trials stop early; its evaluation runs every task
    runtime["threads"] = max(1, int(plan.cpus_per_trial)) if plan.cpus_per_trial else 1
    return runtime


def run_evaluation(plan: EvalPlan, args: argparse.Namespace):
    """One Tune trial per (configuration, seed); returns Tune's ResultGrid."""
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from marktune.tune.tune_setup import keep_every_checkpoint, prepare_tune, prune_checkpoints, quiet_ray_output
    from marktune.tune.trainable import RUNTIME_KEY, train_mark_sequence

    runs = len(plan.configs) * len(plan.seeds) * len(plan.data_seeds)
    gpus = prepare_tune(cpus_per_trial=plan.cpus_per_trial, gpus_per_trial=plan.gpus_per_trial,
                        runs=runs, max_concurrent=args.max_concurrent)
    trainable = tune.with_resources(train_mark_sequence, {"cpu": plan.cpus_per_trial, "gpu": gpus})

    rows = [{k: v for k, v in c.config.to_dict().items() if k not in ("seed", "data_seed", "class_order")}
            for c in plan.configs]
    keys = sorted({k for r in rows for k in r})
    labels = [c.label for c in plan.configs]
    runtime = trial_runtime(plan, args)
    param_space: dict[str, Any] = {
        "eval_row": tune.grid_search(list(range(len(rows)))),
        "data_seed": tune.grid_search(plan.data_seeds),
        "seed": tune.grid_search(plan.seeds),
        "class_order": _class_order(plan),
        "eval_label": tune.sample_from(lambda config: labels[config["eval_row"]]),
        **{k: _pick(k, rows) for k in keys},
        RUNTIME_KEY: runtime,
    }
    run_config = tune.RunConfig(
        name=plan.name, storage_path=plan.storage, callbacks=[JsonLoggerCallback(), CSVLoggerCallback(), _progress_callback(runs)],
        failure_config=tune.FailureConfig(max_failures=args.max_failures),
        checkpoint_config=keep_every_checkpoint(), verbose=0 if args.quiet else 1)
    quiet_ray_output(verbose=not args.quiet)  # -q: no configuration box, no trial tables
    tuner = tune.Tuner(trainable, param_space=param_space, run_config=run_config,
                       tune_config=tune.TuneConfig(max_concurrent_trials=args.max_concurrent,
                                                   trial_name_creator=_trial_name,
                                                   trial_dirname_creator=_trial_name))
    print(f"[marktune] evaluating {len(plan.configs)} configurations x {len(plan.data_seeds)} class orders "
          f"(data seeds {plan.data_seeds}) x {len(plan.seeds)} seeds {plan.seeds} = {runs} runs on {plan.benchmark}, "
          f"{plan.cpus_per_trial:g} CPU + {gpus:g} GPU each; "
          f"runs in {plan.storage.rstrip('/')}/{plan.name}", flush=True)
    results = tuner.fit()
    prune_checkpoints(f"{plan.storage.rstrip('/')}/{plan.name}")
    return results


def _class_order(plan: EvalPlan):
    """An explicit class order of the search holds on the searched data seed only; others draw theirs."""
    from ray import tune

    orders = [c.config.class_order for c in plan.configs]
    searched = plan.protocol.searched_data_seed
    return tune.sample_from(lambda config: orders[config["eval_row"]] if config["data_seed"] == searched else None)


def _progress_callback(total: int):
    from ray.tune import Callback

    class RunProgress(Callback):
        """One line per finished run, beside (or instead of, with -q) Ray's trial table."""

        def __init__(self) -> None:
            self.done = 0

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.done += 1
            r = trial.last_result or {}
            print(f"[marktune] run {self.done}/{total} done: {trial.config.get('eval_label')} data seed "
                  f"{trial.config.get('data_seed')} seed {trial.config.get('seed')}: test ACC {r.get('mean_test_acc', math.nan):.4f}, "
                  f"BWT {r.get('bwt_test', math.nan):+.4f}", flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            self.done += 1
            print(f"[marktune] run {self.done}/{total} failed: {trial.config.get('eval_label')} seed "
                  f"{trial.config.get('seed')}", flush=True)

    return RunProgress()


def _trial_name(trial) -> str:
    return f"run_{trial.trial_id}"


def run_records(results, plan: EvalPlan) -> list[dict[str, Any]]:
    """One dict per run (the rows of evaluation.csv), in configuration then seed order."""
    from marktune.results.summary import first_line

    counts = {}
    for c in plan.configs:
        if c.label not in counts:
            counts[c.label] = parameter_counts(c.config)
    searched = plan.experiment.searched
    records = []
    for result in results:
        config = result.config or {}
        row = int(config.get("eval_row", -1))
        if not 0 <= row < len(plan.configs):
            continue
        ec = plan.configs[row]
        metrics = result.metrics or {}
        tasks_done = int(metrics.get("tasks_done", 0) or 0)
        num_tasks = ec.config.tasks
        status = "ERROR" if result.error is not None else ("COMPLETE" if tasks_done >= num_tasks else "INCOMPLETE")
        wall = math.nan
        df = result.metrics_dataframe
        if df is not None and len(df) and "task_started_at" in df:
            wall = float(df["task_finished_at"].max() - df["task_started_at"].min())
        kb, task = counts[ec.label]
        settings = {k: getattr(ec.config, k) for k in [*searched, "meta_update", "use_masks"]}
        matrix = test_matrix(result) if status == "COMPLETE" else []
        first = plan.protocol.tuning_tasks if plan.protocol.name == "first-k" else 0
        records.append({
            "configuration": ec.label, "kind": ec.kind, "source_trial": ec.source_trial,
            "benchmark": ec.config.benchmark, "data_seed": int(config.get("data_seed", -1)),
            "seed": int(config.get("seed", -1)), "status": status, "tasks_done": tasks_done,
            "tasks_total": num_tasks,
            "heldout_test_acc": heldout_accuracy(matrix, first) if first else math.nan,
            "heldout_bwt": heldout_backward_transfer(matrix, first) if first else math.nan,
            "test_matrix": json.dumps(matrix),
            "test_acc": as_float(metrics.get("mean_test_acc")) if status == "COMPLETE" else math.nan,
            "bwt": as_float(metrics.get("bwt_test")) if status == "COMPLETE" else math.nan,
            "val_acc": as_float(metrics.get("mean_val_acc")) if status == "COMPLETE" else math.nan,
            "wall_seconds": wall, "kb_params": kb, "task_params": task, "device": metrics.get("device", ""),
            "settings": json.dumps(settings, sort_keys=True),
            "error": first_line(str(result.error)) if result.error is not None else "",
            "_row": row,
        })
    records.sort(key=lambda r: (r["_row"], r["data_seed"], r["seed"]))
    for r in records:
        del r["_row"]
    return records


def test_matrix(result) -> list[list[float]]:
    """The run's test accuracy matrix (row t: after task t), from its result.json (one line per task)."""
    from marktune.results.files import task_results

    rows = task_results(str(result.path)) if "://" not in str(result.path) else []
    if not rows and result.metrics_dataframe is not None and "test_row" in result.metrics_dataframe:
        cells = result.metrics_dataframe["test_row"].tolist()
        return [json.loads(c) if isinstance(c, str) else list(c) for c in cells]
    return [list(r.get("test_row") or []) for r in rows]


# ---------------------------------------------------------------- conclusions
def evaluation_record(plan: EvalPlan) -> "conclusions.EvaluationRecord":
    exp = plan.experiment
    return conclusions.EvaluationRecord(
        protocol=plan.protocol, seeds=list(plan.seeds), data_seeds=list(plan.data_seeds),
        benchmark=plan.benchmark or exp.benchmark, searched_benchmark=exp.benchmark,
        search_val={t.trial_id: t.val_acc for t in exp.best_complete(len(exp.trials))},
        default_is_space=exp.space is not None)


def conclude_and_save(plan: EvalPlan, records: list[dict[str, Any]]) -> "conclusions.Conclusion":
    """The paired table and verdict; evaluation.json, evaluations/<protocol>.*, best_config.yaml's comment."""
    out = plan.experiment.path
    record = evaluation_record(plan)
    conclusion = conclusions.conclude(records, record)
    conclusions.save(out, record, out / "evaluation.csv")
    conclusions.rewrite_best_config_comment(out / "best_config.yaml", conclusion)
    return conclusion


# ---------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    from marktune.cli.search import (SearchError, check_local_data, check_local_gpus, check_local_precision,
                                 check_storage, start_ray)

    args = build_parser().parse_args(argv)
    try:
        plan = plan_from_args(args)
        note = plan.experiment.missing_note()
        if note:
            print(f"[marktune] {note}; evaluating the trials that finished.", flush=True)
        runtime = data_runtime(plan, args)
        for benchmark in sorted({c.config.benchmark for c in plan.configs}):
            check_local_data(benchmark, address=args.address, data_dir=runtime.get("data_dir"),
                             download=bool(runtime.get("download")))
        check_local_precision([c.config.precision for c in plan.configs], address=args.address)
        check_storage(plan.storage)
        check_local_gpus(plan.gpus_per_trial, address=args.address, num_gpus=args.num_gpus,
                         cpu_fallback=bool(runtime.get("cpu_fallback")))
        start_ray(args, own_local=True)  # a Ray another program started is not joined
    except (ExperimentError, EvaluateError, ConfigError, SearchError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        results = run_evaluation(plan, args)
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
    (out / "evaluation.md").write_text(text)
    print("\n" + text)
    print(f"[marktune] {conclusion.sentence}")
    for r in records:
        if r["status"] != "COMPLETE":
            print(f"[marktune] {r['configuration']} seed {r['seed']}: {r['status']} {r['error']}")
    print(f"[marktune] evaluation.csv, evaluation.md and evaluation.json in {out} (this protocol's copy in "
          f"{out / conclusions.HISTORY_DIR}); best_config.yaml's comment carries the verdict")
    print(f"[marktune] next: python -m marktune.report {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
