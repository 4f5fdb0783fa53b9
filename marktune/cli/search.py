"""The search service: ``python -m marktune.search --space NAME`` (also ``marktune search``).

Ray Tune runs one trial per configuration (a whole MARK sequence, see
``runners/mark_sequence.py``); Optuna proposes configurations (TPE, or at random with
``--searcher random``); ASHA stops weak trials on the mean validation accuracy reported after
every task (none with ``--scheduler none``: every trial runs to its last task). At the end: a
table of the best trials, ``best_config.yaml`` (runnable with ``python -m marktune.run
--config``), ``trials.csv`` and ``curves.csv`` (every trial's value after every task);
TensorBoard compares all trials.

This module is the command line: parse the flags (shared ones in :mod:`marktune.cli.flags`),
build the typed plan (:class:`marktune.tune.plan.SearchPlan`), check it and start Ray
(:mod:`marktune.tune.runs.launch`), run it (:mod:`marktune.tune.runs.search_run`), print the
end-of-run summary (rows and files from :mod:`marktune.results.summary`).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Sequence

from marktune.cli import flags
from marktune.mark.config import ConfigError, parse_overrides
from marktune.cli.signals import INTERRUPTED, sigterm_as_interrupt
from marktune.results.confirmation import CONFIRMATION_FILE, ConfirmationError
from marktune.results.curves import write_search_curves
from marktune.results.files import CURVES_TABLE, is_remote
from marktune.results.objectives import ObjectiveError, parse_objectives
from marktune.results.node_moves import experiment_moves, node_loss_note
from marktune.results.summary import (TrialRow, cheapest_sentence, format_front, format_table, mark_confirmed,
                                      mark_fronts, mark_ties, trial_rows, unfinished, write_outputs)
from marktune.tune.runs.confirmation_run import ConfirmationRun, confirm
from marktune.tune.folders.lock import lock_experiment
from marktune.tune.runs.launch import check_search, open_experiment, shutdown_ray, start_ray
from marktune.tune.runs.preflight import (check_address, check_cluster_resources, check_local_resources, check_optuna_storage,
                                     check_ray_flags)
from marktune.tune.plan import (DEFAULT_STORAGE, PlanError, SearchPlan, check_name, check_protocol, check_seed,
                                check_stage_size, check_trial_resources, local_experiment_dir, trial_threads)
from marktune.tune.folders.search_state import finished_words, replan_or_check_confirmation
from marktune.tune.runs.search_run import SearchRun, run_search
from marktune.tune.folders.search_settings import kept_on_resume_in_words, take_saved_settings
from marktune.tune.spaces import SpaceError, available_spaces, load_space
from marktune.tune.strategy.strategies import SAMPLERS, SCHEDULERS, flag_help
from marktune.tune.folders.study import DASHBOARD_INSTALL, JOURNAL_FILE, StudyStorage
from marktune.tune.runs.tune_setup import prune_checkpoints
from runners.runtime import TrialRuntime

SearchError = PlanError  # what a search's bad flag or environment raises (the name its callers know)


# ---------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m marktune.search",
        description="Search MARK's hyperparameters with Ray Tune and Optuna (TPE or random search), "
                    "stopping weak trials with ASHA (or not at all).",
        epilog="Examples:\n"
               "  python -m marktune.search --space fmnist                 # minutes on a laptop CPU\n"
               "  python -m marktune.search --space cifar100 --address auto --storage s3://bucket/marktune\n"
               "  python -m marktune.search --space fmnist --resume --name fmnist-20261123-190000\n"
               "  python -m marktune.search --space fmnist --optuna-storage sqlite:///marktune.db\n"
               "Then: tensorboard --logdir <storage>/<name>; optuna-dashboard <storage>/<name>/optuna_journal.log\n"
               f"  (optuna-dashboard is not installed by the set-up: {DASHBOARD_INSTALL})",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("the search")
    g.add_argument("--space", default="fmnist", metavar="NAME|FILE",
                   help=f"search space: one of {', '.join(available_spaces())}, or a path to a .yaml "
                        "(default: fmnist)")
    g.add_argument("--samples", type=int, metavar="N", help="trials to run (default: the space's)")
    g.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the sampler (trials use the space's seed)")
    g.add_argument("--searcher", choices=list(SAMPLERS),
                   help=f"who proposes the trials, an Optuna sampler: {flag_help(SAMPLERS)} (default: the "
                        "space's, else tpe; docs/search.md)")
    g.add_argument("--constant-liar", action=argparse.BooleanOptionalAction, default=None,
                   help="TPE: count running trials as bad results, so that trials proposed while others run "
                        "spread out (default: the space's, else on)")
    g.add_argument("--n-startup-trials", type=int, metavar="N",
                   help="TPE: trials drawn at random before it models the others (default: the space's, "
                        "else 10, Optuna's)")
    g.add_argument("--scheduler", choices=list(SCHEDULERS),
                   help=f"early stopping: {flag_help(SCHEDULERS)}; grace period, reduction factor and brackets "
                        "are the space's (default: the space's, else asha)")
    g.add_argument("--objectives", metavar="LIST",
                   help="what the search optimises, comma-separated: val_acc (always), and any of params "
                        "(fewer parameters), flops (fewer training FLOPs, counted from shapes), seconds (less time "
                        "on this machine), forgetting (less forgetting on val); "
                        "e.g. val_acc,params: a multi-objective study (TPE: Optuna's MOTPE; --searcher nsga2: "
                        "NSGA-II), ASHA ranks by non-dominated sorting, the result is a Pareto set "
                        "(default: the space's, else val_acc alone)")
    g.add_argument("--confirm-top", type=int, metavar="K",
                   help="after the last trial, re-run the K best complete trials at --confirm-seeds more seeds and "
                        "name the winner on the mean validation ACC over its seeds; 0: no confirmation, the best "
                        "one-seed value wins (default: the space's, else 0; docs/search.md)")
    g.add_argument("--confirm-seeds", type=int, metavar="S",
                   help="more seeds per confirmed trial (default: the space's, else 2)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a fixed learner setting for every trial (repeatable)")
    g = p.add_argument_group("where it lives")
    g.add_argument("--storage", metavar="DIR|URL", default=os.environ.get("MARKTUNE_STORAGE", DEFAULT_STORAGE),
                   help="where experiments live: a directory or s3://… (default: $MARKTUNE_STORAGE, else ./results)")
    g.add_argument("--name", help="experiment name, also the Optuna study's: one folder name of letters, "
                                  "digits, '.', '_' and '-' (default: <space>-<time>). One search at a time "
                                  "per name: a second is refused while the first holds <storage>/<name>/marktune.lock")
    flags.add_optuna_storage_flag(
        g, help="the Optuna study's database, any SQLAlchemy URL: sqlite:///marktune.db on one machine, "
                "postgresql://user@host/db or mysql://... on a cluster (default: a journal file "
                f"<storage>/<name>/{JOURNAL_FILE})")
    g.add_argument("--resume", action="store_true",
                   help=f"continue the experiment --name in --storage with {kept_on_resume_in_words()} "
                        "it started with, and its --optuna-storage")
    g.add_argument("--replan-confirmation", action="store_true",
                   help=f"with --resume: move a damaged or inconsistent {CONFIRMATION_FILE} aside (renamed, not "
                        "deleted) and plan the confirmation stage again from the search's trials")
    flags.add_protocol_flags(p)
    flags.add_resource_flags(p, unit="trial")
    flags.add_gpu_runtime_flags(p)
    flags.add_ray_flags(p)
    flags.add_data_flags(p, unit="trial", default_dir="$MARKTUNE_DATA or cache")
    g = p.add_argument_group("output")
    g.add_argument("--top", type=int, default=5, metavar="N", help="rows of the best-trials table (default 5)")
    g.add_argument("-v", "--verbose", action="store_true",
                   help="also Ray's trial tables (a box per trial start and result)")
    g.add_argument("-q", "--quiet", action="store_true",
                   help="no status lines: only the per-task lines, errors and the summary")
    return p


def plan_from_args(args: argparse.Namespace) -> SearchPlan:
    """Validate the space and every flag; raise SpaceError/ConfigError/PlanError."""
    if args.name is not None:
        check_name(args.name)
    check_seed(args.seed, flag="--seed")
    overrides = parse_overrides(args.overrides)
    space = load_space(args.space, overrides=overrides)
    base = space.default_trial_config(overrides)
    d = space.defaults
    samples = args.samples if args.samples is not None else d["samples"]
    if samples < 1:
        raise SearchError(f"--samples must be >= 1 (got {samples})")
    check_stage_size(samples, what=f"--samples {samples}")
    if args.top < 1:
        raise SearchError(f"--top must be >= 1 (got {args.top}): the rows of the best-trials table")
    if args.n_startup_trials is not None and args.n_startup_trials < 0:
        raise SearchError(f"--n-startup-trials must be >= 0 (got {args.n_startup_trials})")
    strategy = space.strategy(searcher=args.searcher, n_startup_trials=args.n_startup_trials,
                              constant_liar=args.constant_liar, scheduler=args.scheduler)
    try:
        objectives = parse_objectives(args.objectives if args.objectives is not None else d["objectives"])
    except ObjectiveError as err:
        raise SearchError(str(err)) from None
    if len(objectives) > 1 and not strategy.scheduler_kind.multiobjective:
        raise SearchError(f"--scheduler {strategy.scheduler} ranks one objective; with several --objectives use "
                          + " or ".join(f"--scheduler {n}" for n, k in SCHEDULERS.items() if k.multiobjective))
    if len(objectives) > 1 and args.confirm_top:
        raise SearchError("--confirm-top picks one winner; with several --objectives the search returns a "
                          "Pareto set: leave --confirm-top out (marktune.evaluate re-runs the set on fresh seeds)")
    confirm_top, confirm_seeds = confirmation_stage(args, d, samples=samples, objectives=objectives)
    max_concurrent = args.max_concurrent if args.max_concurrent is not None else d["max_concurrent"]
    cpus = args.cpus_per_trial if args.cpus_per_trial is not None else float(d["cpus_per_trial"])
    gpus = args.gpus_per_trial if args.gpus_per_trial is not None else d["gpus_per_trial"]
    check_trial_resources(cpus_per_trial=cpus, gpus_per_trial=gpus, max_concurrent=max_concurrent,
                          max_failures=args.max_failures)
    storage, name = storage_and_name(args, space)
    study_storage = StudyStorage.for_experiment(experiment_dir=local_experiment_dir(storage, name),
                                                url=args.optuna_storage)
    protocol, tuning_tasks = check_protocol(args.protocol, args.tuning_tasks, stream_tasks=base.tasks)
    space.check_tasks_searched(tuning_tasks or base.tasks, tuning=tuning_tasks is not None,
                                scheduler=strategy.scheduler)
    runtime = TrialRuntime(data_dir=args.data_dir, download=args.download, threads=trial_threads(cpus),
                           cpu_fallback=args.cpu_fallback, gpu_memory_fraction=args.gpu_memory_fraction,
                           stop_after_tasks=tuning_tasks)  # first-k: each trial stops after k tasks
    return SearchPlan(space=space, space_given=args.space, overrides=overrides, override_flags=tuple(args.overrides),
                      base_config=base, samples=samples, seed=args.seed, search_strategy=strategy, confirm_top=confirm_top,
                      confirm_seeds=confirm_seeds, objectives=objectives, max_concurrent=max_concurrent,
                      cpus_per_trial=cpus, gpus_per_trial=gpus, max_failures=args.max_failures,
                      reuse_actors=args.reuse_actors, storage=storage, name=name, num_tasks=tuning_tasks or base.tasks, study_storage=study_storage,
                      runtime=runtime, ray=flags.ray_settings(args), resume=bool(args.resume), protocol=protocol,
                      tuning_tasks=tuning_tasks, stream_tasks=base.tasks, verbose=args.verbose, quiet=args.quiet)


def confirmation_stage(args: argparse.Namespace, d: dict, *, samples: int, objectives) -> tuple[int, int]:
    """(--confirm-top, --confirm-seeds): the flags, else the space's defaults ``d``, checked; no
    stage with several objectives or beyond the search's trials."""
    confirm_top = args.confirm_top if args.confirm_top is not None else d["confirm_top"]
    if len(objectives) > 1:
        confirm_top = 0  # the space's confirmation is for one objective
    confirm_seeds = args.confirm_seeds if args.confirm_seeds is not None else d["confirm_seeds"]
    if confirm_top < 0:
        raise SearchError(f"--confirm-top must be >= 0 (got {confirm_top}; 0 turns the confirmation off)")
    if confirm_seeds < 1:
        raise SearchError(f"--confirm-seeds must be >= 1 (got {confirm_seeds}; --confirm-top 0 turns the "
                          "confirmation off)")
    if confirm_top > samples and args.confirm_top is None:
        confirm_top = samples  # the space's stage, on a search smaller than it: every trial is a finalist
    if confirm_top > samples:
        raise SearchError(f"--confirm-top {confirm_top} is more than the search's {samples} trials: give at most "
                          f"--confirm-top {samples}")
    if confirm_top:
        check_stage_size(confirm_top * confirm_seeds,
                         what=f"the confirmation stage, --confirm-top {confirm_top} x --confirm-seeds {confirm_seeds},")
        # its seeds follow the search's seed, past every seed a trial used (at most one a trial)
        check_seed(args.seed + samples + confirm_seeds, flag=f"--seed {args.seed} + --samples {samples} + "
                   f"--confirm-seeds {confirm_seeds}: the confirmation's last seed")
    return confirm_top, confirm_seeds


def storage_and_name(args: argparse.Namespace, space) -> tuple[str, str]:
    """Where the experiment lives (a local path made absolute) and its name (given, else the
    space's and the time); --resume needs a name that is there."""
    if args.resume and not args.name:
        raise SearchError("--resume needs --name of the experiment to continue")
    storage = args.storage
    if not is_remote(storage):
        storage = str(Path(storage).expanduser().resolve())
        if args.resume and not (Path(storage) / args.name).is_dir():
            raise SearchError(f"--resume: no experiment {args.name!r} in {storage}")
    name = args.name or f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    check_name(name)
    return storage, name


# ---------------------------------------------------------------- resuming
def given_flags(argv: Sequence[str] | None) -> set[str]:
    """The destinations of the flags actually on the command line."""
    return flags.given_destinations(build_parser(), argv)


def apply_saved_settings(args: argparse.Namespace, given: set[str]) -> argparse.Namespace:
    """On --resume, the flags the experiment started with (marktune.tune.folders.search_settings)."""
    take_saved_settings(vars(args), given)  # the namespace's own attributes: writing there sets the flags
    return args


# ---------------------------------------------------------------- the end
def search_rows(run: SearchRun, plan: SearchPlan) -> list[TrialRow]:
    """One row per trial, best first (``marktune.results.summary.trial_rows``)."""
    return trial_rows(run.results, searched=list(plan.space.params), num_tasks=plan.num_tasks,
                      interrupted=run.interrupted, configs=run.configs(), objectives=plan.objectives)


def summarize(run: SearchRun, plan: SearchPlan, *, top: int, rows: list[TrialRow] | None = None,
              confirmed: ConfirmationRun | None = None) -> list[TrialRow]:
    """Print the best-trials table, the confirmation's finalists (and, after Ctrl-C, how to
    continue); write trials.csv, curves.csv and best_config.yaml next to the experiment."""
    searched = list(plan.space.params)
    rows = rows if rows is not None else search_rows(run, plan)
    ties = mark_ties(rows, noise=plan.space.noise)  # before trials.csv: its `tied` column
    if confirmed is not None and confirmed.verdict is not None:
        mark_confirmed(rows, confirmed.verdict)  # before trials.csv and best_config.yaml
    front = mark_fronts(rows, plan.objectives, noise=plan.space.noise) if plan.multiobjective else []
    out_dir = plan.local_dir()
    best = write_outputs(rows, out_dir, searched=searched, space_name=plan.space.name, objectives=plan.objectives)
    made = {trial_id: i for i, trial_id in enumerate(run.states)}  # Tune's state lists the trials as made
    in_order = sorted(rows, key=lambda r: (made.get(r.trial_id, len(made)), r.trial_id))
    write_search_curves(out_dir / CURVES_TABLE, in_order, searched=searched, experiment=run.experiment)
    counts = {s: sum(r.status == s for r in rows) for s in ("COMPLETE", "PRUNED", "ERROR", "RUNNING", "PENDING")}
    left = unfinished(rows) + max(0, plan.samples - len(rows))
    stopped = plan.search_strategy.scheduler_kind.stopped_by
    line = (f"\n[marktune] {len(rows)} trials: {counts['COMPLETE']} complete, {counts['PRUNED']} {stopped}, "
            f"{counts['ERROR']} errored")
    if left:
        line += (f", {counts['RUNNING']} unfinished, {counts['PENDING'] + max(0, plan.samples - len(rows))} "
                 "not started")
    print(line + ". Best trials (val ACC selects; test ACC is reported, never used):")
    print(format_table(rows, searched, top))
    if ties is not None:
        print(f"[marktune] {ties.sentence(str(out_dir))}")
        cheapest = cheapest_sentence(rows)
        if cheapest:
            print(f"[marktune] {cheapest}")
    if front:
        near = sorted((r for r in rows if r.near_front), key=lambda r: -r.val_acc)
        print(f"[marktune] the Pareto set: {len(front)} of {counts['COMPLETE']} complete trials no other beats on "
              f"every objective ({', '.join(o.name for o in plan.objectives)})"
              + (f"; {len(near)} more off it only by the noise of their val ACC (near)" if near else "") + ":")
        print(format_front(front, near, plan.objectives))
    if confirmed is not None and confirmed.verdict is not None:
        print(f"[marktune] {confirmed.verdict.sentence()}:")
        print(confirmed.verdict.table())
    for error in confirmed.errors if confirmed is not None else ():
        print(f"[marktune] confirmation run failed: {error}")
    for r in rows:
        if r.status == "ERROR":
            print(f"[marktune] {r.trial_id} errored: {r.error}")
    moved = node_loss_note(experiment_moves(out_dir)) if not is_remote(plan.storage) else ""
    if moved:  # a lost worker node, in words: the trials' rows say where each task ran
        print(f"[marktune] {moved}")
    print_where(run, plan, best=best, confirmed=confirmed, left=left)
    return rows


def print_where(run: SearchRun, plan: SearchPlan, *, best, confirmed: ConfirmationRun | None, left: int) -> None:
    """Where the search's outputs are and what to run next (after Ctrl-C: how to continue)."""
    out_dir = plan.local_dir()
    print(f"[marktune] trials.csv: {out_dir / 'trials.csv'}")
    print(f"[marktune] {CURVES_TABLE} (every trial's values after every task): {out_dir / CURVES_TABLE}")
    if best:
        what = "the confirmation's winner" if confirmed is not None and confirmed.verdict is not None \
            and confirmed.verdict.winner else "the best one-seed trial"
        print(f"[marktune] best_config.yaml ({what}): {best}  (python -m marktune.run --config {best})")
    else:
        print("[marktune] no trial ran every task, so there is no best_config.yaml")
    print(f"[marktune] compare trials: tensorboard --logdir {run.experiment}")
    print(f"[marktune] the Optuna study {plan.name!r}: {plan.study_storage.dashboard_command()}")
    if left:
        print(f"[marktune] interrupted: {left} of {plan.samples} trials unfinished; continue with "
              f"`{resume_command(plan)}`")
    elif confirmed is not None and confirmed.unfinished:
        print(f"[marktune] interrupted: {confirmed.unfinished} confirmation runs unfinished, so best_config.yaml "
              f"is the one-seed pick for now; continue with `{resume_command(plan)}`")


def resume_command(plan: SearchPlan) -> str:
    from marktune.tune.folders.experiment import resume_words

    return resume_words(plan)


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 when every trial ended and not all errored, 1 when every trial errored,
    130 when the search was interrupted (Ctrl-C; continue it with --resume), 143 the same after SIGTERM, 2 for bad input
    (also: another search holds the experiment)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # the experiment's lock, once taken, is released on every way out: a refusal, Ctrl-C, a bug, the end
    with contextlib.ExitStack() as held:
        try:
            if args.name is not None:
                check_name(args.name)  # before --resume reads <storage>/<name>
            args = apply_saved_settings(args, flags.given_destinations(parser, argv))
            # the flags on their own first, before the space is even loaded (which imports torch):
            # a mistyped or unreachable address or database is an error within seconds
            check_ray_flags(flags.ray_settings(args))
            check_address(args.address)
            check_optuna_storage(args.optuna_storage)
            plan = plan_from_args(args)
            check_local_resources(plan.ray, cpus_per_trial=plan.cpus_per_trial, gpus_per_trial=plan.gpus_per_trial)
            check_search(plan)  # reads only, then makes the storage folder
            # before anything is written to the experiment (the study check may repair its journal:
            # a second search of this name is told who runs the first), until the search ends
            lock = lock_experiment(plan.storage, plan.name, what="search",
                                   command=shlex.join(["python", "-m", "marktune.search",
                                                       *(sys.argv[1:] if argv is None else argv)]))
            held.callback(lock.release)
            replan_or_check_confirmation(plan, replan=args.replan_confirmation)
            done = finished_words(plan) if not args.replan_confirmation else ""
            if done:  # nothing to run: no Ray started only to print what the files say
                print(f"[marktune] {done}")
                return 0
            open_experiment(plan)
            start_ray(plan.ray)
            term = sigterm_as_interrupt()  # after ray.init, which sets its own
            check_cluster_resources(cpus_per_trial=plan.cpus_per_trial, gpus_per_trial=plan.gpus_per_trial,
                                    address=plan.ray.address)
        except (SpaceError, ConfigError, PlanError, ConfirmationError) as err:
            shutdown_ray()  # if the refusal came once Ray was up (a trial no node can hold)
            print(f"error: {err}", file=sys.stderr)
            return 2
        run = run_search(plan)
        if not any(run.interrupted(tid) for tid in run.states):
            # after Ctrl-C a trial's newest checkpoint may be newer than the one the saved state
            # names (written, not yet registered): keep them all until the resumed run ends
            prune_checkpoints(run.experiment)
        rows = search_rows(run, plan)
        confirmed = None
        if plan.confirm_top and not unfinished(rows) and len(rows) >= plan.samples:
            try:
                confirmed = confirm(plan, rows)
            except ConfirmationError as err:  # nothing is named the winner on a record that does not hold
                print(f"error: {err}", file=sys.stderr)
                return 2
        rows = summarize(run, plan, top=args.top, rows=rows, confirmed=confirmed)
    if unfinished(rows) or len(rows) < plan.samples or (confirmed is not None and confirmed.unfinished):
        return term.exit_code(INTERRUPTED)
    if rows and all(r.status == "ERROR" for r in rows):
        print(f"[marktune] the search failed: every trial ({len(rows)} of {len(rows)}) errored, so it found "
              "nothing (the errors are above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
