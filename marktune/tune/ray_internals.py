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


def restore_searcher(searcher, state: Mapping[str, Any], *, storage: "optuna.storages.BaseStorage") -> None:
    """Undo :func:`searcher_state`: reopen the study in ``storage`` and its trials by number.

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
        return
    searcher._ot_study = optuna.load_study(study_name=searcher._study_name, storage=storage,
                                           sampler=searcher._sampler, pruner=optuna.pruners.NopPruner())
    study_id = storage.get_study_id_from_name(searcher._study_name)
    for tid, number in numbers.items():
        ot_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
        searcher._ot_trials[tid] = optuna.trial.Trial(searcher._ot_study, ot_id)


# ---------------------------------------------------------------- Ray's token authentication
def ray_token_metadata() -> tuple:
    """The gRPC metadata Ray's own clients send with their token (empty without one)."""
    from ray._private.authentication.grpc_authentication_client_interceptor import (
        _get_authentication_metadata_tuple)

    return _get_authentication_metadata_tuple()


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

    problems = _missing_parameters(optuna.trial.Trial.__init__, ("study", "trial_id"), "optuna.trial.Trial.__init__")
    problems += _missing_attributes(optuna.storages.BaseStorage, (
        "get_all_studies", "get_study_id_from_name", "get_trial_id_from_study_id_trial_number"),
        "optuna.storages.BaseStorage")
    return problems


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
                           ("Ray", _token_problems)):
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
