"""Ray Tune's checkpoints for the search and the evaluation, and what Tune left on disk.

(The environment Tune reads when a Tuner is built is set in :mod:`marktune.tune.runs.launch`.)

* :func:`keep_every_checkpoint` / :func:`prune_checkpoints`: the checkpoint policy (every
  checkpoint while trials run, the newest only afterwards).
* :func:`last_trial_states`: each trial's status and config in the newest experiment state.

Works on local paths and ``s3://`` (through pyarrow's filesystems).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from marktune.results.files import RESULT_FILE, is_remote, parse_results


def last_trial_states(experiment: str) -> dict[str, dict]:
    """Trial id -> ``{"status": ..., "config": ...}`` in the newest ``experiment_state-*.json``.

    Tune saves that state once more after its loop ends and before it stops the trials, so
    after Ctrl-C it still says RUNNING/PENDING for the trials that were cut short (the Trial
    objects Tune returns say TERMINATED for those: stopping them is how Tune cleans up).
    """
    import json

    from pyarrow import fs as pafs

    filesystem, root = pafs.FileSystem.from_uri(experiment if is_remote(experiment) else str(Path(experiment).resolve()))
    states = sorted(info.path for info in filesystem.get_file_info(pafs.FileSelector(root, allow_not_found=True))
                    if info.base_name.startswith("experiment_state-") and info.base_name.endswith(".json"))
    if not states:
        return {}
    with filesystem.open_input_stream(states[-1]) as f:
        data = json.loads(f.readall())
    out = {}
    for item in data.get("trial_data") or []:
        try:
            info = json.loads(item[0])
        except (TypeError, ValueError, IndexError):
            continue
        config = info.get("config")
        out[str(info.get("trial_id"))] = {"status": str(info.get("status")),
                                          "config": config if isinstance(config, dict) else {}}
    return out


# While trials run, no checkpoint is deleted. With CheckpointConfig(num_to_keep=N), Tune deletes a
# trial's older checkpoint when it registers a new one and only then snapshots the experiment
# state: a driver killed in between leaves a state that points at a deleted checkpoint, and on
# --resume that trial fails ("Could not recover from checkpoint", seen in CI). Instead the state
# is snapshotted every second (TUNE_GLOBAL_CHECKPOINT_S, in marktune.tune.runs.launch.prepare_tune), so a resumed trial
# may redo the tasks of its last second (deterministically, the same rows), and
# prune_checkpoints() removes the older checkpoints once the run is over.
def keep_every_checkpoint():
    from ray import tune

    return tune.CheckpointConfig(num_to_keep=None)


def prune_checkpoints(experiment: str) -> int:
    """Delete every trial's checkpoints but its newest (search trials, evaluation runs and confirmation
    runs); returns how many were deleted.

    Call only when no trial of the experiment runs (after ``Tuner.fit``): the experiment state
    Tune saved last points at each trial's newest checkpoint. Works on local paths and ``s3://``.
    """
    from pyarrow import fs as pafs

    filesystem, root = pafs.FileSystem.from_uri(experiment)
    deleted = 0
    for trial in filesystem.get_file_info(pafs.FileSelector(root, allow_not_found=True)):
        if trial.type != pafs.FileType.Directory or not trial.base_name.startswith(("trial_", "run_", "confirm_")):
            continue
        checkpoints = sorted(info.path for info in filesystem.get_file_info(pafs.FileSelector(trial.path))
                             if info.type == pafs.FileType.Directory
                             and info.base_name.startswith("checkpoint_"))
        for path in checkpoints[:-1]:  # checkpoint_000000, _000001, ...: the last is the newest
            filesystem.delete_dir(path)
            deleted += 1
    return deleted


def reported_results(trial) -> list[dict[str, Any]]:
    """What a Tune trial reported so far: its ``result.json`` lines (driver copy, else storage)."""
    if not getattr(trial, "has_reported_at_least_once", True):
        return []  # a new trial (it has no directory yet), or a restored one that never reported
    texts = []
    try:
        texts.append((Path(trial.local_path) / RESULT_FILE).read_text())
    except (OSError, RuntimeError, TypeError):  # no driver copy (RuntimeError: no directory name yet)
        try:
            filesystem = trial.storage.storage_filesystem
            with filesystem.open_input_stream(f"{trial.path}/{RESULT_FILE}") as f:
                texts.append(f.readall().decode())
        except Exception:  # noqa: BLE001 - nothing reported anywhere
            pass
    return parse_results("".join(texts))
