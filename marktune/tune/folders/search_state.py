"""A search's state on --resume, read before Ray starts: whether there is anything left to run,
and whether its confirmation stage's record can be trusted (or is moved aside to be planned again).
"""
from __future__ import annotations

import csv
import shlex

from marktune.results.confirmation import CONFIRMATION_FILE, read_confirmation
from marktune.results.files import BEST_CONFIG_FILE, TRIALS_TABLE, is_remote
from marktune.tune.folders.output import move_aside
from marktune.tune.plan import PlanError, SearchPlan


def finished_words(plan: SearchPlan) -> str:
    """On --resume of a search that already ended (every trial in trials.csv ended, best_config.yaml
    written, its confirmation decided where it has one): what to say instead of starting Ray; ''
    otherwise."""
    root = plan.local_dir()
    if not plan.resume or is_remote(plan.storage) or not (root / BEST_CONFIG_FILE).is_file():
        return ""
    try:
        with open(root / TRIALS_TABLE, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return ""
    if len(rows) < plan.samples or any(r.get("status") not in ("COMPLETE", "PRUNED", "ERROR") for r in rows):
        return ""
    confirmation = read_confirmation(root)
    stage_left = confirmation is None or not confirmation.verdict.get("results")
    if plan.confirm_top and stage_left and any(r.get("status") == "COMPLETE" for r in rows):
        return ""  # the confirmation stage has still to run (or finish)
    return (f"experiment {root} has finished: all {len(rows)} trials ended"
            + (", and its confirmation stage" if confirmation is not None else "") + "; nothing to resume. Its "
            f"results: {root / TRIALS_TABLE}, {root / BEST_CONFIG_FILE}; the report: "
            f"{shlex.join(['python', '-m', 'marktune.report', str(root)])}")


def replan_or_check_confirmation(plan: SearchPlan, *, replan: bool) -> None:
    """On --resume, before Ray: the confirmation's record parses and holds together (its finalists
    are checked against the trials once they are read), or --replan-confirmation moves it aside."""
    if replan and not plan.resume:
        raise PlanError("--replan-confirmation goes with --resume --name <experiment>")
    if not plan.resume or is_remote(plan.storage) and not plan.local_dir().is_dir():
        return
    path = plan.local_dir() / CONFIRMATION_FILE
    if replan and path.exists():  # renamed, never deleted; a second one the same second gets a number
        aside = move_aside(path)
        print(f"[marktune] --replan-confirmation: moved {path} aside to {aside}; the stage is planned again", flush=True)
    read_confirmation(plan.local_dir())
