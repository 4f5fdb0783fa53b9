"""The evaluation's table: ``evaluation.csv`` (one row per run) and its summary per configuration.

Written by ``python -m marktune.evaluate``, read back by ``marktune.report`` and
``marktune.results.conclusions``. A row is a dict with the :data:`CSV_FIELDS`; :func:`read_csv`
gives the numbers back as numbers. :func:`aggregate` makes one :class:`Summary` per
configuration (mean ± std over its complete runs), :func:`table_cells` its cells under
:data:`TABLE_HEAD`, and :func:`format_markdown` the Markdown table of ``evaluation.md``.

Example:
    >>> format_mean_std((0.9745, 0.0205)), format_mean_std((-0.01, float("nan")), sign=True)
    ('97.45 ± 2.05', '-1.00')
"""
from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from marktune.results.files import atomic_output

CSV_FIELDS = ["configuration", "kind", "source_trial", "benchmark", "data_seed", "seed", "status", "tasks_done",
              "tasks_total", "test_acc", "bwt", "heldout_test_acc", "heldout_bwt", "val_acc", "wall_seconds",
              "kb_params", "task_params", "device", "settings", "error", "test_matrix",
              # marktune.results.cost: the run's training FLOPs (marktune.mark.flops) and tasks at chance
              "train_flops", "tasks_at_chance"]


def write_csv(records: list[dict[str, Any]], path: Path) -> None:
    with atomic_output(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for r in records:
            writer.writerow({k: _cell(r.get(k)) for k in CSV_FIELDS})


def read_csv(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ("test_acc", "bwt", "val_acc", "wall_seconds", "heldout_test_acc", "heldout_bwt", "train_flops",
                  "tasks_at_chance"):  # the last two: nan in evaluations written before they were columns
            r[k] = as_float(r.get(k))
        for k in ("seed", "tasks_done", "kb_params", "task_params", "tasks_total"):
            r[k] = int(r[k]) if str(r.get(k, "")).lstrip("-").isdigit() else 0
        # evaluations before data_seed was a column: the seed set the class order too
        r["data_seed"] = int(r["data_seed"]) if str(r.get("data_seed", "")).lstrip("-").isdigit() else r["seed"]
        r["test_matrix"] = json.loads(r["test_matrix"]) if r.get("test_matrix") else []
    return rows


@dataclass
class Summary:
    configuration: str
    kind: str
    runs: int
    ok: int
    seeds: list[int]
    test_acc: tuple[float, float]  # mean, std over complete runs
    bwt: tuple[float, float]
    val_acc: tuple[float, float]
    wall_seconds: float  # mean
    kb_params: int
    task_params: int
    settings: str


def aggregate(records: list[dict[str, Any]]) -> list[Summary]:
    """One Summary per configuration, in the order they first appear."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(r["configuration"], []).append(r)
    out = []
    for label, runs in groups.items():
        ok = [r for r in runs if r["status"] == "COMPLETE"]
        out.append(Summary(
            configuration=label, kind=runs[0]["kind"], runs=len(runs), ok=len(ok),
            seeds=[r["seed"] for r in runs],
            test_acc=_mean_std([r["test_acc"] for r in ok]), bwt=_mean_std([r["bwt"] for r in ok]),
            val_acc=_mean_std([r["val_acc"] for r in ok]),
            wall_seconds=_mean_std([r["wall_seconds"] for r in ok])[0],
            kb_params=runs[0]["kb_params"], task_params=runs[0]["task_params"], settings=runs[0]["settings"]))
    return out


TABLE_HEAD = ["configuration", "seeds", "test ACC (%)", "BWT (%)", "val ACC (%)", "wall time (s)",
              "shared KB params", "per task F+M+C params", "settings"]


def table_cells(s: Summary) -> list[str]:
    pm = format_mean_std
    return [s.configuration, f"{s.ok}/{s.runs}", pm(s.test_acc), pm(s.bwt, sign=True), pm(s.val_acc),
            "-" if not math.isfinite(s.wall_seconds) else f"{s.wall_seconds:.1f}",
            _k(s.kb_params), _k(s.task_params), _settings_text(s.settings)]


def format_markdown(summaries: list[Summary], *, experiment: str, seeds: Sequence[int], note: str = "",
                    default_rule: str = "", data_seeds: Sequence[int] | None = None) -> str:
    over = f"seeds {list(seeds)}" if data_seeds is None else \
        f"class orders (data seeds) {list(data_seeds)} x initialisation seeds {list(seeds)}"
    lines = [f"# Evaluation of `{experiment}`", "",
             f"Test ACC and BWT (GEM) after the last task, mean ± std over {over} "
             "(sample std; the search's own initialisation seed is never reused). Validation ACC chose the configurations; "
             "test ACC is only reported. Parameters: the shared Knowledge Base, and what each task adds "
             "(its feature extractor F_t, mask generator M_t and classifier C_t).", ""]
    if default_rule:
        lines += [f"Default configuration: {default_rule}.", ""]
    if note:
        lines += [f"Note: {note}.", ""]
    lines += ["| " + " | ".join(TABLE_HEAD) + " |", "|" + "---|" * len(TABLE_HEAD)]
    for s in summaries:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in table_cells(s)) + " |")
    return "\n".join(lines) + "\n"


def format_mean_std(ms: tuple[float, float], sign: bool = False) -> str:
    """``(mean, std)`` of fractions as percent: ``97.45 ± 2.05`` (``-`` when there is no mean)."""
    mean, std = ms
    if not math.isfinite(mean):
        return "-"
    m = f"{100 * mean:+.2f}" if sign else f"{100 * mean:.2f}"
    return m if not math.isfinite(std) else f"{m} ± {100 * std:.2f}"


def _mean_std(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else math.nan)


def _k(n: int) -> str:
    return f"{n / 1000:.1f}k" if n >= 1000 else str(n)


def _settings_text(settings: str) -> str:
    try:
        data = json.loads(settings)
    except (TypeError, json.JSONDecodeError):
        return str(settings)
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in data.items())


def as_float(value: Any) -> float:
    """``value`` as a float; NaN when it is none (an empty CSV cell, None)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return "" if not math.isfinite(value) else repr(value)
    return value
