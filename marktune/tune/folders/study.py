"""Where a search's Optuna study lives, and reading it back (no Ray needed).

:class:`StudyStorage` is a JournalStorage file (``<experiment>/optuna_journal.log`` by default:
one JSON line per change, safe on a shared filesystem) or any SQLAlchemy URL
(``sqlite:///marktune.db``, ``postgresql://user@host/db``). :meth:`StudyStorage.check` finds a
malformed or unreachable one in seconds, before Ray starts. The study is named after the
experiment. ``optuna-dashboard <storage>`` watches it while the search runs.

Example:
    >>> import optuna, tempfile, pathlib
    >>> journal = pathlib.Path(tempfile.mkdtemp()) / "optuna_journal.log"
    >>> storage = StudyStorage(journal=journal)
    >>> study = optuna.create_study(study_name="demo", storage=storage.open(), direction="maximize")
    >>> study.add_trial(optuna.trial.create_trial(value=0.9, params={}, distributions={}))
    >>> [t.value for t in open_study(storage, "demo").trials]
    [0.9]
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from marktune.results.files import read_settings

if TYPE_CHECKING:
    import optuna

JOURNAL_FILE = "optuna_journal.log"  # in the experiment directory, unless --optuna-storage says otherwise
CONNECT_TIMEOUT_S = 3.0  # a database that does not answer within this is reported as unreachable
# Printed next to every ``optuna-dashboard`` command line: the set-up does not install it (the
# machine that runs the search is often not the one whose browser watches it). Same pin as the
# ``dashboard`` extra in pyproject.toml.
DASHBOARD_INSTALL = "pip install optuna-dashboard==0.21.0"


class StorageError(ValueError):
    """The Optuna storage flag is malformed, unreachable or holds a clashing study."""


class JournalError(StorageError):
    """The study's journal file is damaged where it cannot be repaired without losing records."""


# ---------------------------------------------------------------- the journal file
def repair_journal(path: Path) -> str | None:
    """Set aside a torn last line of the Optuna journal at ``path``; a message saying what was
    lost, or None when the journal is whole. Raise :class:`JournalError` for a damaged line
    that is not the last (nothing is changed then).

    A crash or a full disk mid-append leaves a last line without its newline (or one that is
    not JSON). Optuna skips it on read, but its next append glues onto it, and from then on
    every read of the journal fails. The torn bytes go to ``<journal>.torn-<UTC time>`` beside
    it and the journal is cut back to its last whole line, under Optuna's own lock of the
    file (a search appending to it at this moment finishes its line first).
    """
    from optuna.storages.journal import JournalFileSymlinkLock

    path = Path(path)
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        with open(path, "rb") as f:
            data = f.read()
        if not data:
            return None
        lines = data.splitlines(keepends=True)
        for number, line in enumerate(lines[:-1], start=1):
            if not _journal_record(line):
                raise JournalError(
                    f"the study's journal {path} is damaged at line {number} of {len(lines)} (not a JSON "
                    f"record: {line[:60]!r}); it was not changed. Lines after it are records Optuna cannot "
                    "read past. Restore the file from a backup, or move the experiment aside and start a "
                    "new --name")
        last = lines[-1]
        if last.endswith(b"\n") and _journal_record(last):
            return None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = path.with_name(f"{path.name}.torn-{stamp}")
        for n in range(2, 1000):  # never over an earlier one
            if not aside.exists():
                break
            aside = path.with_name(f"{path.name}.torn-{stamp}-{n}")
        with open(aside, "xb") as f:
            f.write(last)
            f.flush()
            os.fsync(f.fileno())
        with open(path, "r+b") as f:
            f.truncate(len(data) - len(last))
            f.flush()
            os.fsync(f.fileno())
    finally:
        lock.release()
    why = ("it has no newline: the search stopped mid-write (a crash, a kill or a full disk)"
           if not last.endswith(b"\n") else "it is not a JSON record (a write cut short, then appended to)")
    return (f"the study's journal {path} ended in a torn record (line {len(lines)}, {len(last)} bytes; {why}). "
            f"That one record (one change to the study: a trial's start, a value or its end) is lost; it "
            f"was set aside in {aside} and the journal cut back to its {len(lines) - 1} whole records, so "
            "the search can append to it again.")


def _journal_record(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:  # UnicodeDecodeError is one too
        return False


# ---------------------------------------------------------------- where the study lives
@dataclass(frozen=True)
class StudyStorage:
    """A JournalStorage file or a database URL (exactly one).

    ``url`` is what the user typed (``--optuna-storage``); ``journal`` a file path.
    """

    url: str | None = None
    journal: Path | None = None

    def __post_init__(self) -> None:
        if (self.url is None) == (self.journal is None):
            raise ValueError("StudyStorage needs exactly one of url= and journal=")

    @classmethod
    def for_experiment(cls, *, experiment_dir: Path, url: str | None) -> "StudyStorage":
        """``url`` when given (a relative SQLite path made absolute, so --resume works from
        another folder), else the journal file in the experiment directory."""
        return cls(url=_absolute_sqlite(url)) if url else cls(journal=Path(experiment_dir).resolve() / JOURNAL_FILE)

    def describe(self) -> str:
        """What to give ``optuna-dashboard`` (a journal file path or the URL, password hidden)."""
        return str(self.journal) if self.journal is not None else hide_password(self.url)

    def dashboard_command(self) -> str:
        """The ``optuna-dashboard`` line to type, with how to install it.

        >>> StudyStorage(url="postgresql://me:secret@db/studies").dashboard_command()
        'optuna-dashboard postgresql://me:***@db/studies  (not installed? pip install optuna-dashboard==0.21.0)'
        """
        return f"optuna-dashboard {self.describe()}  (not installed? {DASHBOARD_INSTALL})"

    def open(self) -> "optuna.storages.BaseStorage":
        import optuna
        from optuna.storages.journal import JournalFileBackend

        if self.journal is not None:
            self.journal.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(str(self.journal)))
        return optuna.storages.RDBStorage(self.url, engine_kwargs=_engine_kwargs(self.url))

    def _flag(self) -> str:
        return (f"--optuna-storage {self.describe()}" if self.url is not None
                else f"the experiment's study journal {self.journal}")

    def check_reachable(self) -> None:
        """Raise StorageError when a URL is malformed, its folder missing or its host unreachable
        (a probe that gives up after CONNECT_TIMEOUT_S). Nothing is created."""
        if self.url is not None:
            _check_url(self.url)

    def check(self, *, study_name: str, resume: bool) -> None:
        """Raise StorageError unless the storage opens, and holds the study exactly when resuming.

        Runs in seconds (network probes time out after CONNECT_TIMEOUT_S); call it before Ray.
        A journal file that does not exist yet is not created here.
        """
        if self.journal is not None and self.journal.exists() and not self.journal.is_file():
            raise StorageError(f"the study's journal {self.journal} is not a file; move it aside (the search "
                               "keeps its Optuna study in that file)")
        if self.journal is not None and not self.journal.is_file():
            return  # created with the study; the experiment directory's own checks come first
        if self.journal is not None:
            note = repair_journal(self.journal)  # before Optuna reads (or appends to) it
            if note:
                print(f"[marktune] {note}", file=sys.stderr, flush=True)
        self.check_reachable()
        try:
            names = {s.study_name for s in self.open().get_all_studies()}
        except ImportError as err:
            raise StorageError(f"--optuna-storage {self.describe()}: the database driver is not installed "
                               f"({_first_line(err.__cause__ or err)}); install it (e.g. 'psycopg[binary]' for "
                               "postgresql://, pymysql with mysql+pymysql://)") from None
        except Exception as err:  # noqa: BLE001 - SQLAlchemy, driver and file errors of every kind
            raise StorageError(f"{self._flag()}: cannot open it "
                               f"({type(err).__name__}: {_first_line(err)})") from None
        if resume and study_name not in names and self.url is not None:
            raise StorageError(f"--optuna-storage {self.describe()} has no study {study_name!r} to resume "
                               f"(it has: {', '.join(sorted(names)) or 'none'}); give the storage the "
                               "search started with")
        if not resume and study_name in names:
            raise StorageError(f"{self._flag()} already holds a study {study_name!r}; "
                               "give a new --name, or --resume to continue that search")


def open_study(storage: StudyStorage, study_name: str, *, sampler=None) -> "optuna.Study":
    """The study as it is in its storage now (raises KeyError when there is none)."""
    import optuna

    return optuna.load_study(study_name=study_name, storage=storage.open(), sampler=sampler)


def _check_url(url: str) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StorageError(f"--optuna-storage {url!r} is not a database URL; give one SQLAlchemy takes, "
                           "e.g. sqlite:///marktune.db or postgresql://user:password@host:5432/db "
                           "(leave the flag out for a journal file in the experiment directory)") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            folder = Path(parsed.database).expanduser().resolve().parent
            if not folder.is_dir():
                raise StorageError(f"--optuna-storage {url}: the folder {folder} does not exist; create it "
                                   "or give another path")
        elif not parsed.database or parsed.database == ":memory:":
            raise StorageError(f"--optuna-storage {url}: an in-memory database dies with the driver; "
                               "give a file, e.g. sqlite:///marktune.db")
        return
    if parsed.host:
        port = parsed.port or {"postgresql": 5432, "mysql": 3306, "mariadb": 3306}.get(backend)
        if port is not None:
            try:
                with socket.create_connection((parsed.host, int(port)), timeout=CONNECT_TIMEOUT_S):
                    pass
            except OSError as err:
                raise StorageError(f"--optuna-storage {hide_password(url)}: cannot reach {parsed.host}:{port} "
                                   f"({err}). Is the database up and reachable from this machine?") from None
    try:  # imports the database driver, connects to nothing
        from sqlalchemy import create_engine

        create_engine(url).dispose()
    except ImportError as err:
        raise StorageError(f"--optuna-storage {hide_password(url)}: the database driver is not installed ({err}); "
                           "install it (e.g. 'psycopg[binary]' for postgresql://, pymysql with "
                           "mysql+pymysql://)") from None
    except Exception as err:  # noqa: BLE001 - e.g. an unknown dialect
        raise StorageError(f"--optuna-storage {hide_password(url)}: {type(err).__name__}: {_first_line(err)}") from None


def _absolute_sqlite(url: str) -> str:
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url[len(prefix):] not in ("", ":memory:"):
        return prefix + str(Path(url[len(prefix):]).expanduser().resolve())
    return url


def _engine_kwargs(url: str) -> dict[str, Any]:
    # a database that stops answering must not hang the driver for minutes
    backend = url.split(":", 1)[0].split("+", 1)[0]
    if backend in ("postgresql", "mysql", "mariadb"):
        return {"connect_args": {"connect_timeout": int(CONNECT_TIMEOUT_S)}}
    return {}


def hide_password(url: str | None) -> str:
    if not url:
        return ""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL: shown as typed
        return url


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else ""


def study_of_experiment(experiment_dir: Path, *, url: str | None = None) -> tuple["optuna.Study | None", str]:
    """(the search's study or None, where it was read from or why there is none).

    The search's ``marktune_search.json`` names the study and its storage (none: the journal
    file in the experiment directory). ``url`` overrides the storage (a database whose
    password the experiment does not keep).
    """
    experiment_dir = Path(experiment_dir)
    settings = read_settings(experiment_dir) or {}
    name = settings.get("study_name") or experiment_dir.name
    url = url or settings.get("optuna_storage")
    if url and "***" in url:
        return None, f"the study is in {url}; give --optuna-storage with the password to read it"
    storage = StudyStorage.for_experiment(experiment_dir=experiment_dir, url=url)
    if storage.journal is not None and not storage.journal.is_file():
        return None, f"no {JOURNAL_FILE} in {experiment_dir} (a search made before marktune kept its study there?)"
    try:
        study = open_study(storage, name)
    except KeyError:
        return None, f"{storage.describe()} has no study {name!r}"
    except Exception as err:  # noqa: BLE001 - an unreachable database is reported, not fatal
        return None, f"{storage.describe()} cannot be read ({type(err).__name__}: {_first_line(err)})"
    return study, f"study {name!r} in {storage.describe()}"


def param_importances(study: "optuna.Study") -> tuple[dict[str, float] | None, str]:
    """(the study's parameter importances or None, a sentence saying how they were computed or why none)."""
    import optuna
    from optuna.trial import TrialState

    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if len(complete) < 2:
        return None, (f"Too few complete trials for parameter importances: {len(complete)} of "
                      f"{len(study.trials)} trials ran every task (at least 2 are needed; more make them meaningful).")
    try:
        values = optuna.importance.get_param_importances(study)
    except Exception as err:  # noqa: BLE001 - e.g. every complete trial has the same settings
        return None, f"Optuna could not compute parameter importances: {type(err).__name__}: {err}"
    if not values:
        return None, "Optuna returned no importances (no setting varies across the complete trials)."
    note = (f"fANOVA importances over {len(complete)} complete trials (of {len(study.trials)}); "
            "with few trials they are rough.")
    return dict(values), note
