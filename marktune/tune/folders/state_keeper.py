"""Tune's own state files, kept whole across a full disk; and a full disk stops the search in one message.

Tune writes its experiment state (``experiment_state-*.json``), the searcher's and the search
generator's state (``searcher-state-*.pkl``, ``search_gen_state-*.json``) in a staging folder
and copies them over the experiment's files in place: a full disk leaves them cut short, and
``--resume`` then fails on them. :class:`StateKeeper` (a Tune callback of the search) copies
them, each time they are whole, into ``.marktune_state/``
(:func:`marktune.tune.folders.experiment.keep_state`); before Ray, on ``--resume``,
:func:`marktune.tune.folders.experiment.restore_kept_state` puts a kept copy back in place of a
file that is cut short.

When a trial fails on a full disk, or Ray logs one, the callback mutes Ray's log records about
it and stops the search the way Ctrl-C does (its trials stay unfinished, resumable); the search
then ends with one message (:class:`marktune.tune.folders.experiment.DiskFull`).
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import signal
import time
from pathlib import Path
from typing import Iterator

from ray.tune import Callback

from marktune.results.files import free_bytes, is_disk_full, is_remote
from marktune.tune.folders.experiment import keep_state

FULL_BELOW_BYTES = 2**20  # a trial error with less free space than this is read as a full disk
KEEP_EVERY_S = 1.0  # at most this often; less often when a copy takes long (KEEP_SHARE)
# Checking and copying Tune's state grows with the trials (its JSON holds about 37 KB per trial):
# at most this share of the driver's time, the rule of Tune's own "auto" experiment checkpoints
KEEP_SHARE = 0.05


class _DiskFullFilter(logging.Filter):
    def __init__(self, keeper: "StateKeeper") -> None:
        super().__init__()
        self.keeper = keeper

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage() + (str(record.exc_info[1]) if record.exc_info else "")
        if "No space left on device" in text or "Errno 28" in text or "errno 28" in text:
            self.keeper.disk_full()
            return False
        return not self.keeper.full


class StateKeeper(Callback):
    """See the module. Holds no path: the experiment directory is the trials' (a moved experiment
    is kept in its new place)."""

    def __init__(self) -> None:
        self.full = False
        self._last = 0.0
        self._every = KEEP_EVERY_S

    def __getstate__(self):
        return {}  # pickled with the Tuner: nothing of one run carries over to the next

    def __setstate__(self, state) -> None:
        self.__init__()

    def setup(self, **info) -> None:
        global _disk_full_seen
        _disk_full_seen = False
        stop_watching()
        _filters.append(_DiskFullFilter(self))
        for handler in _handlers():
            handler.addFilter(_filters[-1])

    def on_step_end(self, iteration, trials, **info) -> None:
        now = time.monotonic()
        if now - self._last < self._every or not trials:
            return
        directory = _experiment_dir(trials[0])
        if directory is not None:
            keep_state(directory)
        self._last = time.monotonic()
        self._every = max(KEEP_EVERY_S, (self._last - now) * (1 - KEEP_SHARE) / KEEP_SHARE)

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self._check(trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._check(trial)


    def _check(self, trial) -> None:
        directory = _experiment_dir(trial)
        free = free_bytes(directory) if directory is not None else None
        error = ""
        try:
            error = Path(trial.error_file).read_text(errors="replace") if trial.error_file else ""
        except OSError:
            pass
        if (free is not None and free < FULL_BELOW_BYTES) or "No space left on device" in error \
                or is_disk_full(OSError(error)):
            self.disk_full()

    def disk_full(self) -> None:
        """Stop the search as Ctrl-C does (its trials stay resumable), once."""
        global _disk_full_seen
        if self.full:
            return
        self.full = _disk_full_seen = True
        os.kill(os.getpid(), signal.SIGINT)


_disk_full_seen = False  # in this driver process, by any StateKeeper


_filters: list[logging.Filter] = []  # installed by a StateKeeper's setup, until stop_watching()


def _handlers() -> list[logging.Handler]:
    return logging.getLogger("ray").handlers + logging.getLogger().handlers


def stop_watching() -> None:
    """Take the log filter off Ray's handlers (the search calls it once Tune has returned, so
    Tune's own closing lines about a full disk are muted too)."""
    while _filters:
        f = _filters.pop()
        for handler in _handlers():
            handler.removeFilter(f)


def disk_full_seen() -> bool:
    """Whether a StateKeeper stopped a search of this process on a full disk."""
    return _disk_full_seen


def _experiment_dir(trial) -> Path | None:
    try:
        storage = trial.storage
        path = storage.experiment_fs_path
        if type(storage.storage_filesystem).__name__ != "LocalFileSystem":
            return None
        return Path(path)
    except Exception:  # noqa: BLE001 - a trial without storage yet
        return None


# ---------------------------------------------------------------- a moved experiment's new trials
_resumed_at: tuple[str, str] | None = None  # (storage folder, experiment name) being resumed here


@contextlib.contextmanager
def resumed_at(storage: str, name: str) -> Iterator[None]:
    """While a search resumes the local experiment ``<storage>/<name>``, :func:`relocate` points
    every trial Tune adds at it."""
    global _resumed_at
    previous, _resumed_at = _resumed_at, ((str(Path(storage).resolve()), name) if not is_remote(storage) else None)
    try:
        yield
    finally:
        _resumed_at = previous


def relocate(trial) -> None:
    """Point a trial at the experiment being resumed. Tune moves the trials it restores to the
    directory it resumes, but a trial its search generator creates afterwards takes the storage
    pickled with the experiment (the original's path: a copied experiment's new trials would be
    written into the original). Called by the scheduler as each trial is added."""
    if _resumed_at is None:
        return
    folder, name = _resumed_at
    storage = trial.storage
    if storage is None or (storage.storage_fs_path == folder and storage.experiment_dir_name == name):
        return
    if type(storage.storage_filesystem).__name__ != "LocalFileSystem":
        return
    moved = copy.copy(storage)
    moved.storage_fs_path = folder
    moved.experiment_dir_name = name
    trial.set_storage(moved)
