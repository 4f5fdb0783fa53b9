"""Run a planned search: build the Tuner (or restore it for ``--resume``) and fit it.

The plan (:class:`marktune.tune.plan.SearchPlan`) is checked and Ray started before this runs
(:mod:`marktune.tune.launch`). What decides trials lives in :mod:`marktune.tune.searcher` and
:mod:`marktune.tune.scheduler`, the study in :mod:`marktune.tune.study`, what is printed while
trials run in :mod:`marktune.tune.progress`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from marktune.mark.metrics import METRIC
from marktune.tune.launch import prepare_tune, quiet_ray_output
from marktune.tune.plan import RUNTIME_KEY, SearchPlan
from marktune.tune.search_settings import save_settings
from marktune.tune.tune_setup import keep_every_checkpoint, last_trial_states


@dataclass
class SearchRun:
    """What ``run_search`` leaves: Tune's results, the study, and how each trial ended."""

    results: Any  # Tune's ResultGrid
    experiment: str
    study: Any  # optuna.Study, read back from its storage
    states: dict[str, dict]  # trial id -> its status and config in the last experiment state Tune saved

    def interrupted(self, trial_id: str) -> bool:
        """Whether the search stopped (Ctrl-C) while this trial ran or waited."""
        return self.states.get(trial_id, {}).get("status") in ("RUNNING", "PAUSED", "PENDING")

    def configs(self) -> dict[str, dict]:
        """Every trial's config, also of trials that never reported (their results have none)."""
        return {tid: state["config"] for tid, state in self.states.items()}


def run_search(plan: SearchPlan) -> SearchRun:
    """Build the Tuner (or restore it) and run it until every trial ended or Ctrl-C."""
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from marktune.tune.progress import SearchProgress
    from marktune.tune.scheduler import make_scheduler
    from marktune.tune.searcher import make_searcher
    from marktune.tune.study import open_study
    from marktune.tune.tensorboard_logger import MarkTensorBoardCallback
    from marktune.tune.trainable import train_mark_sequence

    gpus = prepare_tune(cpus_per_trial=plan.cpus_per_trial, gpus_per_trial=plan.gpus_per_trial,
                        runs=plan.samples, max_concurrent=plan.max_concurrent)
    resources = {"cpu": plan.cpus_per_trial, "gpu": gpus}
    trainable = tune.with_resources(train_mark_sequence, resources)

    param_space = plan.space.param_space(plan.overrides)
    param_space[RUNTIME_KEY] = plan.runtime.to_dict()  # under first-k: where each trial stops

    progress = SearchProgress(total=plan.samples, num_tasks=plan.num_tasks, status_lines=not plan.quiet)
    callbacks = [JsonLoggerCallback(), CSVLoggerCallback(),
                 MarkTensorBoardCallback(searched=list(plan.space.params), num_tasks=plan.num_tasks),
                 progress]
    run_config = tune.RunConfig(
        name=plan.name, storage_path=plan.storage, callbacks=callbacks,
        failure_config=tune.FailureConfig(max_failures=plan.max_failures),
        checkpoint_config=keep_every_checkpoint(),
        # Ray's trial tables only when asked for (see quiet_ray_output)
        verbose=1 if plan.verbose else 0,
    )
    quiet_ray_output(verbose=plan.verbose)
    experiment = plan.experiment
    if plan.resume:
        # Trials the lost driver left RUNNING or PENDING continue from their last checkpoint
        # (resume_unfinished). Trials that ended in ERROR stay as they are: in a search an error
        # is a verdict on the configuration (a NaN loss, which would only fail again), or a
        # trial that already used up --max-failures retries; Optuna has been told FAIL for it
        # and ignores anything it reports later, and restarting it from scratch
        # (restart_errored) would run a configuration twice. The searcher comes back from the
        # experiment and reopens the study in its storage (how many trials were sampled, and
        # Optuna's trial for each); ASHA refills its rungs from every trial's results
        # (marktune.tune.scheduler.ResumableASHA). The callbacks, the progress printer among them,
        # come back from the experiment too.
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True,
                                   resume_errored=False, restart_errored=False, param_space=param_space)
    else:
        scheduler = make_scheduler(num_tasks=plan.num_tasks, grace_period=plan.space.defaults["grace_period"],
                                   reduction_factor=plan.space.defaults["reduction_factor"])
        searcher = make_searcher(storage=plan.study_storage, study_name=plan.name, num_tasks=plan.num_tasks,
                                 seed=plan.seed)
        tuner = tune.Tuner(
            trainable, param_space=param_space, run_config=run_config,
            tune_config=tune.TuneConfig(metric=METRIC, mode="max", num_samples=plan.samples,
                                        search_alg=searcher,
                                        scheduler=scheduler,
                                        max_concurrent_trials=plan.max_concurrent,
                                        trial_name_creator=_trial_name, trial_dirname_creator=_trial_name))
    print(f"[marktune] experiment {experiment}: {plan.samples} trials of {plan.space.name} "
          f"({plan.num_tasks} tasks each), {resources['cpu']:g} CPU + {gpus:g} GPU per trial")
    if plan.protocol != "full":
        print(f"[marktune] protocol {plan.protocol}: "
              + (f"trials run tasks 1-{plan.tuning_tasks} of {plan.stream_tasks}; tasks "
                 f"{plan.tuning_tasks + 1}-{plan.stream_tasks} stay unseen for marktune.evaluate"
                 if plan.protocol == "first-k" else
                 f"trials run the class order of data_seed {plan.base_config.split_seed}; "
                 "marktune.evaluate will use other orders only"))
    print(f"[marktune] compare trials: tensorboard --logdir {experiment}")
    print(f"[marktune] watch the study: optuna-dashboard {plan.study_storage.describe()}", flush=True)
    if not plan.resume:
        save_settings(plan, experiment)
    results = tuner.fit()
    try:
        study = open_study(plan.study_storage, plan.name)
    except KeyError:  # interrupted before the searcher created it
        study = None
    return SearchRun(results=results, experiment=experiment, study=study,
                     states=last_trial_states(experiment))


def _trial_name(trial) -> str:
    # short names: Tune's default packs every setting into the directory name
    return f"trial_{trial.trial_id}"
