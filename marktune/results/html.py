"""The report page: one self-contained HTML file (CSS inline, figures embedded as base64 PNG).

Built from a loaded experiment (``marktune.results.experiment``), its evaluation files
(``marktune.results.evaluation_table``, ``marktune.results.conclusions``) and the parameter
importances the caller read from the Optuna study. ``python -m marktune.report`` calls
:func:`build_report`; see ``marktune.cli.report`` for what the page shows.
"""
from __future__ import annotations

import html
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marktune.results import conclusions
from marktune.results.evaluation_table import TABLE_HEAD, aggregate, read_csv, table_cells
from marktune.results.experiment import Experiment, Trial
from marktune.results.files import write_atomic
from marktune.results.pareto import evaluation_points, search_points
from marktune.results.figures import (STATUS_COLOURS, figure_curves, figure_importances, figure_matrix,
                                      save_png)

CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1150px;
       color: #222; background: #fff; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #eef2f7; } td.l, th.l { text-align: left; } td:not(.l) { white-space: nowrap; }
tr.best td { background: #e8f5e9; font-weight: 600; } tr.tied td { background: #f1f8e9; }
.st { font-weight: 600; } .note { background: #fff8e1; border-left: 4px solid #f0ad4e; padding: 6px 10px; }
.verdict { font-size: 16px; font-weight: 600; background: #eef2f7; border-left: 4px solid #2166ac; padding: 8px 12px; }
img { max-width: 100%; border: 1px solid #eee; } .muted { color: #666; font-size: 13px; }
"""
# a table of trials lists at most this many (the best first, and every non-dominated one): at
# 10,000 trials the page would hold 20,000 rows no one reads; trials.csv has them all
TABLE_ROWS = 100


def _fmt(v: float, sign: bool = False) -> str:
    if v is None or not isinstance(v, (int, float)) or not math.isfinite(v):
        return "-"
    return f"{v:+.4f}" if sign else f"{v:.4f}"


def _flops(v: float) -> str:  # marktune.mark.flops: training FLOPs of the tasks it ran
    return f"{v:.3g}" if isinstance(v, (int, float)) and math.isfinite(v) else ""


def _val(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else html.escape(str(v))


def trials_table(exp: Experiment, best: Trial | None) -> str:
    ties = exp.ties()
    head = ["trial", "status", "tasks", "val ACC", "test ACC", "BWT", "tied", "training FLOPs", *exp.searched]
    out = ["<table id='best-trials-table'><tr>" + "".join(
        f"<th class='l'>{html.escape(h)}</th>" if i < 2 else f"<th>{html.escape(h)}</th>" for i, h in enumerate(head))
        + "</tr>"]
    ranked = exp.ranked()
    shown = ranked[:TABLE_ROWS] + [t for t in ranked[TABLE_ROWS:] if best is not None and t.trial_id == best.trial_id]
    for t in shown:
        mark = ties.mark(t.trial_id) if ties is not None and t.status == "COMPLETE" else ""
        cls = (" class='best'" if best is not None and t.trial_id == best.trial_id
               else " class='tied'" if mark == "tied" else "")
        colour = STATUS_COLOURS.get(t.status, "#444")
        cells = [f"<td class='l'>{html.escape(t.trial_id)}</td>",
                 f"<td class='l st' style='color:{colour}'>{t.status}</td>",
                 f"<td>{t.tasks_done}/{exp.num_tasks}</td>", f"<td>{_fmt(t.val_acc)}</td>",
                 f"<td>{_fmt(t.test_acc)}</td>", f"<td>{_fmt(t.bwt, sign=True)}</td>",
                 f"<td class='l tie'>{mark if mark != 'no' else ''}</td>", f"<td>{_flops(t.last('train_flops'))}</td>",
                 *[f"<td>{_val(t.config.get(k))}</td>" for k in exp.searched]]
        out.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    out.append("</table>")
    if len(shown) < len(ranked):
        out.append(f"<p class='muted' id='more-trials'>{len(ranked) - len(shown)} more trials, ranked below these: "
                   f"every trial is in {html.escape(str(exp.path / 'trials.csv'))}.</p>")
    if ties is not None:
        out.append(f"<p id='noise-floor' class='note'>{html.escape(ties.sentence(str(exp.path)))}</p>")
    errors = [t for t in exp.trials if t.status == "ERROR"]
    for t in errors:
        out.append(f"<p class='muted'>{html.escape(t.trial_id)} errored: {html.escape(t.error)}</p>")
    return "\n".join(out)


def evaluation_section(exp: Experiment) -> str:
    csv_path, md_path = exp.path / "evaluation.csv", exp.path / "evaluation.md"
    if csv_path.is_file():
        try:
            summaries = aggregate(read_csv(csv_path))
        except (OSError, KeyError, ValueError) as err:
            return f"<p class='note'>evaluation.csv cannot be read: {html.escape(str(err))}</p>"
        rows = ["<table id='evaluation-table'><tr>" + "".join(
            f"<th class='l'>{html.escape(h)}</th>" if h in ("configuration", "settings") else f"<th>{html.escape(h)}</th>"
            for h in TABLE_HEAD) + "</tr>"]
        for s in summaries:
            cells = table_cells(s)
            rows.append("<tr>" + "".join(
                f"<td class='l'>{html.escape(c)}</td>" if i in (0, len(cells) - 1) else f"<td>{html.escape(c)}</td>"
                for i, c in enumerate(cells)) + "</tr>")
        rows.append("</table>")
        seeds = sorted({seed for s in summaries for seed in s.seeds})
        return (f"<p>Every configuration re-run with seeds {seeds} (fresh: not the search's). Test ACC and BWT "
                "after the last task, mean ± std over seeds, in %.</p>" + "\n".join(rows))
    if md_path.is_file():
        return f"<pre>{html.escape(md_path.read_text())}</pre>"
    return (f"<p class='muted'>No evaluation yet. Run <code>python -m marktune.evaluate {html.escape(str(exp.path))}</code> "
            "to re-run the best configurations over fresh seeds, then this report again.</p>")


def pareto_section(exp: Experiment, figures: Path) -> str:
    """Accuracy against total parameters and compute seconds, the non-dominated joined."""
    from marktune.results.pareto import figure, pareto_front

    parts = ["<p>What a configuration costs: total parameters (the shared KB plus T times a task's "
             "feature extractor, mask generator and classifier, counted from the configuration) and compute "
             "seconds. Red, joined and labelled: the non-dominated ones (no other is both cheaper and more "
             "accurate).</p>"]
    objectives = exp.objectives()
    found = {t.trial_id for t in exp.pareto_set()}
    if len(objectives) > 1:
        parts.append(f"<p id='search-front'>This search optimised {', '.join(o.name for o in objectives)} "
                     f"together; the Pareto set it found ({len(found)} complete trials, on its last reported "
                     f"values): {html.escape(', '.join(sorted(found))) or '-'}. They are marked "
                     "<b>search's set</b> in the table below.</p>")
    views = [("search", search_points(exp), "validation ACC after the last task",
              f"{exp.name}: complete trials", "pareto_search.png", "pareto-search-table"),
             ("evaluation", evaluation_points(exp), "test ACC (mean over seeds)",
              f"{exp.name}: evaluated configurations", "pareto_evaluation.png", "pareto-evaluation-table")]
    for kind, points, ylabel, title, png, table_id in views:
        if not points:
            if kind == "search":
                parts.append("<p class='note'>No complete trial yet: no trade-off to show.</p>")
            continue
        b64 = save_png(figure(points, title=title, accuracy_label=ylabel), figures / png)
        parts.append(f"<h3>{'Search' if kind == 'search' else 'Evaluation'}</h3>")
        parts.append(f"<img alt='pareto front of the {kind}' src='data:image/png;base64,{b64}'>")
        on_params = {points[i].label for i in pareto_front([(p.params, p.accuracy) for p in points])}
        on_seconds = {points[i].label for i in pareto_front([(p.seconds, p.accuracy) for p in points])}
        rows = [f"<table id='{table_id}'><tr><th class='l'>{'trial' if kind == 'search' else 'configuration'}</th>"
                f"<th>{html.escape(ylabel)}</th><th>total params</th><th>compute s</th>"
                "<th class='l'>non-dominated on</th></tr>"]
        ranked = sorted(points, key=lambda p: -p.accuracy)
        listed = [p for i, p in enumerate(ranked)
                  if i < TABLE_ROWS or p.label in on_params | on_seconds or (kind == "search" and p.label in found)]
        for p in listed:
            on = ", ".join(w for w, s in (("params", on_params), ("seconds", on_seconds)) if p.label in s)
            if kind == "search" and p.label in found:
                on = f"<b>search's set</b>{'; ' + on if on else ''}"
            rows.append(f"<tr><td class='l'>{html.escape(p.label)}</td><td>{_fmt(p.accuracy)}</td>"
                        f"<td>{p.params:,.0f}</td><td>{p.seconds:.1f}</td><td class='l'>{on or '-'}</td></tr>")
        rows.append("</table>")
        if len(listed) < len(ranked):
            rows.append(f"<p class='muted'>{len(ranked) - len(listed)} more, dominated and less accurate than these: "
                        "trials.csv and evaluation.csv have them all.</p>")
        parts.append("\n".join(rows))
    return "\n".join(parts)


# ---------------------------------------------------------------- conclusions (marktune.results.conclusions)
def latest_conclusion(exp: Experiment):
    """The conclusion of the latest evaluation (evaluation.csv + evaluation.json), or None."""
    record = conclusions.load_record(exp.path / conclusions.RECORD_FILE)
    if record is None or not (exp.path / "evaluation.csv").is_file():
        return None
    try:
        return conclusions.conclude(read_csv(exp.path / "evaluation.csv"), record)
    except (OSError, KeyError, ValueError):
        return None


def verdict_paragraph(exp: Experiment) -> str:
    """The page's opening sentence: is the best configuration better than the default?"""
    conclusion = latest_conclusion(exp)
    if conclusion is None and (exp.path / "evaluation.csv").is_file():
        return ("<p id='verdict' class='verdict'>No verdict: this experiment's evaluation has no paired record "
                "(evaluation.json; written by marktune.evaluate since paired statistics). Run "
                f"<code>python -m marktune.evaluate {html.escape(str(exp.path))}</code> again for one.</p>")
    if conclusion is None:
        return ("<p id='verdict' class='verdict'>Not evaluated yet, so no verdict: run "
                f"<code>python -m marktune.evaluate {html.escape(str(exp.path))}</code> to compare the best "
                "configurations with the default on paired seeds.</p>")
    return (f"<p id='verdict' class='verdict'>{html.escape(conclusion.sentence)}</p>"
            f"<p class='muted'>Selection: {html.escape(conclusion.record.protocol.label())}.</p>")


def confirmation_section(exp: Experiment) -> str:
    """The confirmation stage's finalists, their mean and SE over seeds, and its winner; '' when the
    search had no such stage."""
    from marktune.results.confirmation import ConfirmedTrial, read_confirmation

    plan = read_confirmation(exp.path)
    if plan is None:
        return ""
    head = "<h2 id='confirmation'>Confirmation stage</h2>"
    seeds = ", ".join(map(str, plan.seeds))
    results = plan.verdict.get("results")
    if not results:
        return (head + f"<p class='note'>Planned, not finished: finalists "
                f"{html.escape(', '.join(f.trial_id for f in plan.finalists))} at seeds {seeds}; "
                "best_config.yaml is still the one-seed pick. Continue it with the search's --resume.</p>")
    winner = plan.verdict.get("winner")
    rows = ["<table id='confirmation-table'><tr><th class='l'>trial</th><th>val ACC (search)</th>"
            "<th>mean val ACC</th><th>SE</th><th>seeds</th><th>mean test ACC</th><th class='l'></th></tr>"]
    for r in results:
        c = ConfirmedTrial(trial_id=r["trial_id"], seeds=tuple(r["seeds"]), vals=tuple(r["vals"]),
                           tests=tuple(r["tests"]))
        cells = [f"{c.vals[0]:.4f}", *(f"{v:.4f}" if math.isfinite(v) else "-" for v in (c.mean, c.se)),
                 str(len(c.seeds)), f"{c.test_mean:.4f}" if math.isfinite(c.test_mean) else "-"]
        rows.append(f"<tr><td class='l'>{html.escape(c.trial_id)}</td>" + "".join(f"<td>{x}</td>" for x in cells)
                    + f"<td class='l'>{'winner' if c.trial_id == winner else ''}</td></tr>")
    rows.append("</table>")
    pick = plan.finalists[0].trial_id
    said = (f"the winner is <b>{html.escape(str(winner))}</b>" if winner else "no finalist ran at every seed")
    return (head + f"<p>The top {len(plan.finalists)} trials re-ran at {len(plan.seeds)} more seeds ({seeds}); "
            f"{said}, on the mean validation ACC over its seeds (the search's one-seed pick was "
            f"{html.escape(pick)}). best_config.yaml holds the winner. Test ACC is reported, never used.</p>"
            + "\n".join(rows))


def paired_section(exp: Experiment) -> str:
    """The paired table against the default, with the interval's method and the rank stability."""
    from marktune.results.statistics import METHOD

    conclusion = latest_conclusion(exp)
    if conclusion is None:
        return "<p class='muted'>No paired evaluation yet (evaluation.json is written by marktune.evaluate).</p>"
    record = conclusion.record
    first_k = record.protocol.name == "first-k"
    head = conclusions.paired_table_head(record)
    rows = ["<table id='paired-table'><tr>" + "".join(
        f"<th class='l'>{html.escape(h)}</th>" if i == 0 else f"<th>{html.escape(h)}</th>" for i, h in enumerate(head))
        + "</tr>"]
    for r in conclusion.results:
        cells = conclusions.result_cells(r, first_k=first_k)
        rows.append("<tr>" + "".join(f"<td class='l'>{html.escape(c)}</td>" if i == 0 else f"<td>{html.escape(c)}</td>"
                                     for i, c in enumerate(cells)) + "</tr>")
    rows.append("</table>")
    return (f"<p>Every configuration ran on the same (data_seed, seed) pairs: data seeds {record.data_seeds} x seeds "
            f"{record.seeds}, on {html.escape(record.benchmark)}. Compared with the default on "
            f"{html.escape(conclusions.headline_words(record))}, pair by pair; interval: {html.escape(METHOD)}.</p>"
            + "\n".join(rows) + f"<p>{html.escape(conclusions.rank_sentence(conclusion))}</p>")


def protocol_gap_section(exp: Experiment) -> str:
    """The same configurations under every protocol evaluated: how optimistic was the tuning?"""
    evaluations = conclusions.load_all(exp.path)
    if not evaluations:
        return ("<p class='muted'>No evaluation kept in evaluations/ yet. Each run of marktune.evaluate (per "
                "protocol and --benchmark) adds a column here.</p>")
    columns: list[tuple[str, dict]] = []
    for record, rows in evaluations:
        columns += conclusions.gap_columns(record, rows)
    trials = {t.trial_id: t for t in exp.trials}
    labels: list[str] = []
    sources: dict[str, str] = {}
    for _, rows in evaluations:
        for r in rows:
            if r["configuration"] not in labels:
                labels.append(r["configuration"])
                # an ablation's source trial ran other settings: the search saw nothing of it
                sources[r["configuration"]] = "" if r.get("kind") == "ablation" else r.get("source_trial", "")
    protocol = evaluations[0][0].protocol
    searched = (f"tasks 1-{protocol.tuning_tasks}" if protocol.name == "first-k" else "the whole stream") \
        + f", data seed {protocol.searched_data_seed}"
    head = ["configuration", f"search: val ACC (selected on; {searched})", f"search: test ACC (same run; {searched})",
            *[c[0] for c in columns]]
    out = ["<table id='protocol-gap-table'><tr>" + "".join(
        f"<th class='l'>{html.escape(h)}</th>" if i == 0 else f"<th>{html.escape(h)}</th>" for i, h in enumerate(head))
        + "</tr>"]
    for label in labels:
        trial = trials.get(sources.get(label, ""))
        cells = [f"<td class='l'>{html.escape(label)}</td>",
                 f"<td>{_pct(trial.val_acc) if trial else '-'}</td>", f"<td>{_pct(trial.test_acc) if trial else '-'}</td>"]
        for _, values in columns:
            mean, std = values.get(label, (math.nan, math.nan))
            cells.append(f"<td>{_pct(mean)}{'' if not math.isfinite(std) else f' ± {100 * std:.2f}'}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return ("<p>The same configurations' test ACC (%) under each protocol evaluated, beside what the search saw "
            "when it selected them. Figures on tasks or class orders the search selected on are optimistic; "
            "held-out tasks, other class orders and other benchmarks are not. The distance between the "
            "columns is how optimistic the tuning was.</p>" + "\n".join(out))


def _pct(v: float) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{100 * v:.2f}"


@dataclass(frozen=True)
class Importances:
    """The study's parameter importances for the page, or None and why (``note``)."""

    values: dict[str, float] | None
    note: str  # a sentence for the page: how they were computed and where from, or why there are none


def curves_section(exp: Experiment, best, figures: Path) -> str:
    if not any(t.results for t in exp.trials):
        return "<p class='note'>No trial has reported a task yet.</p>"
    b64 = save_png(figure_curves(exp, best), figures / "curves.png")
    return (f"<img alt='validation curves of all trials' src='data:image/png;base64,{b64}'>\n"
            "<p class='muted'>Solid: ran every task; dashed with a cross: stopped early by ASHA; "
            "dotted: unfinished. Thick: the best trial.</p>")


def matrix_section(shown, best, figures: Path) -> str:
    """The accuracy matrix of ``shown``: the best complete trial, else the one that got furthest."""
    if shown is None:
        return "<p class='note'>No trial has reported a task yet.</p>"
    b64 = save_png(figure_matrix(shown), figures / "accuracy_matrix.png")
    what = "the best complete trial" if shown is best else "no trial is complete; the one that got furthest"
    return (f"<p>Trial {html.escape(shown.trial_id)} ({what}): row t = after training task t, "
            "column u = the task evaluated.</p>\n"
            f"<img alt='accuracy matrix heat map' src='data:image/png;base64,{b64}'>")


def importances_section(importances: Importances, figures: Path) -> str:
    if importances.values is None:
        return f"<p class='note'>{html.escape(importances.note)}</p>"
    b64 = save_png(figure_importances(importances.values), figures / "importances.png")
    return (f"<p>{html.escape(importances.note)}</p>\n"
            f"<img alt='parameter importances' src='data:image/png;base64,{b64}'>\n"
            "<table id='importances-table'><tr><th class='l'>setting</th><th>importance</th></tr>"
            + "".join(f"<tr><td class='l'>{html.escape(k)}</td><td>{v:.3f}</td></tr>"
                      for k, v in importances.values.items()) + "</table>")


def build_report(exp: Experiment, out: Path | None = None, *, importances: Importances) -> Path:
    """Write report.html and figures/*.png; return the HTML file's path.

    ``importances``: from the search's Optuna study (the caller reads it; this layer has no study)."""
    out = out or exp.path / "report.html"
    figures = exp.path / "figures"
    figures.mkdir(exist_ok=True)
    best_list = exp.best_complete(1)
    best = best_list[0] if best_list else None
    shown = best or next((t for t in exp.ranked() if t.results), None)  # heat map: best, else the furthest

    counts = {s: len(exp.by_status(s)) for s in STATUS_COLOURS}
    parts = [f"<h1>marktune search report: {html.escape(exp.name)}</h1>", verdict_paragraph(exp),
             f"<p class='muted'>{html.escape(str(exp.path))}<br>benchmark <b>{html.escape(exp.benchmark)}</b>, "
             f"space <b>{html.escape(exp.space_name or 'not recognised')}</b>, {exp.num_tasks} tasks per trial; "
             f"{len(exp.trials)} trials: " + ", ".join(f"{v} {k.lower()}" for k, v in counts.items() if v)
             + f". Made {time.strftime('%Y-%m-%d %H:%M')}.</p>"]
    note = exp.missing_note()
    if note:
        parts.append(f"<p class='note' id='missing-trials'>{html.escape(note[0].upper() + note[1:])}.</p>")

    parts.append("<h2 id='best-trials'>Best trials</h2>")
    parts.append("<p>Ranked by mean validation accuracy after the last task (what the search selects on); "
                 "test ACC is reported, never used to select. BWT on test.</p>")
    if best is None:
        parts.append("<p class='note'>No trial ran every task yet.</p>")
    parts.append(trials_table(exp, best))
    parts.append(confirmation_section(exp))

    parts.append("<h2 id='curves'>Mean validation accuracy per task</h2>")
    parts.append(curves_section(exp, best, figures))
    parts.append("<h2 id='accuracy-matrix'>Accuracy matrix of the best trial</h2>")
    parts.append(matrix_section(shown, best, figures))
    parts.append("<h2 id='importances'>Parameter importances</h2>")
    parts.append(importances_section(importances, figures))

    parts.append("<h2 id='pareto'>Accuracy against size and compute</h2>")
    parts.append(pareto_section(exp, figures))

    parts.append("<h2 id='evaluation'>Evaluation over seeds</h2>")
    parts.append(evaluation_section(exp))
    parts.append("<h2 id='paired'>Paired comparison with the default</h2>")
    parts.append(paired_section(exp))
    parts.append("<h2 id='protocol-gap'>How optimistic was the tuning? (protocol gap)</h2>")
    parts.append(protocol_gap_section(exp))

    page = ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>marktune report: {html.escape(exp.name)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")
    write_atomic(out, page)
    return out
