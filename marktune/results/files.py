"""The files of a search's experiment directory: their names, and the one reader of each.

An experiment directory (``<storage>/<name>``) holds, as Tune and the search write them:

* ``marktune_search.json`` (:data:`SETTINGS_FILE`): the search's settings (space, ``--set``,
  protocol, study); :func:`read_settings`.
* ``trial_<id>/`` (:data:`TRIAL_DIR_PREFIX`): ``params.json`` (:data:`PARAMS_FILE`, the trial's
  config, with the runtime settings under :data:`RUNTIME_KEY`) and ``result.json``
  (:data:`RESULT_FILE`: one JSON line per finished task); :func:`read_results`,
  :func:`parse_results`.
* ``experiment_state-*.json`` (:data:`STATE_GLOB`), ``trials.csv``, ``curves.csv``, ``best_config.yaml``.
* ``marktune.lock`` (:data:`LOCK_FILE`): while a search or an evaluation runs, who runs it
  (host, pid, start time; ``marktune.tune.folders.lock``).

Every file marktune itself writes goes through :func:`write_atomic` / :func:`atomic_output`: a
temporary file in the same folder, fsynced, then renamed over the old one, so a crash or a
full disk leaves the old file or the new one, never half of either. :func:`free_bytes` and
:func:`disk_full_message` say how full a folder is, in the words a full disk is reported in.

Example:
    >>> parse_results('{"tasks_done": 1, "mean_val_acc": 0.5}\\n{"tasks_done": 2, "mean_va')
    [{'tasks_done': 1, 'mean_val_acc': 0.5}]
    >>> last_per_task([{"tasks_done": 2, "v": 1}, {"tasks_done": 1}, {"tasks_done": 2, "v": 2}])
    [{'tasks_done': 1}, {'tasks_done': 2, 'v': 2}]
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from marktune.mark.metrics import TIME_ATTR

SETTINGS_FILE = "marktune_search.json"  # the search's settings, where the search writes them
RESULT_FILE = "result.json"  # a trial's reported results, one JSON line per finished task
PARAMS_FILE = "params.json"  # a trial's config, as Tune wrote it
TRIAL_DIR_PREFIX = "trial_"  # trial_<id>: one directory per trial
STATE_GLOB = "experiment_state-*.json"  # Tune's experiment state, one file per snapshot
TRIALS_TABLE = "trials.csv"  # written by the search at its end
CURVES_TABLE = "curves.csv"  # every trial's per-task curve, next to trials.csv (marktune.results.curves)
BEST_CONFIG_FILE = "best_config.yaml"  # the best complete trial, written by the search at its end
CHECKPOINT_TASKS_FILE = "tasks_done.json"  # in each trial checkpoint: {"tasks_done": N}, the tasks it holds
RUNTIME_KEY = "marktune_runtime"  # a trial config's runtime settings (as runners.mark_sequence reads them)
OWNER_FILE = ".marktune_owner"  # which command owns a folder (marktune.tune.folders.ownership)
LOCK_FILE = "marktune.lock"  # who runs a search or an evaluation of the experiment now (marktune.tune.folders.lock)
MIN_FREE_BYTES = 64 * 2**20  # a search refuses to start in a folder with less free space than this


# ---------------------------------------------------------------- writing
@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on a clean exit it is flushed, fsynced
    and renamed to ``path`` (the folder fsynced too). On an error (a full disk among them) the
    temporary file is removed, ``path`` is left as it was, and the error goes on.

    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "t.csv"
    >>> with atomic_output(target, newline="") as f:
    ...     _ = f.write("a,b\\n")
    >>> target.read_text(), sorted(p.name for p in target.parent.iterdir())
    ('a,b\\n', ['t.csv'])
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_output writes whole files ('w' or 'wb'), not mode {mode!r}")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(3)}.tmp")
    # created as open() would (0666 less the umask), not mkstemp's 0600
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_folder(path.parent)


def write_atomic(path: str | os.PathLike, data: str | bytes, *, encoding: str = "utf-8") -> Path:
    """Write ``data`` (text or bytes) to ``path`` through :func:`atomic_output`; returns the path."""
    if isinstance(data, bytes):
        with atomic_output(path, "wb") as f:
            f.write(data)
    else:
        with atomic_output(path, "w", encoding=encoding) as f:
            f.write(data)
    return Path(path)


def _fsync_folder(folder: Path) -> None:
    # the rename itself survives a power cut only once the folder is on disk
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------- a full disk
def is_disk_full(err: BaseException | None) -> bool:
    """Whether ``err`` (or an error it was raised from) is ENOSPC/EDQUOT: no space left."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(err) or "Errno 28" in str(err):
            return True  # pyarrow's and Ray's wrappers keep the OSError's text only
        err = err.__cause__ or err.__context__
    return False


def is_remote(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a URL (s3://, gs://, file://...) rather than a folder on this machine.

    >>> is_remote("s3://bucket/results"), is_remote("results/fmnist-1")
    (True, False)
    """
    return "://" in str(path)


def free_bytes(folder: str | os.PathLike) -> int | None:
    """Free bytes for an unprivileged writer in ``folder`` (its nearest existing parent); None
    when that cannot be told (an s3:// URL, an unreadable path)."""
    if is_remote(folder):
        return None
    path = Path(folder).expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def human_bytes(n: int | None) -> str:
    """``1.5 MiB``; '?' for None.

    >>> human_bytes(3 * 2**20 + 2**19), human_bytes(512), human_bytes(None)
    ('3.5 MiB', '512 B', '?')
    """
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def disk_full_message(folder: str | os.PathLike, *, resume: str | None = None) -> str:
    """The one message for a full disk: the folder, its free space, and what to do."""
    then = f"then `{resume}`" if resume else "then run the command again with --resume"
    return (f"the disk holding {folder} is full ({human_bytes(free_bytes(folder))} free; No space left on "
            f"device). What was written before stays as it was. Make room (or move the experiment: it is "
            f"relocatable), {then}")


# ---------------------------------------------------------------- reading
def read_settings(experiment_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The search's ``marktune_search.json`` as a dict, or None (none written, unreadable, not a mapping)."""
    try:
        data = json.loads((Path(experiment_dir) / SETTINGS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def parse_results(text: str) -> list[dict[str, Any]]:
    """The results in a ``result.json``'s text, in the order written: every JSON line that is a
    mapping with a task count. A torn last line (the writer killed mid-write) is skipped."""
    out = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and TIME_ATTR in record:
            out.append(record)
    return out


def read_results(path: str | os.PathLike) -> list[dict[str, Any]]:
    """:func:`parse_results` of the file at ``path``; [] when it cannot be read."""
    try:
        text = Path(path).read_text()
    except OSError:
        return []
    return parse_results(text)


def last_per_task(results: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One result per task, the last written, in task order.

    A retried trial (its worker lost) reports its tasks again from its checkpoint."""
    by_task: dict[int, dict[str, Any]] = {}
    for record in results:
        by_task[int(record[TIME_ATTR])] = record
    return [by_task[k] for k in sorted(by_task)]


def task_results(trial_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """A trial directory's results, one per task (:func:`last_per_task` of its ``result.json``)."""
    return last_per_task(read_results(Path(trial_dir) / RESULT_FILE))


def checkpoint_tasks(trial_dir: str | os.PathLike) -> int:
    """The tasks a trial directory's newest checkpoint holds (its ``tasks_done.json``); 0 when
    unknown (no checkpoint, or one written before checkpoints said so)."""
    for checkpoint in sorted(Path(trial_dir).glob("checkpoint_*"), reverse=True):
        try:
            return int(json.loads((checkpoint / CHECKPOINT_TASKS_FILE).read_text())["tasks_done"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return 0
