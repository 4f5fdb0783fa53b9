"""Run a search's confirmation stage: its finalists again at more seeds, as Ray trials.

What is re-run and who wins is decided in :mod:`marktune.results.confirmation`; this module runs
the (finalist, seed) grid through the search's trainable (``runners.mark_sequence``) with no
scheduler, in its own Tune experiment ``<storage>/<name>/confirmation``, so that Ctrl-C and
``--resume`` treat it as they treat the search: a resumed search restores it and runs only what
is unfinished.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from marktune.mark.metrics import METRIC, TIME_ATTR
from marktune.results.confirmation import (CONFIRMATION_FILE, CONFIRMATION_RUNS, ConfirmationPlan, Verdict,
                                           plan_confirmation, read_confirmation)
from marktune.results.files import write_atomic
from marktune.tune.evaluation_run import pick_from_row, run_progress
from marktune.tune.launch import prepare_tune, quiet_ray_output
from marktune.tune.plan import RUNTIME_KEY, SearchPlan
from marktune.tune.ray_internals import handle_failures
from marktune.tune.tune_setup import keep_every_checkpoint, prune_checkpoints

if TYPE_CHECKING:
    from marktune.results.summary import TrialRow


@dataclass
class ConfirmationRun:
    """What :func:`run_confirmation` leaves: the verdict, or how many runs are unfinished."""

    verdict: Verdict | None  # None while runs are unfinished (Ctrl-C)
    unfinished: int
    experiment: str
    errors: list[str]  # "trial <id> seed <s>: <reason>" of runs that failed


def confirm(plan: SearchPlan, rows: Sequence["TrialRow"]) -> ConfirmationRun | None:
    """The confirmation stage once every trial ended: its finalists and seeds are written to
    ``confirmation.json`` before the first run, so that a resumed search re-runs the same ones;
    the verdict is added to it at the end. None when it is off or no trial completed."""
    path = plan.local_dir() / CONFIRMATION_FILE
    # checked against this search's complete trials: a damaged or foreign record is refused, not re-planned
    confirmation = read_confirmation(plan.local_dir(), complete={r.trial_id: r.config for r in rows
                                                                 if r.status == "COMPLETE"})
    if confirmation is None:
        confirmation = plan_confirmation([r for r in rows if r.status == "COMPLETE"], top=plan.confirm_top,
                                         seeds=plan.confirm_seeds)
        if confirmation is None:
            return None
        write_atomic(path, confirmation.to_json())
    done = run_confirmation(plan, confirmation)
    if done.verdict is not None:
        write_atomic(path, confirmation.to_json(done.verdict))
    return done


def confirmation_experiment(plan: SearchPlan) -> str:
    return f"{plan.experiment}/{CONFIRMATION_RUNS}"


def run_confirmation(plan: SearchPlan, confirmation: ConfirmationPlan) -> ConfirmationRun:
    """Run (or, after Ctrl-C, continue) every (finalist, seed) run to its last task."""
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from runners.mark_sequence import is_permanent_error, train_mark_sequence

    experiment = confirmation_experiment(plan)
    gpus = prepare_tune(cpus_per_trial=plan.cpus_per_trial, gpus_per_trial=plan.gpus_per_trial,
                        runs=confirmation.runs, max_concurrent=plan.max_concurrent)
    trainable = tune.with_resources(train_mark_sequence, {"cpu": plan.cpus_per_trial, "gpu": gpus})
    rows = [{k: v for k, v in f.config.items() if k != "seed"} for f in confirmation.finalists]
    ids = [f.trial_id for f in confirmation.finalists]
    param_space: dict[str, Any] = {
        "confirm_row": tune.grid_search(list(range(len(rows)))),
        "seed": tune.grid_search(list(confirmation.seeds)),
        "confirm_of": tune.sample_from(lambda config: ids[config["confirm_row"]]),
        **{k: pick_from_row(k, rows, row_key="confirm_row") for k in sorted({k for r in rows for k in r})},
        RUNTIME_KEY: plan.runtime.to_dict(),
    }
    quiet_ray_output(verbose=plan.verbose)
    if tune.Tuner.can_restore(experiment):  # a resumed search: the same grid, only what is unfinished
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True,
                                   resume_errored=False, restart_errored=False, param_space=param_space)
        what = "continuing"
    else:
        tuner = tune.Tuner(
            trainable, param_space=param_space,
            run_config=tune.RunConfig(name=CONFIRMATION_RUNS, storage_path=plan.experiment,
                                      callbacks=[JsonLoggerCallback(),
                                                 _progress_callback(confirmation.runs)],
                                      failure_config=tune.FailureConfig(max_failures=plan.max_failures),
                                      checkpoint_config=keep_every_checkpoint(), verbose=1 if plan.verbose else 0),
            tune_config=tune.TuneConfig(max_concurrent_trials=plan.max_concurrent, reuse_actors=plan.reuse_actors,
                                        trial_name_creator=_trial_name, trial_dirname_creator=_trial_name))
        what = "running"
    print(f"[marktune] confirmation: {what} the top {len(ids)} trials ({', '.join(ids)}) at "
          f"{len(confirmation.seeds)} more seed{'s' if len(confirmation.seeds) != 1 else ''} "
          f"({', '.join(map(str, confirmation.seeds))}): "
          f"{confirmation.runs} runs in {experiment}", flush=True)
    handle_failures(is_permanent_error)
    results = tuner.fit()
    values: dict[tuple[str, int], tuple[float, float]] = {}
    errors = []
    for r in results:
        config = r.config or {}
        key = (str(config.get("confirm_of")), int(config.get("seed", -1)))
        if r.error is not None:
            errors.append(f"trial {key[0]} seed {key[1]}: {str(r.error).strip().splitlines()[-1]}")
            continue
        metrics = r.metrics or {}
        if int(metrics.get(TIME_ATTR, 0) or 0) >= plan.num_tasks:
            values[key] = (float(metrics.get(METRIC, math.nan)), float(metrics.get("mean_test_acc", math.nan)))
    unfinished = confirmation.runs - len(values) - len(errors)  # Ctrl-C: runs without a last task or an error
    if unfinished:
        return ConfirmationRun(verdict=None, unfinished=unfinished, experiment=experiment, errors=errors)
    prune_checkpoints(experiment)
    return ConfirmationRun(verdict=confirmation.decide(values), unfinished=0, experiment=experiment, errors=errors)


def _progress_callback(total: int):
    return run_progress(
        done=lambda n, trial, r: (f"[marktune] confirmation run {n}/{total}: trial {trial.config.get('confirm_of')} "
                                  f"seed {trial.config.get('seed')}: val ACC {r.get(METRIC, math.nan):.4f}"),
        failed=lambda n, trial: (f"[marktune] confirmation run {n}/{total} failed: trial "
                                 f"{trial.config.get('confirm_of')} seed {trial.config.get('seed')}"))


def _trial_name(trial) -> str:
    return f"confirm_{trial.trial_id}"
