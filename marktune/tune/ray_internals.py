"""The one module that reads or writes private attributes of Ray and Optuna.

marktune changes two of Ray Tune's classes in ways their public API does not offer:

* ``ResumableASHA`` (``marktune.tune.scheduler``) refills the rungs of Ray's
  ``AsyncHyperBandScheduler`` on ``--resume`` (ray-project/ray#30838): it needs the bracket a
  trial was given (``_trial_info``), the brackets and their rungs (``_brackets``,
  ``_Bracket._rungs``), the time attribute, the metric and its sign (``_time_attr``,
  ``_metric``, ``_metric_op``).
* ``MarkOptunaSearch`` (``marktune.tune.searcher``) tells Optuna PRUNED for trials ASHA stopped
  and pickles the study's address instead of the study: it needs Ray's ``OptunaSearch``'s study,
  storage, Optuna trials and completed trials (``_ot_study``, ``_storage``, ``_ot_trials``,
  ``_completed_trials``), the study's name, space, mode and sampler (``_study_name``,
  ``_space``, ``_mode``, ``_sampler``) and its ``_setup_study``.
* ``retry_transient_errors_only`` wraps Tune's ``Trial.handle_error`` and sets a trial's
  ``max_failures`` so that Tune does not retry a trial whose error is permanent (a config error),
  and wraps ``TuneController._process_trial_failure`` so that the second report of one dead
  actor does not end a trial that Tune already queued to retry (:func:`_stale_actor_failure`),
  and ``TuneController._schedule_trial_restore`` so that a trial restarts from the checkpoint of
  its last reported task (:func:`adopt_reported_checkpoint`). :func:`handle_failures` installs
  all three.
* ``autoscaler_node_types`` reads the autoscaler's cluster config from ``ray._private.state``.
* The pre-flight token check reads the gRPC metadata Ray's own clients send
  (:func:`ray_token_metadata`, from ``ray._private``).

Every such access goes through a function here, so a Ray or Optuna upgrade that renames one
breaks here, and :func:`check_library_internals` (run by ``tests/tune/test_ray_internals.py``)
says which: "Ray changed X; see marktune/tune/ray_internals.py". Written against Ray 2.60.0
and Optuna 5.0.0 (pyproject.toml pins them).
"""
from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    import optuna

HERE = "marktune/tune/ray_internals.py"


class LibraryChanged(RuntimeError):
    """The installed Ray or Optuna lacks an attribute or signature marktune relies on."""


# ---------------------------------------------------------------- Ray's AsyncHyperBandScheduler
def asha_bracket(scheduler, trial_id: str):
    """The bracket (a ``ray.tune.schedulers.async_hyperband._Bracket``) ASHA gave the trial in
    ``on_trial_add``."""
    return scheduler._trial_info[trial_id]


def asha_time_attr(scheduler) -> str:
    return scheduler._time_attr


def asha_metric(scheduler) -> str:
    return scheduler._metric


def asha_metric_sign(scheduler) -> float:
    """+1 when ASHA maximises its metric, -1 when it minimises (it compares metric x sign)."""
    return scheduler._metric_op


def bracket_record(bracket, trial, *, time: int | float, signed_value: float) -> str:
    """Hand a bracket one result as ASHA does live (records it at the rung it reached, once)."""
    return bracket.on_result(trial, time, signed_value)


def asha_rungs(scheduler) -> list[dict[int | float, dict[str, float]]]:
    """Per bracket: milestone -> {trial id: recorded value (signed as ASHA compares)}; copies."""
    return [{milestone: dict(recorded) for milestone, recorded in bracket._rungs}
            for bracket in scheduler._brackets]


# ---------------------------------------------------------------- Ray's OptunaSearch
def searcher_study(searcher) -> "optuna.Study | None":
    """The Optuna study behind Ray's ``OptunaSearch`` (None before its search space is set)."""
    return searcher._ot_study


def searcher_trials(searcher) -> dict[str, "optuna.Trial"]:
    """Tune trial id -> the Optuna trial the searcher asked for it (live dict)."""
    return searcher._ot_trials


def searcher_completed(searcher) -> set[str]:
    """Tune trial ids the searcher has told Optuna about (live set)."""
    return searcher._completed_trials


def searcher_state(searcher) -> dict[str, Any]:
    """The searcher's attributes for pickling, without the study: the study and its storage
    are left out and each Optuna trial is kept as its number (:func:`restore_searcher`)."""
    state = searcher.__dict__.copy()
    state["_ot_study"] = None
    state["_storage"] = None
    state["_ot_trials"] = {tid: t.number for tid, t in searcher._ot_trials.items()}
    return state


def restore_searcher(searcher, state: Mapping[str, Any], *, storage: "optuna.storages.BaseStorage") -> list:
    """Undo :func:`searcher_state`: reopen the study in ``storage`` and its trials by number; return
    the study's RUNNING trials of this search space that no Tune trial holds, oldest first.

    A searcher pickled before its study was created (the Tuner is pickled when it is built)
    creates it now, if it has its search space."""
    import optuna

    state = dict(state)
    numbers: Mapping[str, int] = state.pop("_ot_trials", {}) or {}
    searcher.__dict__.update(state)
    searcher._ot_trials = {}
    searcher._storage = storage
    names = {s.study_name for s in storage.get_all_studies()}
    if searcher._study_name not in names:
        searcher._ot_study = None
        if searcher._space:
            searcher._setup_study(searcher._mode)
        return []
    searcher._ot_study = optuna.load_study(study_name=searcher._study_name, storage=storage,
                                           sampler=searcher._sampler, pruner=optuna.pruners.NopPruner())
    study_id = storage.get_study_id_from_name(searcher._study_name)
    running = searcher._ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    orphans = {-1 - t.number: t.number for t in running
               if t.number not in set(numbers.values()) and t.distributions == searcher._space}
    for tid, number in {**numbers, **orphans}.items():
        ot_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
        searcher._ot_trials[tid] = optuna.trial.Trial(searcher._ot_study, ot_id)
    return [searcher._ot_trials.pop(key) for key in orphans]


# ---------------------------------------------------------------- Ray's token authentication
def ray_token_metadata() -> tuple:
    """The gRPC metadata Ray's own clients send with their token (empty without one)."""
    from ray._private.authentication.grpc_authentication_client_interceptor import (
        _get_authentication_metadata_tuple)

    return _get_authentication_metadata_tuple()


# ---------------------------------------------------------------- the autoscaler's node types
def autoscaler_node_types() -> list[dict[str, float]] | None:
    """The resources of each node type an autoscaling cluster can add (from the cluster config its
    autoscaler reports to the GCS, ``ray._private.state``); None when there is none, or it
    cannot be read (a local Ray, Ray Client)."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # noqa: BLE001 - not connected, Ray Client, or no such key: nothing known
        return None
    return None if config is None else [{key: float(value) for key, value in group.resources.items()}
                                        for group in config.node_group_configs if group.max_count != 0]


# ---------------------------------------------------------------- Ray Tune's retries
def retry_transient_errors_only(is_permanent: Callable[[BaseException | None], bool]) -> None:
    """Make Tune retry (``FailureConfig.max_failures``) only the errors ``is_permanent`` calls
    transient: a trial whose error is permanent (a config error, a NaN) ends at once, as if it
    had used up its retries. Tune 2.60 retries every error; it counts a failure in
    ``Trial.handle_error`` and asks ``Trial.should_recover`` right after
    (``TuneController._process_trial_failure``), so the wrapper sets the trial's own
    ``max_failures`` to its failures so far. Once per process; the newest ``is_permanent`` wins."""
    from ray.tune.experiment import Trial

    def wrap(original):
        def handle_error(self, exc=None):
            original(self, exc)
            if is_permanent(exc):
                stop_at = max(0, self.run_metadata.num_failures - 1)
                self.max_failures = stop_at if self.max_failures < 0 else min(self.max_failures, stop_at)
        return handle_error
    _wrap_method(Trial, "handle_error", wrap)


def _unwrapped(owner, name: str):
    """``owner.name`` as Ray defines it, under any wrapper of :func:`_wrap_method`."""
    method = getattr(owner, name)
    return getattr(method, "marktune_original", method)


def _wrap_method(owner, name: str, wrap: Callable[[Callable], Callable]) -> None:
    """Put ``wrap(Ray's own method)`` in place of ``owner.name``; installing it again replaces
    the earlier wrapper rather than wrapping it (the newest arguments win)."""
    original = _unwrapped(owner, name)
    replacement = wrap(original)
    replacement.marktune_original = original  # type: ignore[attr-defined]
    setattr(owner, name, replacement)


def handle_failures(is_permanent: Callable[[BaseException | None], bool]) -> None:
    """Tune's failure handling as a search needs it (every run that starts trials calls it):
    permanent errors fail once (:func:`retry_transient_errors_only`), one dead actor is one
    failure (:func:`_stale_actor_failure`), a restarted trial goes on after its last reported task
    (:func:`adopt_reported_checkpoint`)."""
    retry_transient_errors_only(is_permanent)
    _drop_stale_actor_failures()
    _restore_from_the_last_report()


def _stale_actor_failure(trial, exc: BaseException | None) -> bool:
    """Whether ``exc`` reports the death of an actor the trial no longer runs on, after Tune has
    already queued the trial to retry (PENDING).

    An actor killed while two of its tasks were in flight (the restore of a checkpoint and the
    first train step Tune schedules beside it) fails both. Tune 2.60 handles the first (a
    failure counted, the trial back to PENDING) and then the second as a failure of a PENDING
    trial, which ``_process_trial_failure`` ends as ERROR whatever ``max_failures`` allows
    (its ``_on_error`` notes that such an actor "has already been cleaned up" and passes the
    error on all the same). Seen in the soak (``bench/soak.py``): a trial ERROR after 17 of 50
    allowed failures, its last two failures one actor at one moment."""
    from ray.exceptions import RayActorError
    from ray.tune.experiment import Trial

    dead = getattr(exc, "actor_id", None)
    if not isinstance(exc, RayActorError) or not dead or trial.status != Trial.PENDING:
        return False
    current = trial.temporary_state.ray_actor
    return current is None or current._actor_id.hex() != dead


def _drop_stale_actor_failures() -> None:
    from ray.tune.execution.tune_controller import TuneController

    def wrap(original):
        def _process_trial_failure(self, trial, exception):
            if _stale_actor_failure(trial, exception):
                return  # counted once already, when the actor died; the trial waits for its retry
            return original(self, trial, exception)
        return _process_trial_failure
    _wrap_method(TuneController, "_process_trial_failure", wrap)


def adopt_reported_checkpoint(trial) -> bool:
    """Register the checkpoint of the trial's last reported result when Tune has not; True if it did.

    A function trainable's ``tune.report(metrics, checkpoint=...)`` persists the checkpoint
    (``checkpoint_dir_name`` in the metrics) before the result reaches the driver, but Tune 2.60
    registers it only when a separate ``save`` task on the actor returns
    (``_checkpoint_trial_if_needed``, ``_on_saving_result``). A worker killed between the two, or
    a driver whose experiment state was saved between them, restarts the trial from the task
    before: that task runs twice and is reported twice (found by ``bench/soak.py``). The
    checkpoint is whole (persisted before the result was sent), so it is registered here,
    before the restore, with the result it came with."""
    from pyarrow.fs import FileType
    from ray.train._internal.session import _TrainingResult
    from ray.tune import Checkpoint

    last = trial.run_metadata.last_result or {}
    name = last.get("checkpoint_dir_name")
    if not name or trial.storage is None:
        return False
    registered = trial.latest_checkpoint_result
    if registered is not None and _checkpoint_index(registered.checkpoint.path) >= _checkpoint_index(name):
        return False
    storage = trial.storage
    path = f"{storage.trial_fs_path}/{name}"
    if storage.storage_filesystem.get_file_info(path).type != FileType.Directory:
        return False
    trial.on_checkpoint(_TrainingResult(checkpoint=Checkpoint(path, filesystem=storage.storage_filesystem),
                                        metrics=dict(last)))
    return True


def _checkpoint_index(path: str) -> int:
    """checkpoint_000012 -> 12 (Tune's own naming, ``ray.train._internal.storage``); -1 if not one."""
    digits = str(path).rstrip("/").rsplit("/", 1)[-1].removeprefix("checkpoint_")
    return int(digits) if digits.isdigit() else -1


def _restore_from_the_last_report() -> None:
    from ray.tune.execution.tune_controller import TuneController

    def wrap(original):
        def _schedule_trial_restore(self, trial):
            adopt_reported_checkpoint(trial)
            return original(self, trial)
        return _schedule_trial_restore
    _wrap_method(TuneController, "_schedule_trial_restore", wrap)


def _retry_problems() -> list[str]:
    from ray.tune.experiment import Trial

    problems = _missing_parameters(_unwrapped(Trial, "handle_error"), ("exc",), "Trial.handle_error")
    if not callable(getattr(Trial, "should_recover", None)):
        problems.append("Trial.should_recover")
    source = inspect.getsource(Trial.should_recover) if not problems else ""
    if source and ("max_failures" not in source or "num_failures" not in source):
        problems.append("Trial.should_recover (no longer compares num_failures with max_failures)")
    from ray.tune.execution.tune_controller import TuneController

    problems += _missing_parameters(_unwrapped(TuneController, "_process_trial_failure"), ("trial", "exception"),
                                    "TuneController._process_trial_failure")
    problems += _missing_parameters(_unwrapped(TuneController, "_schedule_trial_restore"), ("trial",),
                                    "TuneController._schedule_trial_restore")
    for name in ("on_checkpoint", "latest_checkpoint_result", "run_metadata", "storage"):
        if not hasattr(Trial, name) and name not in inspect.getsource(Trial.__init__):
            problems.append(f"Trial.{name}")
    try:
        from ray.train._internal.session import _TrainingResult  # noqa: F401
    except ImportError:
        problems.append("ray.train._internal.session._TrainingResult")
    from ray.tune.experiment.trial import _TemporaryTrialState

    if "ray_actor" not in inspect.getsource(_TemporaryTrialState.__init__):
        problems.append("Trial.temporary_state.ray_actor")
    return problems


# ---------------------------------------------------------------- the check
ASHA_ATTRIBUTES = ("_trial_info", "_brackets", "_time_attr", "_metric", "_metric_op")
BRACKET_ATTRIBUTES = ("_rungs",)
OPTUNA_SEARCH_ATTRIBUTES = ("_ot_study", "_storage", "_ot_trials", "_completed_trials", "_study_name", "_space",
                            "_mode", "_sampler")


def _missing_attributes(obj, names, owner: str) -> list[str]:
    return [f"{owner}.{name}" for name in names if not hasattr(obj, name)]


def _missing_parameters(func: Callable, names, owner: str) -> list[str]:
    try:
        parameters = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return [f"{owner} (no signature)"]
    return [f"{owner}({name}=...)" for name in names if name not in parameters]


def _asha_problems() -> list[str]:
    from ray.tune.schedulers import AsyncHyperBandScheduler

    problems = _missing_parameters(AsyncHyperBandScheduler.__init__,
                                   ("time_attr", "max_t", "grace_period", "reduction_factor"),
                                   "AsyncHyperBandScheduler.__init__")
    scheduler = AsyncHyperBandScheduler(time_attr="t", max_t=4, grace_period=1, reduction_factor=2)
    scheduler.set_search_properties("m", "max")
    problems += _missing_attributes(scheduler, ASHA_ATTRIBUTES, "AsyncHyperBandScheduler")
    if problems:
        return problems
    if not isinstance(scheduler._trial_info, dict):
        problems.append("AsyncHyperBandScheduler._trial_info (no longer a dict: trial id -> bracket)")
    if scheduler._metric_op != 1.0 or scheduler._time_attr != "t" or scheduler._metric != "m":
        problems.append("AsyncHyperBandScheduler._metric_op/_time_attr/_metric (other meanings)")
    for bracket in scheduler._brackets:
        missing = _missing_attributes(bracket, BRACKET_ATTRIBUTES, "_Bracket")
        missing += _missing_parameters(bracket.on_result, ("trial", "cur_iter", "cur_rew"), "_Bracket.on_result")
        if missing:
            return problems + missing
        if not all(isinstance(rung, tuple) and len(rung) == 2 and isinstance(rung[1], dict)
                   for rung in bracket._rungs):
            problems.append("_Bracket._rungs (no longer a list of (milestone, {trial id: value}))")
    return problems


def _optuna_search_problems() -> list[str]:
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    problems = _missing_parameters(OptunaSearch.__init__, ("metric", "mode", "sampler", "study_name", "storage"),
                                   "OptunaSearch.__init__")
    if not callable(getattr(OptunaSearch, "_setup_study", None)):
        problems.append("OptunaSearch._setup_study")
    else:
        problems += _missing_parameters(OptunaSearch._setup_study, ("mode",), "OptunaSearch._setup_study")
    if problems:
        return problems
    searcher = OptunaSearch(metric="m", mode="max", sampler=optuna.samplers.TPESampler(seed=0),
                            study_name="check", storage=optuna.storages.InMemoryStorage())
    searcher.set_search_properties(None, None, {"x": tune.uniform(0, 1)})
    problems += _missing_attributes(searcher, OPTUNA_SEARCH_ATTRIBUTES, "OptunaSearch")
    if problems:
        return problems
    searcher.suggest("t1")
    if not isinstance(searcher._ot_study, optuna.Study):
        problems.append("OptunaSearch._ot_study (no longer the optuna.Study)")
    if not isinstance(searcher._ot_trials.get("t1"), optuna.Trial):
        problems.append("OptunaSearch._ot_trials (no longer trial id -> optuna.Trial)")
    if not isinstance(searcher._completed_trials, set):
        problems.append("OptunaSearch._completed_trials (no longer a set)")
    return problems


def _optuna_problems() -> list[str]:
    import optuna

    return _missing_parameters(optuna.trial.Trial.__init__, ("study", "trial_id"), "optuna.trial.Trial.__init__") + \
        _missing_attributes(optuna.storages.BaseStorage, ("get_all_studies", "get_study_id_from_name",
                                                          "get_trial_id_from_study_id_trial_number"), "BaseStorage")


def _token_problems() -> list[str]:
    try:
        from ray._private.authentication import grpc_authentication_client_interceptor as interceptor
        from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc
    except ImportError as err:
        return [f"ray._private.authentication / ray.core.generated ({err})"]
    problems = _missing_attributes(interceptor, ("_get_authentication_metadata_tuple",),
                                   "ray._private.authentication.grpc_authentication_client_interceptor")
    problems += _missing_attributes(gcs_service_pb2, ("GetClusterIdRequest",), "ray.core.generated.gcs_service_pb2")
    problems += _missing_attributes(gcs_service_pb2_grpc, ("NodeInfoGcsServiceStub",),
                                    "ray.core.generated.gcs_service_pb2_grpc")
    return problems


def library_internals_problems() -> list[str]:
    """Each private attribute or signature marktune uses that the installed Ray/Optuna lacks."""
    problems = []
    for library, check in (("Ray", _asha_problems), ("Ray", _optuna_search_problems), ("Optuna", _optuna_problems),
                           ("Ray", _token_problems), ("Ray", _retry_problems)):
        try:
            problems += [f"{library} changed {what}" for what in check()]
        except Exception as err:  # noqa: BLE001 - a check that cannot even run is a change too
            problems.append(f"{library} changed: {check.__name__} failed ({type(err).__name__}: {err})")
    return problems


def check_library_internals() -> None:
    """Raise LibraryChanged naming every private attribute marktune uses that is gone."""
    problems = library_internals_problems()
    if problems:
        raise LibraryChanged("; ".join(f"{p}; see {HERE}" for p in problems))
