"""Given settings run again at given seeds: a grid of rows x seeds on Ray Tune, every run to its end.

The search's confirmation stage (:mod:`marktune.tune.runs.confirmation_run`: finalists x more seeds)
and ``evaluate`` (:mod:`marktune.tune.runs.evaluation_run`: configurations x class orders x seeds)
are the same run: one Tune trial of the search's trainable
(``runners.mark_sequence.train_mark_sequence``) per cell of a :class:`Grid`, no scheduler, a
line per finished run, Tune's checkpoints kept so Ctrl-C loses no finished task. Tune cannot
grid over dicts of settings, so the grid runs over row numbers and each setting is picked from
its row (:func:`pick_from_row`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from marktune.tune.runs.launch import prepare_tune, quiet_ray_output
from marktune.tune.plan import RUNTIME_KEY
from marktune.tune.ray_internals import handle_failures
from marktune.tune.runs.tune_setup import keep_every_checkpoint


@dataclass(frozen=True)
class Grid:
    """Rows of settings x further axes (seeds, data seeds): one run per cell."""

    rows: list[dict[str, Any]]
    row_key: str  # the trial config's key of its row number
    axes: dict[str, list[Any]]  # further grid axes, in Tune's order
    derived: dict[str, Any] = field(default_factory=dict)  # settings computed from a cell (tune.sample_from)

    @property
    def runs(self) -> int:
        return len(self.rows) * math.prod(len(v) for v in self.axes.values())

    def param_space(self, runtime: dict[str, Any]) -> dict[str, Any]:
        from ray import tune

        return {self.row_key: tune.grid_search(list(range(len(self.rows)))),
                **{k: tune.grid_search(list(v)) for k, v in self.axes.items()},
                **self.derived,
                **{k: pick_from_row(k, self.rows, row_key=self.row_key) for k in sorted({k for r in self.rows for k in r})},
                RUNTIME_KEY: runtime}


def run_grid(plan: Any, grid: Grid, *, storage: str, name: str, trial_name: Callable[[Any], str], progress: Any,
             verbose: bool, announce: Callable[[str, float], str], restore: bool = False):
    """Run every cell of ``grid`` (with ``restore``, continue an interrupted run of the same grid:
    only what is unfinished) in ``<storage>/<name>``; returns Tune's ResultGrid. ``plan`` gives the
    resources and failure settings (a SearchPlan or an EvalPlan); ``announce(what, gpus)`` the
    line printed before the runs ("running" or "continuing")."""
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from runners.mark_sequence import is_permanent_error, train_mark_sequence

    gpus = prepare_tune(cpus_per_trial=plan.cpus_per_trial, gpus_per_trial=plan.gpus_per_trial,
                        runs=grid.runs, max_concurrent=plan.max_concurrent)
    trainable = tune.with_resources(train_mark_sequence, {"cpu": plan.cpus_per_trial, "gpu": gpus})
    param_space = grid.param_space(plan.runtime.to_dict())
    quiet_ray_output(verbose=verbose)  # quiet: no configuration box, no trial tables
    if restore and tune.Tuner.can_restore(f"{storage}/{name}"):
        tuner = tune.Tuner.restore(f"{storage}/{name}", trainable=trainable, resume_unfinished=True,
                                   resume_errored=False, restart_errored=False, param_space=param_space)
        what = "continuing"
    else:
        tuner = tune.Tuner(
            trainable, param_space=param_space,
            run_config=tune.RunConfig(name=name, storage_path=storage, callbacks=[JsonLoggerCallback(), progress],
                                      failure_config=tune.FailureConfig(max_failures=plan.max_failures),
                                      checkpoint_config=keep_every_checkpoint(), verbose=1 if verbose else 0),
            tune_config=tune.TuneConfig(max_concurrent_trials=plan.max_concurrent, reuse_actors=plan.reuse_actors,
                                        trial_name_creator=trial_name, trial_dirname_creator=trial_name))
        what = "running"
    print(announce(what, gpus), flush=True)
    # a config error or a NaN fails once; --max-failures retries what may pass on a retry (a lost worker)
    handle_failures(is_permanent_error)
    return tuner.fit()


def pick_from_row(key: str, rows: list[dict[str, Any]], *, row_key: str):
    """Setting ``key`` of the grid row ``config[row_key]``."""
    from ray import tune

    return tune.sample_from(lambda config: rows[config[row_key]][key])


def run_progress(*, done: Callable[[int, Any, dict], str], failed: Callable[[int, Any], str]):
    """A Tune callback printing one line per finished run: ``done(count, trial, last result)`` or
    ``failed(count, trial)``."""
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
