"""The report's figures (matplotlib, no display): every trial's curve, an accuracy matrix, importances.

Each ``figure_*`` returns a matplotlib figure; :func:`save_png` writes it to a PNG file and
returns it as base64 for the HTML page. The Pareto figure is ``marktune.results.pareto.figure``.
"""
from __future__ import annotations

import base64
import io
from pathlib import Path

from marktune.results.experiment import Experiment, Trial

STATUS_COLOURS = {"COMPLETE": "#1b7837", "PRUNED": "#b35806", "RUNNING": "#2166ac", "ERROR": "#b2182b",
                  "MISSING": "#777777"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_curves(exp: Experiment, best: Trial | None):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    trials = [t for t in exp.ranked() if t.curve()]
    styles = {"COMPLETE": "-", "PRUNED": "--", "RUNNING": ":", "ERROR": "-."}
    for t in reversed(trials):  # best drawn last, on top
        y = t.curve()
        x = list(range(1, len(y) + 1))
        is_best = best is not None and t.trial_id == best.trial_id
        ax.plot(x, y, styles.get(t.status, "-"), color=STATUS_COLOURS.get(t.status, "#444"),
                lw=3 if is_best else 1.4, alpha=1.0 if is_best else 0.75,
                marker="o", ms=3, label=f"{t.trial_id} ({t.status.lower()}{', best' if is_best else ''})")
        if t.status != "COMPLETE":
            ax.plot(x[-1], y[-1], "x", color=STATUS_COLOURS.get(t.status, "#444"), ms=9, mew=2)
    ax.set_xlabel("tasks trained")
    ax.set_ylabel("mean validation accuracy over tasks seen")
    ax.set_xticks(range(1, max(exp.num_tasks, 1) + 1))
    ax.set_xlim(0.8, max(exp.num_tasks, 1) + 0.2)
    ax.grid(alpha=0.3)
    ax.set_title(f"{exp.name}: every trial (green complete, orange stopped by ASHA, blue unfinished)", fontsize=9)
    if len(trials) <= 16:
        ax.legend(fontsize=7, loc="best", ncol=2)
    fig.tight_layout()
    return fig


def figure_matrix(trial: Trial):
    import numpy as np

    plt = _plt()
    mats = [("test", trial.matrix("test")), ("validation", trial.matrix("val"))]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), dpi=110)
    for ax, (split, rows) in zip(axes, mats):
        T = len(rows)
        A = np.full((T, T), np.nan)
        for t, row in enumerate(rows):
            vals = [float(v) if v is not None else np.nan for v in row[: t + 1]]
            A[t, : len(vals)] = vals
        im = ax.imshow(np.ma.masked_invalid(A), cmap="viridis", vmin=0, vmax=1)
        if T <= 12:
            for t in range(T):
                for u in range(t + 1):
                    if np.isfinite(A[t, u]):
                        ax.text(u, t, f"{A[t, u]:.2f}", ha="center", va="center", fontsize=8,
                                color="white" if A[t, u] < 0.6 else "black")
        ax.set_xlabel("task u (evaluated)")
        ax.set_ylabel("after training task t")
        ax.set_xticks(range(T))
        ax.set_yticks(range(T))
        ax.set_title(f"{split} accuracy R[t][u]", fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"trial {trial.trial_id} ({trial.status.lower()})", fontsize=10)
    fig.tight_layout()
    return fig


def figure_importances(importances: dict[str, float]):
    plt = _plt()
    names = list(importances)[::-1]
    values = [importances[n] for n in names]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.2), dpi=110)
    ax.barh(names, values, color="#4575b4")
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.2f}", va="center", fontsize=8)
    ax.set_xlabel("importance for mean validation accuracy (Optuna, complete trials)")
    ax.set_xlim(0, max(values + [0.01]) * 1.2)
    fig.tight_layout()
    return fig


def save_png(fig, path: Path) -> str:
    """Save the figure to ``path`` and return it as base64 PNG."""
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    data = buf.getvalue()
    path.write_bytes(data)
    return base64.b64encode(data).decode("ascii")
