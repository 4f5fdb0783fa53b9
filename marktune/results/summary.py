"""The end of a search: one row per trial, ties with the best, ``trials.csv``, ``best_config.yaml``, the table.

A trial's status here: ``COMPLETE`` (ran every task), ``PRUNED`` (ASHA stopped it), ``ERROR``,
and, when the search was interrupted, ``RUNNING`` (it had reported tasks and will continue on
``--resume``) or ``PENDING`` (not started: it never reported a result). Tune's returned trials
cannot tell these apart after Ctrl-C (it marks every running trial TERMINATED while it cleans
up), so the caller says which trials were cut short (from the experiment state Tune saved just
before, see ``marktune.tune.runs.tune_setup.last_trial_states``).

Example:
    >>> rows = [TrialRow(trial_id="a", status="COMPLETE", tasks_done=5, val_acc=0.8, test_acc=0.79,
    ...                  bwt=-0.01, params={"lr": 0.1}, config={}),
    ...         TrialRow(trial_id="b", status="PENDING", tasks_done=0, val_acc=float("nan"),
    ...                  test_acc=float("nan"), bwt=float("nan"), params={"lr": 0.02}, config={})]
    >>> print(format_table(rows, ["lr"], top=2))
    trial  status    tasks  val ACC  test ACC  BWT      lr
    -----  --------  -----  -------  --------  -------  ----
    a      COMPLETE  5      0.8000   0.7900    -0.0100  0.1
    b      PENDING   0      -        -         -        0.02
    >>> unfinished(rows)
    1
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from marktune.mark.config import MarkConfig
from marktune.mark.metrics import METRIC, TIME_ATTR
from marktune.results.confirmation import FINALIST, WINNER, Verdict
from marktune.results.files import BEST_CONFIG_FILE, TRIAL_DIR_PREFIX, TRIALS_TABLE, atomic_output, write_atomic
from marktune.results.noise import Scored, SeedNoise, Ties, find_ties, scored_from_result, tie_margin
from marktune.results.objectives import SINGLE, Objective, minimised, nondominated_ranks, objective_values
from marktune.results.status import decide_status

STATUS_ORDER = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "PENDING": 3, "ERROR": 4}
UNFINISHED = ("RUNNING", "PENDING")


@dataclass
class TrialRow:
    trial_id: str
    status: str  # COMPLETE, PRUNED, ERROR, RUNNING, PENDING
    tasks_done: int
    val_acc: float
    test_acc: float
    bwt: float
    params: dict[str, Any]
    config: dict[str, Any]
    error: str = ""
    val_se: float = math.nan  # binomial SE of val_acc from its validation counts (NaN: unknown)
    val_images: int | None = None  # validation images val_acc was scored on (None: unknown)
    train_flops: float = math.nan  # training FLOPs of its tasks so far (marktune.mark.flops; nan: unknown)
    tied: str = ""  # best, tied, no (complete trials, once mark_ties ran), else ""
    # the confirmation stage's (marktune.results.confirmation), for its finalists only
    confirmed: str = ""  # winner, finalist, else ""
    confirm_val_mean: float = math.nan  # mean val ACC over the trial's seeds, the search's included
    confirm_val_se: float = math.nan
    confirm_seeds: int = 0  # seeds that mean is over
    # a multi-objective search's (marktune.results.objectives), for complete trials once mark_fronts ran
    values: tuple[float, ...] = ()  # each objective's value at the end, as reported
    front: int | None = None  # non-domination rank: 0 = the Pareto set
    near_front: bool = False  # off the Pareto set only by the noise of its val ACC


def trial_rows(results, *, searched: Sequence[str], num_tasks: int,
               interrupted: Callable[[str], bool] | None = None,
               configs: Mapping[str, Mapping[str, Any]] | None = None,
               objectives: Sequence[Objective] = SINGLE) -> list[TrialRow]:
    """One row per Tune result, best first.

    ``interrupted(trial_id)``: whether the search stopped while the trial ran or waited (then
    RUNNING or, without a result, PENDING, unless it had reported every task); a trial that
    ended with fewer tasks than planned is PRUNED (``marktune.results.status``). ``configs``: trial id -> its config, for trials that never wrote one.
    """
    rows = []
    for result in results:
        metrics = result.metrics or {}
        trial_id = str(metrics.get("trial_id") or Path(result.path).name.removeprefix(TRIAL_DIR_PREFIX))
        tasks_done = int(metrics.get(TIME_ATTR, 0) or 0)
        config = MarkConfig.settings_of((result.config or (configs or {}).get(trial_id)) or {})
        scored = scored_from_result(trial_id, metrics)
        status = decide_status(errored=result.error is not None, tasks_done=tasks_done, num_tasks=num_tasks,
                               interrupted=interrupted is not None and interrupted(trial_id)).value
        rows.append(TrialRow(
            trial_id=trial_id, status=status, tasks_done=tasks_done,
            val_acc=float(metrics.get(METRIC, math.nan)), test_acc=float(metrics.get("mean_test_acc", math.nan)),
            bwt=float(metrics.get("bwt_test", math.nan)),
            params={k: config.get(k) for k in searched}, config=config,
            error=first_line(str(result.error)) if result.error is not None else "",
            val_se=scored.se, val_images=scored.images, train_flops=_float(metrics.get("train_flops")),
            values=(objective_values(metrics, objectives) or ()) if len(objectives) > 1 else ()))
    rows.sort(key=lambda r: (STATUS_ORDER.get(r.status, 9), -r.tasks_done,
                             -(r.val_acc if math.isfinite(r.val_acc) else -1)))
    return rows


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def cheapest_tied(rows: Sequence[TrialRow]) -> TrialRow | None:
    """The complete trial with the fewest training FLOPs among the best and the trials tied with it
    (``mark_ties``); None when the ties are unknown or no tied trial is cheaper than the best."""
    tied = [r for r in rows if r.tied in ("best", "tied") and math.isfinite(r.train_flops)]
    best = next((r for r in tied if r.tied == "best"), None)
    if best is None:
        return None
    cheapest = min(tied, key=lambda r: (r.train_flops, -r.val_acc))
    return cheapest if cheapest.train_flops < best.train_flops else None


def cheapest_sentence(rows: Sequence[TrialRow]) -> str:
    """``the cheapest trial within the noise of the best: X, ...`` or "" (see :func:`cheapest_tied`)."""
    cheapest = cheapest_tied(rows)
    if cheapest is None:
        return ""
    best = next(r for r in rows if r.tied == "best")
    return (f"the cheapest trial within the noise of the best: {cheapest.trial_id}, val ACC {cheapest.val_acc:.4f} "
            f"against {best.val_acc:.4f}, at {100 * cheapest.train_flops / best.train_flops:.0f} % of the best's "
            f"training FLOPs ({cheapest.train_flops:.3g} against {best.train_flops:.3g})")


def unfinished(rows: Sequence[TrialRow]) -> int:
    return sum(r.status in UNFINISHED for r in rows)


def mark_ties(rows: Sequence[TrialRow], *, noise: SeedNoise | None = None) -> Ties | None:
    """Set each complete row's ``tied`` (best, tied, no; "" when the noise is unknown) by the rule
    of :mod:`marktune.results.noise`: i is tied with the best b when
    ``val_b - val_i < 2 * sqrt(SE_b**2 + SE_i**2 + 2 * seed_sd**2)``. Returns the ties (their
    sentence goes under the table), None without a complete trial.

    >>> rows = [TrialRow("a", "COMPLETE", 5, 0.95, 0.9, 0.0, {}, {}, val_se=0.01, val_images=200),
    ...         TrialRow("b", "COMPLETE", 5, 0.94, 0.9, 0.0, {}, {}, val_se=0.01, val_images=200)]
    >>> mark_ties(rows).tied, [r.tied for r in rows]
    (('b',), ['best', 'tied'])
    """
    noise = noise or SeedNoise()
    complete = [r for r in rows if r.status == "COMPLETE"]
    ties = find_ties([Scored(r.trial_id, r.val_acc, r.val_se, r.val_images) for r in complete],
                     seed_sd=noise.seed_sd, measured=noise.measured)
    for r in rows:
        r.tied = ties.mark(r.trial_id) if ties is not None and r.status == "COMPLETE" else ""
    return ties


def mark_fronts(rows: Sequence[TrialRow], objectives: Sequence[Objective], *,
                noise: SeedNoise | None = None) -> list[TrialRow]:
    """Set each complete row's non-domination rank (``front``, 0 = the Pareto set) and whether it
    is off the set only by its val ACC's noise (``near_front``: no member of the set is at least
    as good on every other objective and ahead on val ACC by more than the tie margin of
    :mod:`marktune.results.noise`); the Pareto set's rows, most accurate first."""
    noise = noise or SeedNoise()
    done = [r for r in rows if r.status == "COMPLETE" and len(r.values) == len(objectives)]
    low = dict(zip((r.trial_id for r in done), minimised([r.values for r in done], objectives)))
    for r, rank in zip(done, nondominated_ranks(list(low.values()))):
        r.front = rank
    acc = [o.name for o in objectives].index("val_acc")
    others = [i for i in range(len(objectives)) if i != acc]
    front = [r for r in done if r.front == 0]
    for r in done:
        if r.front == 0:
            continue
        r.near_front = not any(
            all(low[f.trial_id][i] <= low[r.trial_id][i] for i in others)
            and f.values[acc] - r.values[acc] >= tie_margin(se_best=f.val_se, se_other=r.val_se, seed_sd=noise.seed_sd)
            for f in front)
    return sorted(front, key=lambda r: -r.values[acc])


def format_front(front: Sequence[TrialRow], near: Sequence[TrialRow], objectives: Sequence[Objective]) -> str:
    """The Pareto set (and the trials within the noise of it), one row each: val ACC with its
    binomial SE, then every other objective."""
    head = ["trial", "", *[o.name for o in objectives], "val SE"]
    body = [[r.trial_id, "front" if r.front == 0 else "near", *[_objective(o, v) for o, v in zip(objectives, r.values)],
             _num(r.val_se)] for r in [*front, *near]]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, body)])


def _objective(objective: Objective, value: float) -> str:
    if objective.name == "flops":
        return f"{value:.3g}"
    if objective.name == "params":
        return f"{value:,.0f}"
    if objective.name == "seconds":
        return f"{value:.1f}"
    return f"{value:+.4f}" if objective.name == "forgetting" else f"{value:.4f}"


def mark_confirmed(rows: Sequence[TrialRow], verdict: Verdict) -> None:
    """Set the confirmation columns of the finalists' rows from the stage's verdict."""
    for r in rows:
        c = verdict.of(r.trial_id)
        if c is None:
            continue
        r.confirmed = WINNER if r.trial_id == verdict.winner else FINALIST
        r.confirm_val_mean, r.confirm_val_se = c.mean, c.se
        r.confirm_seeds = sum(map(math.isfinite, c.vals))


def write_outputs(rows: list[TrialRow], out_dir: Path, *, searched: Sequence[str], space_name: str,
                  objectives: Sequence[Objective] = SINGLE) -> Path | None:
    """trials.csv (every trial) and best_config.yaml (the confirmation's winner where rows are
    marked so, else the best complete trial); returns the latter."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_output(out_dir / TRIALS_TABLE, newline="") as f:
        writer = csv.writer(f)
        # after error: readers take the searched settings as the columns between bwt and error
        writer.writerow(["trial_id", "status", "tasks_done", "val_acc", "test_acc", "bwt", *searched, "error",
                         "val_se", "val_images", "tied", "confirmed", "confirm_val_mean", "confirm_val_se",
                         "confirm_seeds", "train_flops", *(["front", "near_front", *[o.name for o in objectives[1:]]]
                                            if len(objectives) > 1 else [])])
        for r in rows:
            writer.writerow([r.trial_id, r.status, r.tasks_done, _num(r.val_acc), _num(r.test_acc), _num(r.bwt),
                             *[r.params.get(k) for k in searched], r.error, _num(r.val_se, digits=5),
                             "" if r.val_images is None else r.val_images, r.tied, r.confirmed,
                             _num(r.confirm_val_mean), _num(r.confirm_val_se, digits=5),
                             r.confirm_seeds or "", "" if not math.isfinite(r.train_flops) else int(r.train_flops),
                             *([("" if r.front is None else r.front), ("yes" if r.near_front else ""),
                                *[r.values[i + 1] if r.values else "" for i in range(len(objectives) - 1)]]
                               if len(objectives) > 1 else [])])
    complete = [r for r in rows if r.status == "COMPLETE"]
    if not complete:
        return None
    winner = next((r for r in complete if r.confirmed == WINNER), None)
    best = winner or max(complete, key=lambda r: r.val_acc)
    path = out_dir / BEST_CONFIG_FILE
    if winner is not None:
        finalists = sum(r.confirmed in (WINNER, FINALIST) for r in rows)
        why = (f"# The confirmation's winner: best mean validation ACC over {winner.confirm_seeds} seeds "
               f"({winner.confirm_val_mean:.4f}) of the top {finalists} of {len(complete)} complete trials "
               f"(space {space_name}).\n")
    else:
        why = f"# Best of {len(complete)} complete trials by validation ACC (space {space_name}).\n"
    write_atomic(
        path,
        why + f"# Run it: python -m marktune.run --config {path}\n"
        + yaml.safe_dump({"trial_id": best.trial_id, "val_acc": best.val_acc, "test_acc": best.test_acc,
                          "bwt": best.bwt,
                          **({"confirm_val_mean": best.confirm_val_mean, "confirm_seeds": best.confirm_seeds}
                             if winner is not None else {}),
                          "config": best.config}, sort_keys=False))
    return path


def format_table(rows: list[TrialRow], searched: Sequence[str], top: int) -> str:
    """The best-trials table; a ``tied`` column once :func:`mark_ties` has marked ties."""
    params = list(searched)
    marks = any(r.tied for r in rows[:top])
    head = ["trial", "status", "tasks", "val ACC", "test ACC", "BWT", *(["tied"] if marks else []), *params]
    body = [[r.trial_id, r.status, str(r.tasks_done), _num(r.val_acc), _num(r.test_acc), _num(r.bwt, sign=True),
             *([r.tied if r.tied != "no" else ""] if marks else []),
             *[_short(r.params.get(k)) for k in params]] for r in rows[:top]]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, body)])


def _num(value: float, sign: bool = False, digits: int = 4) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def error_reason(trial) -> str:
    """The last line of a Tune trial's error file: the exception's own message."""
    try:
        return first_line(Path(trial.error_file).read_text()) if trial.error_file else "unknown error"
    except OSError:
        return "unknown error"


def first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    # the exception's own message is the last line of a traceback
    return lines[-1] if lines else ""
