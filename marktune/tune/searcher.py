"""Which trials run: Optuna TPE behind Tune, pruned-aware, its study in a persistent storage.

:class:`MarkOptunaSearch` is Ray's ``OptunaSearch`` (which already takes a ``storage`` and a
``study_name``) with two changes: a trial ASHA stopped is told to Optuna as ``PRUNED`` with
its per-task values, and its checkpoint (Tune's ``searcher-state-*.pkl``) holds the storage's
address and Optuna's trial numbers instead of a pickled study, so ``--resume`` reopens the
study where it lives (:class:`marktune.tune.study.StudyStorage`). What it needs of Ray's
private attributes is read through ``marktune.tune.ray_internals``.

Example (Ray is imported by this module):
    >>> from marktune.tune.study import StudyStorage
    >>> import tempfile, pathlib
    >>> storage = StudyStorage(journal=pathlib.Path(tempfile.mkdtemp()) / "optuna_journal.log")
    >>> searcher = make_searcher(storage=storage, study_name="demo", num_tasks=5, seed=0)
    >>> searcher.study is None  # created when Tune hands it the search space
    True
"""
from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any

from ray.tune.search.optuna import OptunaSearch

from marktune.mark.metrics import METRIC, TIME_ATTR
from marktune.tune import ray_internals
from marktune.tune.study import StudyStorage

if TYPE_CHECKING:
    import optuna


def make_searcher(*, storage: StudyStorage, study_name: str, num_tasks: int, seed: int | None):
    """Optuna TPE behind Tune, its study in ``storage`` under ``study_name``."""
    import optuna

    sampler = optuna.samplers.TPESampler(seed=seed)
    return MarkOptunaSearch(storage=storage, study_name=study_name, num_tasks=num_tasks, sampler=sampler)


class MarkOptunaSearch(OptunaSearch):
    """OptunaSearch that reports trials ASHA stopped as PRUNED, not COMPLETE, and keeps its
    study in a persistent storage.

    Mean accuracy over tasks seen is not comparable across task counts: a trial stopped after
    2 tasks must not teach TPE its 2-task mean as a final value. Intermediate values go in at
    step = tasks done; only trials that ran every task are told COMPLETE. A trial the search
    was interrupted in is told nothing: it stays RUNNING in the study until it continues.
    """

    def __init__(self, *, storage: StudyStorage, study_name: str, num_tasks: int, sampler) -> None:
        self._storage_spec = storage
        self._num_tasks = num_tasks
        super().__init__(metric=METRIC, mode="max", sampler=sampler, study_name=study_name,
                         storage=storage.open())

    @property
    def study(self) -> "optuna.Study | None":
        return ray_internals.searcher_study(self)

    @property
    def storage(self) -> StudyStorage:
        return self._storage_spec

    def _open_trial(self, trial_id: str) -> "optuna.Trial | None":
        """The trial's Optuna trial while it is still to be told about, else None."""
        if trial_id in ray_internals.searcher_completed(self):
            return None
        return ray_internals.searcher_trials(self).get(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        ot_trial = self._open_trial(trial_id)
        if ot_trial is None:
            return
        value = result.get(self.metric)
        if value is not None and math.isfinite(value):
            with warnings.catch_warnings():
                # a trial resumed from an older checkpoint reports its last tasks again (same
                # values); Optuna keeps the first and warns about each repeat
                warnings.filterwarnings("ignore", message="The reported value is ignored")
                ot_trial.report(value, int(result[TIME_ATTR]))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        from optuna.trial import TrialState

        ot_trial = self._open_trial(trial_id)
        if ot_trial is None:
            return
        finished = bool(result) and int(result.get(TIME_ATTR, 0)) >= self._num_tasks
        value = result.get(self.metric) if result else None
        if result and TIME_ATTR in result:
            # Tune hands the last result (the one ASHA judged) only to this method
            self.on_trial_result(trial_id, result)
        study = ray_internals.searcher_study(self)
        if error:
            study.tell(ot_trial, state=TrialState.FAIL)
        elif finished and value is not None and math.isfinite(value):
            study.tell(ot_trial, value, state=TrialState.COMPLETE)
        else:  # stopped early: TPE sees it as pruned, with its intermediate values
            study.tell(ot_trial, state=TrialState.PRUNED)
        ray_internals.searcher_completed(self).add(trial_id)

    # Tune pickles the searcher twice: whole into tuner.pkl when the Tuner is built, and
    # through save() into searcher-state-*.pkl as trials run. Neither holds the study: it
    # lives in its storage, and restoring reopens it there.
    def __getstate__(self) -> dict[str, Any]:
        return ray_internals.searcher_state(self)

    def __setstate__(self, state: dict[str, Any]) -> None:
        spec: StudyStorage = state["_storage_spec"]
        ray_internals.restore_searcher(self, state, storage=spec.open())

    def save(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__getstate__(), f)

    def restore(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "rb") as f:
            self.__setstate__(pickle.load(f))
