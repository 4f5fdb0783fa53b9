"""Whether the installed Ray and Optuna still have every private attribute and signature marktune uses."""
from __future__ import annotations

import inspect
from typing import Callable

from marktune.tune.ray_internals.wrapping import HERE, LibraryChanged, unwrapped


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


def _retry_problems() -> list[str]:
    from ray.tune.experiment import Trial

    problems = _missing_parameters(unwrapped(Trial, "handle_error"), ("exc",), "Trial.handle_error")
    if not callable(getattr(Trial, "should_recover", None)):
        problems.append("Trial.should_recover")
    source = inspect.getsource(Trial.should_recover) if not problems else ""
    if source and ("max_failures" not in source or "num_failures" not in source):
        problems.append("Trial.should_recover (no longer compares num_failures with max_failures)")
    from ray.tune.execution.tune_controller import TuneController

    problems += _missing_parameters(unwrapped(TuneController, "_process_trial_failure"), ("trial", "exception"),
                                    "TuneController._process_trial_failure")
    problems += _missing_parameters(unwrapped(TuneController, "_schedule_trial_restore"), ("trial",),
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
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

    problems += _missing_parameters(unwrapped(_ExperimentCheckpointManager, "_update_auto_checkpoint_time"),
                                    ("time_taken",), "_ExperimentCheckpointManager._update_auto_checkpoint_time")
    manager = _ExperimentCheckpointManager(storage=None, checkpoint_period=1)
    problems += _missing_attributes(manager, ("_checkpoint_period", "_auto_checkpoint_enabled"),
                                    "_ExperimentCheckpointManager")
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
