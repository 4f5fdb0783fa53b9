"""One search or evaluation per experiment at a time: the lock file in the experiment directory.

A search takes ``<experiment>/marktune.lock`` (:data:`marktune.results.files.LOCK_FILE`) before
it writes anything to the experiment and holds it until it ends (``--resume`` too); an
evaluation takes the same lock, since it writes its tables into the same directory. A second
command on the experiment is refused at once, with who holds it: the command, its host, pid and
start time, as JSON in the lock file (any process can read it).

The file is made complete under a temporary name and hard-linked into place, which fails when
a lock is there already (atomic on local disks and NFS), so a lock is never half written. A
lock left by a process that is gone (killed, its machine rebooted) on this same host is taken
over with a message; one held from another host is refused, and its message says which file
to delete if that host is known to be gone. ``s3://`` storage has no lock (see
:func:`lock_experiment`).

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as d, ExperimentLock(Path(d) / "exp", what="search") as lock:
...     (Path(d) / "exp" / "marktune.lock").exists()
True
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from marktune.results.files import LOCK_FILE, OWNER_FILE, SETTINGS_FILE, STATE_GLOB, is_remote
from marktune.tune.plan import PlanError


class ExperimentLocked(PlanError):
    """Another search or evaluation holds the experiment."""


@dataclass(frozen=True)
class LockHolder:
    """Who holds an experiment's lock, as its lock file says."""

    what: str  # "search" or "evaluation"
    host: str
    pid: int
    started: str  # when it took the lock, local time, ISO 8601
    command: str  # its command line
    token: str  # this holder's own id (a pid can be reused)
    process_start: str | None = None  # the holder process's start (Linux /proc), to tell a reused pid

    def describe(self) -> str:
        return f"a {self.what} (pid {self.pid} on host {self.host}, started {self.started}: `{self.command}`)"

    @classmethod
    def read(cls, path: Path) -> "LockHolder | None":
        """The holder in the lock file at ``path``; None when it is not one of ours (or unreadable)."""
        try:
            data = json.loads(path.read_text())
            return cls(what=str(data["what"]), host=str(data["host"]), pid=int(data["pid"]),
                       started=str(data["started"]), command=str(data.get("command", "")),
                       token=str(data["token"]), process_start=data.get("process_start"))
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def holder_alive(holder: LockHolder) -> bool:
    """Whether the holder's process still runs; only answerable on the holder's own host (True elsewhere)."""
    if holder.host != socket.gethostname():
        return True
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process with that pid: alive, unless a reused pid
        pass
    if holder.process_start is not None:
        now = _process_start(holder.pid)
        if now is not None and now != holder.process_start:
            return False  # the pid was reused by a later process
    return True


class ExperimentLock:
    """The lock of the experiment directory ``experiment_dir``; a context manager.

    :meth:`acquire` creates the directory when it is missing, and the storage above it (and
    :meth:`release` removes what it created again when nothing else was written there), so a command refused after taking the lock
    leaves the storage as it found it.
    """

    def __init__(self, experiment_dir: str | os.PathLike, *, what: str, command: str | None = None) -> None:
        self.directory = Path(experiment_dir)
        self.path = self.directory / LOCK_FILE
        self.what = what
        self.command = command if command is not None else " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
        self.holder: LockHolder | None = None
        self._created: list[Path] = []  # the directories acquire made, deepest first
        self.took_over: LockHolder | None = None  # the gone holder whose lock this one took over

    def acquire(self) -> "ExperimentLock":
        if self.holder is not None:
            return self
        if self.directory.exists() and not self.directory.is_dir():
            raise PlanError(f"{self.directory}: there is a file of that name, not an experiment directory; give "
                            "another --name (or --storage)")
        try:
            missing = self.directory.absolute()
            while not missing.exists() and missing != missing.parent:
                self._created.append(missing)
                missing = missing.parent
            self.directory.mkdir(parents=True, exist_ok=True)
            me = LockHolder(what=self.what, host=socket.gethostname(), pid=os.getpid(),
                            started=time.strftime("%Y-%m-%d %H:%M:%S %Z"), command=self.command,
                            token=uuid.uuid4().hex, process_start=_process_start(os.getpid()))
            tmp = self.directory / f".{LOCK_FILE}.{me.token}"
            with open(tmp, "w") as f:
                json.dump(asdict(me), f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            try:
                for _ in range(3):
                    try:
                        os.link(tmp, self.path)  # fails when a lock is there: never two holders
                        self.holder = me
                        return self
                    except FileExistsError:
                        self._refuse_or_clear()
                raise ExperimentLocked(f"{self.directory}: could not take the lock {self.path}: other commands "
                                       "keep taking it; try again")
            finally:
                tmp.unlink(missing_ok=True)
        except OSError as err:
            self._remove_created_dir()
            raise PlanError(f"{self.directory}: cannot write the experiment's lock file "
                            f"({err.strerror or err}); give a --storage that is a directory you can write to") from None
        except ExperimentLocked:
            self._remove_created_dir()
            raise

    def _refuse_or_clear(self) -> None:
        """The lock file is there: refuse, or set aside a gone holder's lock (then the caller retries)."""
        holder = LockHolder.read(self.path)
        if holder is None:
            if not self.path.exists():
                return  # released meanwhile
            raise ExperimentLocked(
                f"{self.directory}: its lock file {self.path} is not one marktune wrote, so it cannot tell "
                f"whether another command uses this experiment. If none does, delete {self.path}.")
        if holder_alive(holder):
            elsewhere = holder.host != socket.gethostname()
            clash = (f"a second search of it would mix its trials and files. Wait until that one ends, or give "
                     "another --name" if self.what == "search" else
                     f"an evaluation now would read trials that are not final and write into the same directory. "
                     f"Wait until that {holder.what} ends")
            raise ExperimentLocked(
                f"{self.directory}: {holder.describe()} holds this experiment; {clash}"
                + (f". If host {holder.host} is gone (and the {holder.what} with it), delete {self.path}"
                   if elsewhere else "") + ".")
        stale = self.path.with_name(f".{LOCK_FILE}.gone-{uuid.uuid4().hex}")
        try:
            os.rename(self.path, stale)
        except FileNotFoundError:
            return  # another command cleared it first
        moved = LockHolder.read(stale)
        if moved is None or moved.token != holder.token:  # not the lock judged gone: put it back
            try:
                os.link(stale, self.path)
            except FileExistsError:
                pass
            stale.unlink(missing_ok=True)
            return
        stale.unlink(missing_ok=True)
        self.took_over = holder
        print(f"[marktune] {self.directory}: took over the lock of {holder.describe()}: that process is gone "
              "(it was killed or its machine restarted); its trials resume with --resume", flush=True)

    def release(self) -> None:
        """Remove the lock file if it is still this command's."""
        if self.holder is None:
            return
        current = LockHolder.read(self.path)
        if current is not None and current.token == self.holder.token:
            self.path.unlink(missing_ok=True)
        self.holder = None
        self._remove_created_dir()

    def _remove_created_dir(self) -> None:
        for directory in self._created:
            marker = directory / OWNER_FILE  # the owner's mark alone is not a record: a refused start
            if marker.is_file() and [p.name for p in directory.iterdir()] == [OWNER_FILE]:
                marker.unlink(missing_ok=True)
            try:
                directory.rmdir()  # only when empty: nothing else was written
            except OSError:
                break
        self._created = []

    def __enter__(self) -> "ExperimentLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


class NoLock:
    """Stands in for the lock where there is none to take (remote storage)."""

    def acquire(self) -> "NoLock":
        return self

    def release(self) -> None:
        pass

    def __enter__(self) -> "NoLock":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def lock_experiment(storage: str, name: str, *, what: str, command: str | None = None) -> "ExperimentLock | NoLock":
    """The (taken) lock of experiment ``name`` in ``storage``; on s3:// storage none, with a note."""
    if is_remote(storage):
        print(f"[marktune] note: {storage} is remote storage, where marktune takes no lock: make sure no "
              f"other search or evaluation uses the experiment {name!r} at the same time", flush=True)
        return NoLock()
    return ExperimentLock(Path(storage) / name, what=what, command=command).acquire()


def lock_search_directory(path: str | os.PathLike, *, what: str, command: str | None = None) -> ExperimentLock | None:
    """The (taken) lock of the search directory at ``path``; None when ``path`` is not one (no
    settings, no Tune state: the caller refuses it, and a foreign directory gets no lock file)."""
    path = Path(path)
    if not (path.is_dir() and ((path / SETTINGS_FILE).is_file() or any(path.glob(STATE_GLOB)))):
        return None
    return ExperimentLock(path, what=what, command=command).acquire()
