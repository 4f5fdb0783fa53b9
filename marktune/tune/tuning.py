"""What decides which trials run and which stop: the Optuna study, its storage, and ASHA.

Three pieces behind narrow interfaces, the way Ray Tune keeps each searcher and scheduler:

* :class:`marktune.tune.study.StudyStorage` says where the Optuna study lives: a JournalStorage
  file (``<experiment>/optuna_journal.log`` by default, safe on a shared filesystem) or any
  SQLAlchemy URL (``sqlite:///marktune.db``, ``postgresql://user@host/db``). It has no Ray in
  it, so ``marktune.report`` reads a study without Ray.
* :class:`MarkOptunaSearch` is Ray's ``OptunaSearch`` (which already takes a ``storage`` and a
  ``study_name``) with two changes: a trial ASHA stopped is told to Optuna as ``PRUNED`` with
  its per-task values, and its checkpoint (Tune's ``searcher-state-*.pkl``) holds the storage's
  address and Optuna's trial numbers instead of a pickled study, so ``--resume`` reopens the
  study where it lives.
* :class:`ResumableASHA` is Ray's ``AsyncHyperBandScheduler`` whose rungs survive ``--resume``:
  Tune never calls a scheduler's ``save``/``restore`` (ray-project/ray#30838), so every trial
  Tune restores refills the rungs from the results it reported (its ``result.json``).

Example (Ray is imported by this module):
    >>> from marktune.tune.study import StudyStorage
    >>> import tempfile, pathlib
    >>> storage = StudyStorage(journal=pathlib.Path(tempfile.mkdtemp()) / "optuna_journal.log")
    >>> searcher = make_searcher(storage=storage, study_name="demo", num_tasks=5, seed=0)
    >>> scheduler = make_scheduler(num_tasks=5, grace_period=1, reduction_factor=2)
    >>> sorted(scheduler.rungs()[0])  # milestones, in tasks done
    [1, 2, 4]
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from ray.tune.schedulers import AsyncHyperBandScheduler
from ray.tune.search.optuna import OptunaSearch

from marktune.mark.metrics import METRIC, TIME_ATTR
from marktune.tune.study import StudyStorage

if TYPE_CHECKING:
    import optuna


# ---------------------------------------------------------------- the searcher
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
    def study(self) -> "optuna.Study":
        return self._ot_study

    @property
    def storage(self) -> StudyStorage:
        return self._storage_spec

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        value = result.get(self.metric)
        if value is not None and math.isfinite(value):
            with warnings.catch_warnings():
                # a trial resumed from an older checkpoint reports its last tasks again (same
                # values); Optuna keeps the first and warns about each repeat
                warnings.filterwarnings("ignore", message="The reported value is ignored")
                self._ot_trials[trial_id].report(value, int(result[TIME_ATTR]))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        from optuna.trial import TrialState

        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        finished = bool(result) and int(result.get(TIME_ATTR, 0)) >= self._num_tasks
        value = result.get(self.metric) if result else None
        if result and TIME_ATTR in result:
            # Tune hands the last result (the one ASHA judged) only to this method
            self.on_trial_result(trial_id, result)
        if error:
            self._ot_study.tell(ot_trial, state=TrialState.FAIL)
        elif finished and value is not None and math.isfinite(value):
            self._ot_study.tell(ot_trial, value, state=TrialState.COMPLETE)
        else:  # stopped early: TPE sees it as pruned, with its intermediate values
            self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
        self._completed_trials.add(trial_id)

    # Tune pickles the searcher twice: whole into tuner.pkl when the Tuner is built, and
    # through save() into searcher-state-*.pkl as trials run. Neither holds the study: it
    # lives in its storage, and restoring reopens it there.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_ot_study"] = None
        state["_storage"] = None
        state["_ot_trials"] = {tid: t.number for tid, t in self._ot_trials.items()}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        import optuna

        numbers: Mapping[str, int] = state.pop("_ot_trials", {}) or {}
        self.__dict__.update(state)
        self._ot_trials = {}
        spec: StudyStorage = self._storage_spec
        self._storage = spec.open()
        names = {s.study_name for s in self._storage.get_all_studies()}
        if self._study_name not in names:
            self._ot_study = None  # the Tuner was pickled before the study was created
            if self._space:
                self._setup_study(self._mode)
            return
        self._ot_study = optuna.load_study(study_name=self._study_name, storage=self._storage,
                                           sampler=self._sampler, pruner=optuna.pruners.NopPruner())
        study_id = self._storage.get_study_id_from_name(self._study_name)
        for tid, number in numbers.items():
            ot_id = self._storage.get_trial_id_from_study_id_trial_number(study_id, number)
            self._ot_trials[tid] = optuna.trial.Trial(self._ot_study, ot_id)

    def save(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__getstate__(), f)

    def restore(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "rb") as f:
            self.__setstate__(pickle.load(f))


# ---------------------------------------------------------------- the scheduler
def make_scheduler(*, num_tasks: int, grace_period: int, reduction_factor: float) -> "ResumableASHA":
    """ASHA on tasks done; the metric and mode come from the Tuner's TuneConfig (METRIC, max)."""
    return ResumableASHA(time_attr=TIME_ATTR, max_t=num_tasks, grace_period=grace_period,
                         reduction_factor=reduction_factor)


class ResumableASHA(AsyncHyperBandScheduler):
    """ASHA whose rungs a resumed search refills from what every trial already reported.

    Tune hands every trial it restores (finished, stopped, interrupted) to ``on_trial_add``;
    each one's reported results are replayed into its bracket, which records the value at
    each rung the trial reached exactly as it did live (recording does not depend on other
    trials). Replaying is idempotent: a rung never records a trial twice.
    """

    def on_trial_add(self, tune_controller, trial) -> None:
        super().on_trial_add(tune_controller, trial)
        self.refill(trial, reported_results(trial))

    def refill(self, trial, results: Iterable[Mapping[str, Any]]) -> None:
        """Record ``trial``'s past ``results`` (dicts with the time attribute and the metric) in
        its bracket's rungs. The trial must have been added (``on_trial_add``)."""
        bracket = self._trial_info[trial.trial_id]
        for result in sorted((r for r in results if self._time_attr in r and self._metric in r),
                             key=lambda r: r[self._time_attr]):
            value = result[self._metric]
            if value is None or not math.isfinite(float(value)):
                continue
            bracket.on_result(trial, result[self._time_attr], self._metric_op * float(value))

    def rungs(self) -> list[dict[int | float, dict[str, float]]]:
        """Per bracket: milestone -> {trial id: recorded value (signed as ASHA compares)}."""
        return [{milestone: dict(recorded) for milestone, recorded in b._rungs} for b in self._brackets]


def reported_results(trial) -> list[dict[str, Any]]:
    """What a Tune trial reported so far: its ``result.json`` lines (driver copy, else storage)."""
    if not getattr(trial, "has_reported_at_least_once", True):
        return []  # a new trial (it has no directory yet), or a restored one that never reported
    texts = []
    try:
        texts.append((Path(trial.local_path) / "result.json").read_text())
    except (OSError, RuntimeError, TypeError):  # no driver copy (RuntimeError: no directory name yet)
        try:
            filesystem = trial.storage.storage_filesystem
            with filesystem.open_input_stream(f"{trial.path}/result.json") as f:
                texts.append(f.readall().decode())
        except Exception:  # noqa: BLE001 - nothing reported anywhere
            pass
    out = []
    for line in "".join(texts).splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a torn last line (the driver was killed mid-write)
            continue
        if isinstance(record, dict) and TIME_ATTR in record:
            out.append(record)
    return out
