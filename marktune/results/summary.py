"""The end of a search: one row per trial, ``trials.csv``, ``best_config.yaml`` and the table.

A trial's status here: ``COMPLETE`` (ran every task), ``PRUNED`` (ASHA stopped it), ``ERROR``,
and, when the search was interrupted, ``RUNNING`` (it had reported tasks and will continue on
``--resume``) or ``PENDING`` (not started: it never reported a result). Tune's returned trials
cannot tell these apart after Ctrl-C (it marks every running trial TERMINATED while it cleans
up), so the caller says which trials were cut short (from the experiment state Tune saved just
before, see ``marktune.tune.tune_setup.last_trial_states``).

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
from marktune.results.files import BEST_CONFIG_FILE, TRIAL_DIR_PREFIX, TRIALS_TABLE
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


def trial_rows(results, *, searched: Sequence[str], num_tasks: int,
               interrupted: Callable[[str], bool] | None = None,
               configs: Mapping[str, Mapping[str, Any]] | None = None) -> list[TrialRow]:
    """One row per Tune result, best first.

    ``interrupted(trial_id)``: whether the search stopped while the trial ran or waited (then
    RUNNING or, without a result, PENDING, unless it had reported every task); a trial that
    ended with fewer tasks than planned is PRUNED (``marktune.results.status``). ``configs``: trial id -> its config, for trials that never wrote one.
    """
    rows = []
    keys = set(MarkConfig.field_names())
    for result in results:
        metrics = result.metrics or {}
        trial_id = str(metrics.get("trial_id") or Path(result.path).name.removeprefix(TRIAL_DIR_PREFIX))
        tasks_done = int(metrics.get(TIME_ATTR, 0) or 0)
        config = {k: v for k, v in ((result.config or (configs or {}).get(trial_id)) or {}).items() if k in keys}
        status = decide_status(errored=result.error is not None, tasks_done=tasks_done, num_tasks=num_tasks,
                               interrupted=interrupted is not None and interrupted(trial_id)).value
        rows.append(TrialRow(
            trial_id=trial_id, status=status, tasks_done=tasks_done,
            val_acc=float(metrics.get(METRIC, math.nan)), test_acc=float(metrics.get("mean_test_acc", math.nan)),
            bwt=float(metrics.get("bwt_test", math.nan)),
            params={k: config.get(k) for k in searched}, config=config,
            error=first_line(str(result.error)) if result.error is not None else ""))
    rows.sort(key=lambda r: (STATUS_ORDER.get(r.status, 9), -r.tasks_done,
                             -(r.val_acc if math.isfinite(r.val_acc) else -1)))
    return rows


def unfinished(rows: Sequence[TrialRow]) -> int:
    return sum(r.status in UNFINISHED for r in rows)


def write_outputs(rows: list[TrialRow], out_dir: Path, *, searched: Sequence[str], space_name: str) -> Path | None:
    """trials.csv (every trial) and best_config.yaml (best complete trial); returns the latter."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / TRIALS_TABLE, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial_id", "status", "tasks_done", "val_acc", "test_acc", "bwt", *searched, "error"])
        for r in rows:
            writer.writerow([r.trial_id, r.status, r.tasks_done, _num(r.val_acc), _num(r.test_acc), _num(r.bwt),
                             *[r.params.get(k) for k in searched], r.error])
    complete = [r for r in rows if r.status == "COMPLETE"]
    if not complete:
        return None
    best = max(complete, key=lambda r: r.val_acc)
    path = out_dir / BEST_CONFIG_FILE
    path.write_text(
        f"# Best of {len(complete)} complete trials by validation ACC (space {space_name}).\n"
        f"# Run it: python -m marktune.run --config {path}\n"
        + yaml.safe_dump({"trial_id": best.trial_id, "val_acc": best.val_acc, "test_acc": best.test_acc,
                          "bwt": best.bwt, "config": best.config}, sort_keys=False))
    return path


def format_table(rows: list[TrialRow], searched: Sequence[str], top: int) -> str:
    params = list(searched)
    head = ["trial", "status", "tasks", "val ACC", "test ACC", "BWT", *params]
    body = [[r.trial_id, r.status, str(r.tasks_done), _num(r.val_acc), _num(r.test_acc), _num(r.bwt, sign=True),
             *[_short(r.params.get(k)) for k in params]] for r in rows[:top]]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, body)])


def _num(value: float, sign: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:+.4f}" if sign else f"{value:.4f}"


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
