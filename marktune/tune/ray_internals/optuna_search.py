"""Ray's OptunaSearch: its study, its Optuna trials, pickled without the study (``MarkOptunaSearch``)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    import optuna


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

    def trial(number: int) -> optuna.Trial:
        return optuna.trial.Trial(searcher._ot_study, storage.get_trial_id_from_study_id_trial_number(study_id, number))

    searcher._ot_trials = {tid: trial(number) for tid, number in numbers.items()}
    held = set(numbers.values())
    running = searcher._ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    return [trial(t.number) for t in running if t.number not in held and t.distributions == searcher._space]
