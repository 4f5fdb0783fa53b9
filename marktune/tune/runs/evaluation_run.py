"""Run a planned evaluation: one Tune trial per (configuration, data seed, seed), no scheduler.

Every run is a trial of the search's trainable (``runners.mark_sequence.train_mark_sequence``)
from a grid over (configuration row, data seed, seed) (:mod:`marktune.tune.runs.grid_run`), and runs to the last task. The plan
(:class:`marktune.tune.plan.EvalPlan`) is checked and Ray started before this runs
(:mod:`marktune.tune.runs.launch`). Its runs become the rows of ``evaluation.csv``
(:func:`run_records`), and the rows the verdict (:func:`conclude_and_save`, :mod:`marktune.results.conclusions`).
"""
from __future__ import annotations

import json
import math
from typing import Any

from marktune.results import conclusions
from marktune.results.cost import tasks_at_chance
from marktune.results.evaluation_table import as_float
from marktune.results.files import is_remote
from marktune.results.objectives import front_on_fresh_seeds
from marktune.results.pareto import parameter_counts
from marktune.results.statistics import heldout_accuracy, heldout_backward_transfer

from marktune.tune.runs.grid_run import Grid, run_grid, run_progress
from marktune.tune.plan import RUNTIME_KEY, EvalPlan
from marktune.tune.runs.tune_setup import prune_checkpoints


def run_evaluation(plan: EvalPlan):
    """One Tune trial per (configuration, data seed, seed); returns Tune's ResultGrid."""
    from ray import tune

    rows = [{k: v for k, v in c.config.to_dict().items() if k not in ("seed", "data_seed", "class_order")}
            for c in plan.configs]
    labels = [c.label for c in plan.configs]
    grid = Grid(rows=rows, row_key="eval_row", axes={"data_seed": plan.data_seeds, "seed": plan.seeds},
                derived={"class_order": _class_order(plan),
                         "eval_label": tune.sample_from(lambda config: labels[config["eval_row"]])})
    results = run_grid(plan, grid, storage=plan.storage, name=plan.name, trial_name=_trial_name,
                       progress=_progress_callback(plan.runs), verbose=not plan.quiet, announce=lambda _, gpus: (
                           f"[marktune] evaluating {len(plan.configs)} configurations x {len(plan.data_seeds)} class "
                           f"orders (data seeds {plan.data_seeds}) x {len(plan.seeds)} seeds {plan.seeds} = "
                           f"{plan.runs} runs on {plan.benchmark}, {plan.cpus_per_trial:g} CPU + {gpus:g} GPU each; "
                           f"runs in {plan.tune_experiment}"))
    prune_checkpoints(plan.tune_experiment)
    return results


def _class_order(plan: EvalPlan):
    """An explicit class order of the search holds on the searched data seed only; others draw theirs."""
    from ray import tune

    orders = [c.config.class_order for c in plan.configs]
    searched = plan.protocol.searched_data_seed
    return tune.sample_from(lambda config: orders[config["eval_row"]] if config["data_seed"] == searched else None)


def _progress_callback(total: int):
    return run_progress(
        done=lambda n, trial, r: (
            f"[marktune] run {n}/{total} done: {trial.config.get('eval_label')} data seed "
            f"{trial.config.get('data_seed')} seed {trial.config.get('seed')}: test ACC "
            f"{r.get('mean_test_acc', math.nan):.4f}, BWT {r.get('bwt_test', math.nan):+.4f}"),
        failed=lambda n, trial: (f"[marktune] run {n}/{total} failed: {trial.config.get('eval_label')} seed "
                                 f"{trial.config.get('seed')}"))


def _trial_name(trial) -> str:
    return f"run_{trial.trial_id}"


# ---------------------------------------------------------------- the runs as rows, and what they conclude
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
            # marktune.results.cost: a task at chance after the last one (a collapse); the run's training FLOPs
            "tasks_at_chance": tasks_at_chance(matrix[-1], ec.config.classes_per_task) if matrix else math.nan,
            "train_flops": as_float(metrics.get("train_flops")) if status == "COMPLETE" else math.nan,
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

    rows = task_results(str(result.path)) if not is_remote(str(result.path)) else []
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
        default_is_space=exp.space is not None, margin=plan.margin, margin_source=plan.margin_source)


def conclude_and_save(plan: EvalPlan, records: list[dict[str, Any]]) -> "conclusions.Conclusion":
    """The paired table and verdict; evaluation.json, evaluations/<protocol>.*, best_config.yaml's comment."""
    out = plan.experiment.path
    record = evaluation_record(plan)
    conclusion = conclusions.conclude(records, record)
    conclusions.save(out, record, out / "evaluation.csv")
    conclusions.rewrite_best_config_comment(out / "best_config.yaml", conclusion)
    return conclusion


def front_verdicts(plan: EvalPlan, records: list[dict[str, Any]]) -> str:
    """After a multi-objective search: which Pareto-set members stay non-dominated on the fresh
    seeds (test ACC against parameters, paired CI), as a markdown paragraph; "" otherwise."""
    if len(plan.experiment.objectives()) < 2:
        return ""
    size = {r["configuration"]: r["kb_params"] + r["tasks_total"] * r["task_params"] for r in records}
    members = [(c.label, size[c.label]) for c in plan.configs if c.kind == "best" and c.label in size]
    rivals = [(c.label, size[c.label]) for c in plan.configs if c.kind == "default" and c.label in size]
    verdicts = front_on_fresh_seeds(records, members, rivals=rivals)
    stay = [v for v in verdicts if v.stays]
    lines = [f"**The Pareto set on fresh seeds** (test ACC against parameters; a member is beaten when another "
             f"member or the space's default, with no more parameters, is better by a paired 95 % CI above 0): "
             f"{len(stay)} of {len(verdicts)} stay non-dominated.", ""]
    for v in verdicts:
        lines.append(f"- {v.label}: {v.params:,.0f} parameters, test ACC {100 * v.mean:.2f} %: "
                     + ("stays" if v.stays else f"beaten by {', '.join(v.beaten_by)}"))
    return "\n".join(lines)
