"""Which trials run: an Optuna sampler (:mod:`marktune.tune.strategy.samplers`) behind Tune, pruned-aware, its study in
a persistent storage.

:class:`MarkOptunaSearch` is Ray's ``OptunaSearch`` (which already takes a ``storage`` and a
``study_name``) with two changes: a trial ASHA stopped is told to Optuna as ``PRUNED`` with
its per-task values, and its checkpoint (Tune's ``searcher-state-*.pkl``) holds the storage's
URL, or only "the journal" (no path), and Optuna's trial numbers instead of a pickled study, so
``--resume`` reopens the study where it lives (:class:`marktune.tune.folders.study.StudyStorage`): the
search restores it inside :func:`resuming`, with the journal of the experiment being resumed. What it needs of Ray's
private attributes is read through ``marktune.tune.ray_internals``.

Example (Ray is imported by this module):
    >>> from marktune.tune.folders.study import JOURNAL_FILE, StudyStorage
    >>> import tempfile, pathlib
    >>> storage = StudyStorage(journal=pathlib.Path(tempfile.mkdtemp()) / "optuna_journal.log")
    >>> searcher = make_searcher(storage=storage, study_name="demo", num_tasks=5, seed=0)
    >>> searcher.study is None  # created when Tune hands it the search space
    True
    >>> type(make_searcher(storage=storage, study_name="demo2", num_tasks=5, seed=0, kind="random").sampler).__name__
    'RandomSampler'
"""
from __future__ import annotations

import contextlib
import math
import warnings
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from ray.tune.search.optuna import OptunaSearch

from marktune.mark.metrics import METRIC, TIME_ATTR
from marktune.results.objectives import SINGLE, Objective, objective_values
from marktune.tune import ray_internals
from marktune.tune.strategy.samplers import make_sampler
from marktune.tune.folders.study import JOURNAL_FILE, StudyStorage, hide_password

if TYPE_CHECKING:
    import optuna


_resumed_storage: StudyStorage | None = None  # set by resuming(): where the resumed experiment's study is


@contextlib.contextmanager
def resuming(storage: StudyStorage) -> Iterator[None]:
    """While Tune restores an experiment's searcher (``Tuner.restore`` and ``fit``), its study is
    the one in ``storage``, the resumed experiment's (recomputed from its directory by the search),
    whatever path an older checkpoint may hold."""
    global _resumed_storage
    previous, _resumed_storage = _resumed_storage, storage
    try:
        yield
    finally:
        _resumed_storage = previous


def _stored_spec(stored: Any) -> StudyStorage | None:
    """The storage a checkpoint names, where it can be opened without knowing the experiment: a
    URL; an absolute journal path of a checkpoint written before experiments were relocatable."""
    if isinstance(stored, StudyStorage):
        return stored
    if isinstance(stored, dict) and stored.get("url") and "***" not in str(stored["url"]):  # a hidden password
        return StudyStorage(url=str(stored["url"]))
    return None


def make_searcher(*, storage: StudyStorage, study_name: str, num_tasks: int, seed: int | None,
                  kind: str = "tpe", n_startup_trials: int = 10, constant_liar: bool = True,
                  objectives: Sequence[Objective] = SINGLE, population: int | None = None) -> "MarkOptunaSearch":
    """Optuna behind Tune, its study in ``storage`` under ``study_name``; ``kind`` names the sampler
    (:data:`marktune.tune.strategy.samplers.SEARCHERS`: tpe, the default, is multivariate TPE with the
    constant liar, random for its first ``n_startup_trials`` trials). Whatever the sampler, the
    study, its pruned trials and ``--resume`` are the same. Several ``objectives``
    (:mod:`marktune.results.objectives`): a multi-objective study, one direction per objective
    (TPE is then Optuna's multi-objective TPE; ``nsga2`` is NSGA-II)."""
    sampler = make_sampler(kind, seed=seed, n_startup_trials=n_startup_trials, constant_liar=constant_liar,
                           population=population)
    return MarkOptunaSearch(storage=storage, study_name=study_name, num_tasks=num_tasks, sampler=sampler,
                            objectives=objectives)


class MarkOptunaSearch(OptunaSearch):
    """OptunaSearch that reports trials ASHA stopped as PRUNED, not COMPLETE, and keeps its
    study in a persistent storage.

    Mean accuracy over tasks seen is not comparable across task counts: a trial stopped after
    2 tasks must not teach TPE its 2-task mean as a final value. Intermediate values go in at
    step = tasks done; only trials that ran every task are told COMPLETE. A trial the search
    was interrupted in is told nothing: it stays RUNNING in the study until it continues.
    """

    def __init__(self, *, storage: StudyStorage, study_name: str, num_tasks: int, sampler,
                 objectives: Sequence[Objective] = SINGLE) -> None:
        self._storage_spec = storage
        self._num_tasks = num_tasks
        self.sampler = sampler  # the one the study is created with (Tune keeps it privately)
        self.objectives = tuple(objectives)
        self._orphans: list = []  # set on restore: see suggest()
        if len(self.objectives) == 1:
            metric, mode = METRIC, "max"
        else:  # a list: Ray's OptunaSearch makes a study with one direction per objective
            metric, mode = [o.metric for o in self.objectives], [o.direction for o in self.objectives]
        super().__init__(metric=metric, mode=mode, sampler=sampler, study_name=study_name,
                         storage=storage.open())

    @property
    def multiobjective(self) -> bool:
        return len(self.objectives) > 1

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

    def suggest(self, trial_id: str) -> dict | None:
        # A study trial the lost driver asked for after its last checkpoint: no Tune trial holds
        # it, and the restored sampler would ask for a new one (with --seed, the same settings
        # again), leaving it RUNNING forever. The next new Tune trial takes it instead: one
        # study trial per trial run, as if the driver had not died.
        if trial_id not in ray_internals.searcher_trials(self) and self._orphans:
            ray_internals.searcher_trials(self)[trial_id] = self._orphans.pop(0)
        return super().suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        ot_trial = self._open_trial(trial_id)
        if ot_trial is None or self.multiobjective:  # Optuna keeps no intermediate values of several objectives
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
        if self.multiobjective:
            values = objective_values(result or {}, self.objectives)
            value = list(values) if values is not None else None
        else:
            value = result.get(self.metric) if result else None
        if result and TIME_ATTR in result:
            # Tune hands the last result (the one ASHA judged) only to this method
            self.on_trial_result(trial_id, result)
        if error:
            state, told = TrialState.FAIL, None
        elif finished and value is not None and (self.multiobjective or math.isfinite(value)):
            state, told = TrialState.COMPLETE, value
        else:  # stopped early: TPE sees it as pruned, with its intermediate values
            state, told = TrialState.PRUNED, None
        # skip_if_finished: a trial told in the driver's last second before it died is finished
        # in the study but not in the searcher checkpoint --resume restores (at most a second
        # older); Tune runs its last task again and ends it again. Optuna refused the second tell
        # ("Cannot tell a COMPLETE trial") and the resumed search died (seen once in the suite).
        ray_internals.searcher_study(self).tell(ot_trial, told, state=state, skip_if_finished=True)
        ray_internals.searcher_completed(self).add(trial_id)

    # Tune pickles the searcher twice: whole into tuner.pkl when the Tuner is built, and
    # through save() into searcher-state-*.pkl as trials run. Neither holds the study: it
    # lives in its storage, and restoring reopens it there.
    def __getstate__(self) -> dict[str, Any]:
        state = ray_internals.searcher_state(self)
        state["_orphans"] = []  # found again from the study on restore
        # no path: a journal is the one in the experiment being resumed (a copied or moved
        # experiment resumes on its own journal, never the original's); a URL stays the URL, its
        # password hidden (no file of the experiment holds it: --resume is given the URL again)
        spec: StudyStorage = state["_storage_spec"]
        state["_storage_spec"] = {"url": hide_password(spec.url)} if spec.url is not None else {"journal": JOURNAL_FILE}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        # the resumed experiment's study; else the one this searcher was made with (restore() of
        # its own checkpoint); else what the checkpoint names (a URL, or an older absolute path)
        spec = (_resumed_storage or self.__dict__.get("_storage_spec")
                or _stored_spec(state.get("_storage_spec")))
        if spec is None:
            raise RuntimeError("this searcher keeps its study in the experiment's journal, or in a database "
                               "whose password is not stored: restore it with "
                               "marktune.tune.strategy.searcher.resuming(StudyStorage of the resumed experiment)")
        state["_storage_spec"] = spec
        self._orphans = ray_internals.restore_searcher(self, state, storage=spec.open())

    def save(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__getstate__(), f)

    def restore(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "rb") as f:
            self.__setstate__(pickle.load(f))
