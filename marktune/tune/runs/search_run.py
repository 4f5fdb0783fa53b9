"""Run a planned search: build the Tuner (or restore it for ``--resume``) and fit it.

The plan (:class:`marktune.tune.plan.SearchPlan`) is checked and Ray started before this runs
(:mod:`marktune.tune.runs.launch`). What decides trials lives in :mod:`marktune.tune.strategy.searcher` and
:mod:`marktune.tune.strategy.scheduler`, the study in :mod:`marktune.tune.folders.study`, what is printed while
trials run in :mod:`marktune.tune.display.progress`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from marktune.mark.metrics import METRIC
from marktune.results.files import is_remote
from marktune.tune.folders.experiment import check_resumable, disk_full_of, missing_results_note
from marktune.tune.runs.launch import prepare_tune, quiet_ray_output
from marktune.tune.ray_internals import handle_failures
from marktune.tune.plan import RUNTIME_KEY, SearchPlan
from marktune.tune.folders.search_settings import save_settings
from marktune.tune.runs.tune_setup import keep_every_checkpoint, last_trial_states


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

    from runners.mark_sequence import is_permanent_error, train_mark_sequence

    gpus = prepare_tune(cpus_per_trial=plan.cpus_per_trial, gpus_per_trial=plan.gpus_per_trial,
                        runs=plan.samples, max_concurrent=plan.max_concurrent)
    resources = {"cpu": plan.cpus_per_trial, "gpu": gpus}
    trainable = tune.with_resources(train_mark_sequence, resources)
    param_space = plan.space.param_space(plan.overrides)
    param_space[RUNTIME_KEY] = plan.runtime.to_dict()  # under first-k: where each trial stops
    tuner = restored_tuner(plan, trainable, param_space) if plan.resume else new_tuner(plan, trainable, param_space)
    print_plan(plan, resources)
    # a config error or a NaN fails once; --max-failures retries what may pass on a retry (a lost worker)
    handle_failures(is_permanent_error)
    return fit(plan, tuner)


def new_tuner(plan: SearchPlan, trainable, param_space: dict[str, Any]):
    """The Tuner of a new search: the strategy's searcher and scheduler, marktune's callbacks."""
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from marktune.tune.folders.state_keeper import StateKeeper
    from marktune.tune.display.progress import SearchProgress
    from marktune.tune.strategy.searcher import make_searcher
    from marktune.tune.display.tensorboard_logger import MarkTensorBoardCallback

    progress = SearchProgress(total=plan.samples, num_tasks=plan.num_tasks, status_lines=not plan.quiet)
    # no CSVLoggerCallback: its progress.csv repeated result.json in every trial (curves.csv has them all)
    callbacks = [JsonLoggerCallback(),
                 MarkTensorBoardCallback(searched=list(plan.space.params), num_tasks=plan.num_tasks),
                 progress, StateKeeper()]
    run_config = tune.RunConfig(
        name=plan.name, storage_path=plan.storage, callbacks=callbacks,
        failure_config=tune.FailureConfig(max_failures=plan.max_failures),
        checkpoint_config=keep_every_checkpoint(),
        # Ray's trial tables only when asked for (see quiet_ray_output)
        verbose=1 if plan.verbose else 0,
    )
    quiet_ray_output(verbose=plan.verbose)
    # the registry's (marktune.tune.strategy.strategies); --scheduler none: Tune's FIFO scheduler
    scheduler = plan.search_strategy.make_scheduler(num_tasks=plan.num_tasks, objectives=plan.objectives)
    searcher = make_searcher(storage=plan.study_storage, study_name=plan.name, num_tasks=plan.num_tasks,
                             seed=plan.seed, kind=plan.searcher, n_startup_trials=plan.n_startup_trials,
                             constant_liar=plan.constant_liar, objectives=plan.objectives,
                             population=plan.search_strategy.population_for(plan.samples))
    # several objectives: the searcher and the scheduler hold their own; Tune's one metric stays unset
    metric, mode = (None, None) if plan.multiobjective else (METRIC, "max")
    return tune.Tuner(
        trainable, param_space=param_space, run_config=run_config,
        tune_config=tune.TuneConfig(metric=metric, mode=mode, num_samples=plan.samples, search_alg=searcher,
                                    scheduler=scheduler, max_concurrent_trials=plan.max_concurrent,
                                    reuse_actors=plan.reuse_actors,
                                    trial_name_creator=_trial_name, trial_dirname_creator=_trial_name))


def restored_tuner(plan: SearchPlan, trainable, param_space: dict[str, Any]):
    """The Tuner of ``--resume``, restored from the experiment.

    Trials the lost driver left RUNNING or PENDING continue from their last checkpoint
    (resume_unfinished). Trials that ended in ERROR stay as they are: in a search an error is a
    verdict on the configuration (a NaN loss, which would only fail again), or a trial that
    already used up --max-failures retries; Optuna has been told FAIL for it and ignores anything
    it reports later, and restarting it from scratch (restart_errored) would run a configuration
    twice. The searcher comes back from the experiment and reopens the study in its storage (how
    many trials were sampled, and Optuna's trial for each), with its sampler (TPE or random);
    ASHA refills its rungs from every trial's results (marktune.tune.strategy.scheduler.ResumableASHA;
    without ASHA there are none). The callbacks, the progress printer among them, come back from
    the experiment too.
    """
    from ray import tune

    from marktune.tune.strategy.searcher import resuming

    quiet_ray_output(verbose=plan.verbose)
    # Tune unpickles the experiment's state: only from a directory marktune's settings file
    # names as this search (the pre-flight checked it too; callers may skip the pre-flight)
    check_resumable(plan.storage, plan.name)
    note = missing_results_note(plan.local_dir()) if not is_remote(plan.storage) else ""
    if note:
        print(f"[marktune] {note}", flush=True)
    # the study is the resumed experiment's (its journal, or the URL), whatever the checkpoint says
    with resuming(plan.study_storage):
        return tune.Tuner.restore(plan.experiment, trainable=trainable, resume_unfinished=True,
                                  resume_errored=False, restart_errored=False, param_space=param_space)


def print_plan(plan: SearchPlan, resources: dict[str, float]) -> None:
    """The search's first lines: what runs, the strategy and why, where to watch it."""
    print(f"[marktune] experiment {plan.experiment}: {plan.samples} trials of {plan.space.name} "
          f"({plan.num_tasks} tasks each), {resources['cpu']:g} CPU + {resources['gpu']:g} GPU per trial")
    print(f"[marktune] strategy: {plan.strategy()}")
    print(f"[marktune] why: {plan.why()}")
    if plan.protocol != "full":
        print(f"[marktune] protocol {plan.protocol}: "
              + (f"trials run tasks 1-{plan.tuning_tasks} of {plan.stream_tasks}; tasks "
                 f"{plan.tuning_tasks + 1}-{plan.stream_tasks} stay unseen for marktune.evaluate"
                 if plan.protocol == "first-k" else
                 f"trials run the class order of data_seed {plan.base_config.split_seed}; "
                 "marktune.evaluate will use other orders only"))
    print(f"[marktune] compare trials: tensorboard --logdir {plan.experiment}")
    print(f"[marktune] watch the study: {plan.study_storage.dashboard_command()}", flush=True)


def fit(plan: SearchPlan, tuner) -> SearchRun:
    """Run the Tuner; then what the run left: Tune's results, the study, each trial's last state.
    A full disk ends it in one message (``DiskFull``)."""
    from marktune.tune.folders.state_keeper import disk_full_seen, resumed_at, stop_watching
    from marktune.tune.strategy.searcher import resuming
    from marktune.tune.folders.study import open_study

    experiment = plan.experiment
    try:
        if not plan.resume:
            save_settings(plan, experiment)
        with resuming(plan.study_storage), resumed_at(plan.storage, plan.name):
            results = tuner.fit()
    except Exception as err:  # noqa: BLE001 - Tune wraps what its loop raised
        # (on a full disk Tune may also fail reading back an error file it could not write)
        full = disk_full_of(err if not disk_full_seen() else OSError(28, "No space left on device"), plan)
        if full is not None:
            raise full from None
        raise
    finally:
        stop_watching()
    states = last_trial_states(experiment)
    unfinished = frozenset(tid for tid, s in states.items() if s.get("status") in ("RUNNING", "PENDING", "PAUSED"))
    note = missing_results_note(plan.local_dir(), ended=True, unfinished=unfinished) if not is_remote(plan.storage) else ""
    if note:
        print(f"[marktune] {note}", flush=True)
    full = disk_full_of(_first_trial_error(results), plan)
    if full is None and disk_full_seen():
        full = disk_full_of(OSError(28, "No space left on device"), plan)
    if full is not None:  # trials that could not write their checkpoints: the same disk
        raise full
    try:
        study = open_study(plan.study_storage, plan.name)
    except KeyError:  # interrupted before the searcher created it
        study = None
    return SearchRun(results=results, experiment=experiment, study=study, states=states)


def _first_trial_error(results) -> BaseException | None:
    """The first error of a trial that ended on a full disk (else the first error, or None)."""
    from marktune.results.files import is_disk_full

    errors = [r.error for r in results if r.error is not None]
    return next((e for e in errors if is_disk_full(e)), errors[0] if errors else None)


def _trial_name(trial) -> str:
    # short names: Tune's default packs every setting into the directory name
    return f"trial_{trial.trial_id}"
