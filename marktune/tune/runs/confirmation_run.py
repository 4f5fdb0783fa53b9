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
from typing import TYPE_CHECKING, Sequence

from marktune.mark.metrics import METRIC, TIME_ATTR
from marktune.results.confirmation import (CONFIRMATION_FILE, CONFIRMATION_RUNS, ConfirmationPlan, Verdict,
                                           plan_confirmation, read_confirmation)
from marktune.results.files import write_atomic
from marktune.tune.runs.grid_run import Grid, run_grid, run_progress
from marktune.tune.plan import SearchPlan
from marktune.tune.runs.tune_setup import prune_checkpoints

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

    experiment = confirmation_experiment(plan)
    ids = [f.trial_id for f in confirmation.finalists]
    grid = Grid(rows=[{k: v for k, v in f.config.items() if k != "seed"} for f in confirmation.finalists],
                row_key="confirm_row", axes={"seed": list(confirmation.seeds)},
                derived={"confirm_of": tune.sample_from(lambda config: ids[config["confirm_row"]])})
    seeds = confirmation.seeds
    results = run_grid(plan, grid, storage=plan.experiment, name=CONFIRMATION_RUNS, trial_name=_trial_name,
                       progress=_progress_callback(confirmation.runs), verbose=plan.verbose, restore=True,
                       announce=lambda what, _: (
                           f"[marktune] confirmation: {what} the top {len(ids)} trials ({', '.join(ids)}) at "
                           f"{len(seeds)} more seed{'s' if len(seeds) != 1 else ''} ({', '.join(map(str, seeds))}): "
                           f"{confirmation.runs} runs in {experiment}"))
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
