"""The experiment directory's own pre-flight checks, and a full disk while the search runs.

* :func:`check_experiment` (called once by ``marktune.tune.runs.launch.check_search``, before Ray):
  the storage folder has at least :data:`~marktune.results.files.MIN_FREE_BYTES` free, and on
  ``--resume`` the directory is one that marktune's settings file (``marktune_search.json``)
  identifies as this study's search, checked before Tune unpickles anything of it
  (:func:`check_resumable`). (The study's journal is checked by
  :meth:`marktune.tune.folders.study.StudyStorage.check`.)
* :func:`missing_results`: on ``--resume``, the trials whose ``result.json`` lacks tasks that
  their newest checkpoint holds.
* :func:`keep_state` / :func:`restore_kept_state`: the last whole copy of Tune's own state files
  (see :mod:`marktune.tune.folders.state_keeper`), put back on ``--resume`` in place of one cut short.
* :class:`DiskFull`: what the search raises instead of hundreds of lines of tracebacks when
  the disk fills up while it runs (:func:`disk_full_of`).
"""
from __future__ import annotations

import json
import os
import pickletools
import shlex
import time
from pathlib import Path

from marktune.results.files import (MIN_FREE_BYTES, RESULT_FILE, SETTINGS_FILE, TRIAL_DIR_PREFIX, checkpoint_tasks,
                                    disk_full_message, free_bytes, human_bytes, is_disk_full, is_remote,
                                    read_results, write_atomic)
from marktune.tune.plan import PlanError, SearchPlan


KEPT_DIR = ".marktune_state"  # in the experiment directory: the last whole copy of each Tune state file
TUNE_STATE_PATTERNS = ("experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl", "tuner.pkl")


class DiskFull(SystemExit):
    """The disk holding the experiment filled up while the search ran; the message says what to do.

    A SystemExit: raised out of the search's run, it ends the command with this one message
    (``error: ...``) and exit status 1, past every handler of ordinary errors on the way.
    """

    def __init__(self, message: str) -> None:
        super().__init__(f"error: {message}")
        self.message = message

    def __str__(self) -> str:
        return self.message


def check_experiment(plan: SearchPlan) -> None:
    """Free space in the storage folder. Reads only: what reads and repairs the experiment runs
    once its lock is held (:func:`restore_experiment`)."""
    check_free_space(plan.storage)


def restore_experiment(plan: SearchPlan) -> None:
    """On --resume (under the experiment's lock): the settings file must identify the experiment,
    then the whole copies of Tune's state files a full disk cut short are put back."""
    if plan.resume:
        check_resumable(plan.storage, plan.name)
    if plan.resume and not is_remote(plan.storage):
        for note in restore_kept_state(plan.local_dir()):
            print(f"[marktune] {note}", flush=True)


def check_free_space(storage: str, *, minimum: int | None = None) -> None:
    """Refuse a local storage folder with less than ``minimum`` bytes free (default
    :data:`~marktune.results.files.MIN_FREE_BYTES`; s3:// is not checked)."""
    minimum = MIN_FREE_BYTES if minimum is None else minimum
    free = free_bytes(storage)
    if free is not None and free < minimum:
        raise PlanError(f"--storage {storage}: only {human_bytes(free)} free on its disk; a search needs at "
                        f"least {human_bytes(minimum)} (checkpoints, the study's journal, Tune's state). "
                        "Make room, or give --storage on a bigger disk")


def check_resumable(storage: str, name: str) -> None:
    """Raise PlanError unless ``<storage>/<name>`` holds a ``marktune_search.json`` that parses
    and names the study ``name``: Tune's pickles (experiment state, searcher state) are restored
    only from a directory marktune's own settings file identifies."""
    from marktune.tune.folders.search_settings import load_settings

    where = f"{storage.rstrip('/')}/{name}"
    settings = load_settings(storage, name)
    why = None
    if settings is None:
        why = f"it has no readable {SETTINGS_FILE} (the file every marktune search writes when it starts)"
    elif not isinstance(settings.get("study_name"), str) or "space" not in settings:
        why = f"its {SETTINGS_FILE} is not a marktune search's settings (no 'study_name' and 'space')"
    elif settings["study_name"] != name:
        raise PlanError(f"--resume: {where} was started as the search {settings['study_name']!r} (its "
                        f"{SETTINGS_FILE} says so), not {name!r}: a renamed experiment cannot continue its study. "
                        f"Give it its name back (a folder named {settings['study_name']!r}) and resume that")
    if why:
        raise PlanError(f"--resume: {where} is not an experiment marktune can resume: {why}. Tune's pickled "
                        "state in it is not loaded (unpickling runs code); resume only experiments a marktune "
                        "search made, or start a new --name")


def disk_full_of(err: BaseException, plan: SearchPlan) -> DiskFull | None:
    """The :class:`DiskFull` to raise for ``err`` when it is a full disk, else None."""
    if not is_disk_full(err):
        return None
    return DiskFull(disk_full_message(plan.local_dir() if not is_remote(plan.storage) else plan.experiment,
                                      resume=resume_words(plan)))


def resume_words(plan: SearchPlan) -> str:
    """The command that continues the search, shell-quoted: it runs as printed."""
    words = ["python", "-m", "marktune.search", "--resume", "--name", plan.name, "--storage", plan.storage]
    if plan.study_storage.url:
        words += ["--optuna-storage", plan.study_storage.describe()]
    return shlex.join(words)


def missing_results(experiment_dir: str | Path, *, ended: bool = False,
                    unfinished: frozenset[str] = frozenset()) -> list[tuple[str, list[int], int]]:
    """(trial id, the task numbers its result.json lacks, tasks its checkpoint holds) for each
    trial whose recorded results are missing or shorter than its checkpoint.

    Before a resumed run (``ended=False``) the newest checkpoint's own task is not asked for:
    after Ctrl-C it may be one Tune never registered, and that task then runs again and is
    recorded. After the run (``ended=True``) every task up to the furthest one is, but for the
    ``unfinished`` trials (cut short by Ctrl-C or SIGTERM), whose newest checkpoint's task
    ``--resume`` runs again and records, as before a resumed run.
    """
    out = []
    root = Path(experiment_dir)
    for trial in sorted(root.glob(f"{TRIAL_DIR_PREFIX}*")):
        held = checkpoint_tasks(trial)  # 0 for checkpoints written before they said their task count
        recorded = {int(r["tasks_done"]) for r in read_results(trial / RESULT_FILE)}
        tid = trial.name.removeprefix(TRIAL_DIR_PREFIX)
        last = max([held, *recorded]) if ended and tid not in unfinished else held - 1
        lost = [t for t in range(1, last + 1) if t not in recorded]
        if lost:
            out.append((tid, lost, held))
    return out


def missing_results_note(experiment_dir: str | Path, *, ended: bool = False,
                         unfinished: frozenset[str] = frozenset()) -> str:
    """A line naming every trial whose recorded results lack tasks of its checkpoint, or ''."""
    from marktune.results.experiment import task_ranges

    missing = missing_results(experiment_dir, ended=ended, unfinished=unfinished)
    if not missing:
        return ""
    parts = [f"{tid} (tasks {task_ranges(lost)}; its checkpoint holds {held})" for tid, lost, held in missing]
    return ("result.json rows are missing for " + ", ".join(parts) + ": those tasks' results are lost (a "
            "deleted or cut result.json; the trial continues from its checkpoint, and the report and trials.csv "
            "show the recorded tasks, each at its own task number)")


# ---------------------------------------------------------------- Tune's state files, kept whole
def whole(path: Path) -> bool:
    """Whether a Tune state file is complete: JSON that parses, or a pickle whose opcodes run to
    its STOP (read with pickletools: nothing in it is executed)."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if not data:
        return False
    try:
        json.loads(data)
        return True
    except ValueError:  # UnicodeDecodeError too; Tune's search_gen_state-*.json is a pickle
        pass
    try:
        for _ in pickletools.genops(data):
            pass
    except Exception:  # noqa: BLE001 - pickletools' own errors on a cut pickle
        return False
    return True


def tune_state_files(experiment_dir: Path) -> list[Path]:
    return sorted(p for pattern in TUNE_STATE_PATTERNS for p in Path(experiment_dir).glob(pattern) if p.is_file())


def keep_state(experiment_dir: Path) -> int:
    """Copy each whole Tune state file that changed into ``KEPT_DIR``; how many were copied."""
    kept = Path(experiment_dir) / KEPT_DIR
    copied = 0
    for path in tune_state_files(experiment_dir):
        target = kept / path.name
        try:
            if target.is_file() and target.stat().st_mtime >= path.stat().st_mtime:
                continue
            if not whole(path):
                continue
            kept.mkdir(exist_ok=True)
            write_atomic(target, path.read_bytes())
            os.utime(target, (path.stat().st_atime, path.stat().st_mtime))
            copied += 1
        except OSError:  # a full disk: the kept copy stays as it was
            continue
    return copied


def restore_kept_state(experiment_dir: Path) -> list[str]:
    """Put the kept copy back for each Tune state file that is cut short; one line per file
    (the cut file is set aside as ``<name>.torn-<UTC time>``). Files without a copy stay."""
    experiment_dir = Path(experiment_dir)
    notes = []
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for path in tune_state_files(experiment_dir):
        if whole(path):
            continue
        copy = experiment_dir / KEPT_DIR / path.name
        if not whole(copy):
            notes.append(f"Tune's {path.name} in {experiment_dir} is cut short and has no whole copy; "
                         "Tune may refuse to resume")
            continue
        aside = path.with_name(f"{path.name}.torn-{stamp}")
        os.replace(path, aside)
        write_atomic(path, copy.read_bytes())
        notes.append(f"Tune's {path.name} was cut short ({aside.stat().st_size} bytes, a crash or a full disk "
                     f"mid-write; set aside as {aside.name}): put back its last whole copy, so the search "
                     "resumes from a few seconds before it stopped")
    return notes
