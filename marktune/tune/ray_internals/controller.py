"""Ray Tune's failure handling, changed where a search needs it (:func:`handle_failures`)."""
from __future__ import annotations

from typing import Callable

from marktune.tune.ray_internals.wrapping import unwrapped, wrap_method


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
    wrap_method(Trial, "handle_error", wrap)


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
    wrap_method(TuneController, "_process_trial_failure", wrap)


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
    wrap_method(TuneController, "_schedule_trial_restore", wrap)


# ---------------------------------------------------------------- Tune's experiment-state snapshots
def snapshot_share(*, floor_s: float = 1.0, share: float = 0.05) -> None:
    """Tune snapshots the experiment state (what ``--resume`` restores) every ``floor_s`` seconds
    (``TUNE_GLOBAL_CHECKPOINT_S``), or less often when one snapshot takes long: at most ``share``
    of the driver's time. The state holds about 37 KB per trial, so at thousands of trials a
    snapshot every second would be most of what the driver does. Tune's own ``"auto"`` rule is
    the same share with a 10 s floor; a search keeps its state a second behind its trials while
    that is cheap. Once per process."""
    import os

    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

    def wrap(original):
        def _update_auto_checkpoint_time(self, time_taken):
            if self._auto_checkpoint_enabled:  # TUNE_GLOBAL_CHECKPOINT_S=auto: Tune's own rule
                return original(self, time_taken)
            floor = float(os.environ.get("TUNE_GLOBAL_CHECKPOINT_S", floor_s))
            self._checkpoint_period = max(floor, time_taken * (1 - share) / share)
        return _update_auto_checkpoint_time
    wrap_method(_ExperimentCheckpointManager, "_update_auto_checkpoint_time", wrap)
