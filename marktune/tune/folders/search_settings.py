"""The settings a search started with (``marktune_search.json``), so ``--resume --name X`` needs nothing else.

Written once when a new search starts; read back by ``--resume`` (the command line fills in
the flags it names), by ``marktune.results.protocols`` (the protocol) and by
``marktune.tune.folders.study.study_of_experiment`` (the study). Local paths and ``s3://``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, MutableMapping

from marktune.results.files import SETTINGS_FILE, is_remote, write_atomic
from marktune.tune.plan import PlanError, SearchPlan
from marktune.tune.folders.study import hide_password

# what a resumed search takes from the experiment unless given again (and then must match)
# (Tune restores the sampled-trial count, the searcher and the RunConfig's FailureConfig itself)
KEPT_ON_RESUME = ("space", "overrides", "samples", "seed", "searcher", "n_startup_trials", "constant_liar", "scheduler",
                  "confirm_top", "confirm_seeds", "objectives", "max_failures", "reuse_actors", "protocol", "tuning_tasks")


def kept_flag(key: str) -> str:
    """The command-line flag of a :data:`KEPT_ON_RESUME` key (``space`` is ``--space`` too)."""
    return "--set" if key == "overrides" else f"--{key.replace('_', '-')}"


def kept_on_resume_in_words(*, space: str = "the space") -> str:
    """\"the space, --set, ... and --tuning-tasks\": what ``--resume`` keeps, for help and messages."""
    names = [space if key == "space" else kept_flag(key) for key in KEPT_ON_RESUME]
    return f"{', '.join(names[:-1])} and {names[-1]}"


def search_settings(plan: SearchPlan) -> dict[str, Any]:
    """What ``marktune_search.json`` holds for this plan."""
    space = plan.space_given
    if str(space).endswith((".yaml", ".yml")) or "/" in str(space):
        space = str(Path(plan.space.path).resolve())
    return {"space": space, "overrides": list(plan.override_flags), "samples": plan.samples, "seed": plan.seed,
            "searcher": plan.searcher, "n_startup_trials": plan.n_startup_trials,
            "constant_liar": plan.constant_liar, "scheduler": plan.scheduler,
            "confirm_top": plan.confirm_top, "confirm_seeds": plan.confirm_seeds,
            "objectives": ",".join(o.name for o in plan.objectives),
            "num_tasks": plan.num_tasks, "max_failures": plan.max_failures, "reuse_actors": plan.reuse_actors,
            # the study: None = the journal file in the experiment directory; a URL's password is
            # not written here (a resumed search then needs --optuna-storage again)
            "optuna_storage": plan.study_storage.describe() if plan.study_storage.url else None,
            "study_name": plan.name, **plan.search_protocol().to_settings()}


def save_settings(plan: SearchPlan, experiment: str) -> None:
    """Write ``marktune_search.json`` into the experiment directory ``experiment`` (a path or a URL)."""
    text = json.dumps(search_settings(plan), indent=1)
    if not is_remote(experiment):  # a temporary file, fsynced, renamed: never half a settings file
        Path(experiment).mkdir(parents=True, exist_ok=True)
        write_atomic(Path(experiment) / SETTINGS_FILE, text)
        return
    from pyarrow import fs as pafs

    filesystem, path = pafs.FileSystem.from_uri(experiment)
    filesystem.create_dir(path, recursive=True)
    with filesystem.open_output_stream(f"{path}/{SETTINGS_FILE}") as f:
        f.write(text.encode())


def load_settings(storage: str, name: str) -> dict[str, Any] | None:
    """The settings of experiment ``name`` in ``storage``; None where there are none."""
    from pyarrow import fs as pafs

    if not is_remote(storage):
        storage = str(Path(storage).expanduser().resolve())
    try:
        filesystem, path = pafs.FileSystem.from_uri(f"{storage.rstrip('/')}/{name}")
        with filesystem.open_input_stream(f"{path}/{SETTINGS_FILE}") as f:
            return json.loads(f.readall())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- --resume takes them back
def take_saved_settings(values: MutableMapping[str, Any], given: set[str]) -> None:
    """On --resume, set in ``values`` (the command line's flags by destination; ``given``: those
    actually on it) the settings the experiment started with (``KEPT_ON_RESUME``: the space,
    --set, --samples, --seed, the searcher and scheduler flags, --max-failures, --reuse-actors,
    the protocol), and its --optuna-storage.

    Tune restores the number of trials, the searcher and the failure settings from the
    experiment anyway, so a different value on resume would be silently ignored: refuse it.
    """
    if not values.get("resume") or not values.get("name"):
        return
    saved = load_settings(values["storage"], values["name"])
    if saved is None:
        return
    name = values["name"]
    # a search from before --objectives optimised val_acc alone: it cannot be resumed as another study
    saved = {"objectives": "val_acc", **saved}
    for key in KEPT_ON_RESUME:
        if key not in saved:
            continue
        if key not in given:
            values[key] = saved[key]
            continue
        mine = values[key]
        if key == "space" and (str(mine).endswith((".yaml", ".yml")) or "/" in str(mine)):
            mine = str(Path(mine).resolve())
        if key == "objectives" and mine is not None:
            mine = ",".join(n.strip() for n in str(mine).split(","))
        if mine != saved[key]:
            flag = kept_flag(key)
            if isinstance(saved[key], bool):  # --reuse-actors / --no-reuse-actors
                was, now = (f"--{'' if v else 'no-'}{flag[2:]}" for v in (saved[key], mine))
            else:
                was, now = f"{flag} {saved[key]!r}", repr(values[key])
            raise PlanError(f"--resume: experiment {name!r} was started with {was}, not {now}; a resumed "
                            f"search keeps {kept_on_resume_in_words(space='its space')} (leave the flag out)")
    _resume_study_storage(values, saved.get("optuna_storage"), given="optuna_storage" in given)


def _resume_study_storage(values: MutableMapping[str, Any], saved: str | None, *, given: bool) -> None:
    """The study's storage on --resume: the one the search started with."""
    name = values["name"]
    if not given:
        if saved and "***" in saved:
            raise PlanError(f"--resume: experiment {name!r} keeps its Optuna study in {saved}; give "
                            "--optuna-storage again with the password (it is not written to the experiment)")
        values["optuna_storage"] = saved
        return
    given_url = hide_password(values["optuna_storage"])
    if given_url != (saved or None):
        raise PlanError(f"--resume: experiment {name!r} keeps its Optuna study in "
                        f"{saved or 'the journal file in its directory'}, not {given_url}; "
                        "leave --optuna-storage out (or give that one)")
