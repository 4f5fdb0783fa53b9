"""Run a planned evaluation: one Tune trial per (configuration, data seed, seed), no scheduler.

Every run is a trial of the search's trainable (``runners.mark_sequence.train_mark_sequence``)
from a grid over (configuration row, data seed, seed), and runs to the last task. The plan
(:class:`marktune.tune.plan.EvalPlan`) is checked and Ray started before this runs
(:mod:`marktune.tune.launch`).
"""
from __future__ import annotations

import math
from typing import Any, Callable

from marktune.tune.launch import prepare_tune, quiet_ray_output
from marktune.tune.ray_internals import handle_failures
from marktune.tune.plan import RUNTIME_KEY, EvalPlan
from marktune.tune.tune_setup import keep_every_checkpoint, prune_checkpoints


def run_evaluation(plan: EvalPlan):
    """One Tune trial per (configuration, seed); returns Tune's ResultGrid."""
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from runners.mark_sequence import is_permanent_error, train_mark_sequence

    runs = plan.runs
    gpus = prepare_tune(cpus_per_trial=plan.cpus_per_trial, gpus_per_trial=plan.gpus_per_trial,
                        runs=runs, max_concurrent=plan.max_concurrent)
    trainable = tune.with_resources(train_mark_sequence, {"cpu": plan.cpus_per_trial, "gpu": gpus})

    rows = [{k: v for k, v in c.config.to_dict().items() if k not in ("seed", "data_seed", "class_order")}
            for c in plan.configs]
    keys = sorted({k for r in rows for k in r})
    labels = [c.label for c in plan.configs]
    param_space: dict[str, Any] = {
        "eval_row": tune.grid_search(list(range(len(rows)))),
        "data_seed": tune.grid_search(plan.data_seeds),
        "seed": tune.grid_search(plan.seeds),
        "class_order": _class_order(plan),
        "eval_label": tune.sample_from(lambda config: labels[config["eval_row"]]),
        **{k: pick_from_row(k, rows) for k in keys},
        RUNTIME_KEY: plan.runtime.to_dict(),
    }
    run_config = tune.RunConfig(
        name=plan.name, storage_path=plan.storage,
        callbacks=[JsonLoggerCallback(), CSVLoggerCallback(), _progress_callback(runs)],
        failure_config=tune.FailureConfig(max_failures=plan.max_failures),
        checkpoint_config=keep_every_checkpoint(), verbose=0 if plan.quiet else 1)
    quiet_ray_output(verbose=not plan.quiet)  # -q: no configuration box, no trial tables
    tuner = tune.Tuner(trainable, param_space=param_space, run_config=run_config,
                       tune_config=tune.TuneConfig(max_concurrent_trials=plan.max_concurrent,
                                                   reuse_actors=plan.reuse_actors,
                                                   trial_name_creator=_trial_name,
                                                   trial_dirname_creator=_trial_name))
    print(f"[marktune] evaluating {len(plan.configs)} configurations x {len(plan.data_seeds)} class orders "
          f"(data seeds {plan.data_seeds}) x {len(plan.seeds)} seeds {plan.seeds} = {runs} runs on {plan.benchmark}, "
          f"{plan.cpus_per_trial:g} CPU + {gpus:g} GPU each; "
          f"runs in {plan.tune_experiment}", flush=True)
    # a config error or a NaN fails once; --max-failures retries what may pass on a retry (a lost worker)
    handle_failures(is_permanent_error)
    results = tuner.fit()
    prune_checkpoints(plan.tune_experiment)
    return results


def pick_from_row(key: str, rows: list[dict[str, Any]], *, row_key: str = "eval_row"):
    """Setting ``key`` of the grid row ``config[row_key]`` (the grid runs over row numbers: Tune
    cannot grid over dicts of settings)."""
    from ray import tune

    return tune.sample_from(lambda config: rows[config[row_key]][key])


def _class_order(plan: EvalPlan):
    """An explicit class order of the search holds on the searched data seed only; others draw theirs."""
    from ray import tune

    orders = [c.config.class_order for c in plan.configs]
    searched = plan.protocol.searched_data_seed
    return tune.sample_from(lambda config: orders[config["eval_row"]] if config["data_seed"] == searched else None)


def run_progress(*, done: Callable[[int, Any, dict], str], failed: Callable[[int, Any], str]):
    """A Tune callback printing one line per finished run (of an evaluation, of a search's
    confirmation stage): ``done(count, trial, last result)`` or ``failed(count, trial)``."""
    from ray.tune import Callback

    class RunProgress(Callback):
        """One line per finished run, beside (or instead of, with -q) Ray's trial table."""

        def __init__(self) -> None:
            self.done = 0

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.done += 1
            print(done(self.done, trial, trial.last_result or {}), flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            self.done += 1
            print(failed(self.done, trial), flush=True)

    return RunProgress()


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
