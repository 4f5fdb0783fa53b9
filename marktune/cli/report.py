"""A search at a glance: ``python -m marktune.report EXPERIMENT_DIR`` writes ``report.html``.

One self-contained HTML file (CSS inline, figures embedded as base64 PNG) that opens with the
latest evaluation's verdict in one sentence (``marktune.results.conclusions``), then:

* the best-trials table (every trial, best validation ACC first, with its searched settings), the
  trials within the noise of the best marked as tied, and a sentence with the noise figures
  (``marktune.results.noise``);
* mean validation accuracy per task of every trial (trials stopped by ASHA end early,
  dashed, with a cross where they stopped; unfinished ones dotted);
* the best trial's accuracy matrices (test and validation) as heat maps;
* parameter importances from the Optuna study, read from its storage (the journal file
  ``optuna_journal.log`` in the experiment directory, or the search's ``--optuna-storage``);
* accuracy against total parameters and against compute seconds, with the Pareto front
  (complete trials; and the evaluation's configurations when there is an evaluation);
* the evaluation table, when ``python -m marktune.evaluate`` has been run, the paired comparison
  with the default, and the protocol gap: the same configurations' figures under every
  protocol evaluated (``evaluations/``), beside what the search saw when it selected them.

The figures are also written as PNG files in ``<experiment>/figures/`` (for papers).
Nothing here needs Ray; it works on a finished or an interrupted search.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from marktune.tune.folders.output import RunFolderTaken, check_report_file
from marktune.results import html as report_html
from marktune.results.experiment import Experiment, ExperimentError
from marktune.tune.spaces import load_experiment_with_space
from marktune.tune.folders.study import param_importances, study_of_experiment


def study_importances(exp: Experiment, *, optuna_storage: str | None = None) -> report_html.Importances:
    """The parameter importances of the search's study, read from its storage (or why there are none)."""
    study, source = study_of_experiment(exp.path, url=optuna_storage)
    if study is None:
        return report_html.Importances(values=None, note=f"No Optuna study: {source}.")
    values, sentence = param_importances(study)
    return report_html.Importances(values=values, note=sentence if values is None else f"{sentence} From {source}.")


def build_report(exp: Experiment, out: Path | None = None, *, optuna_storage: str | None = None) -> Path:
    """Write report.html and figures/*.png for a loaded experiment; return the HTML file's path."""
    return report_html.build_report(exp, out, importances=study_importances(exp, optuna_storage=optuna_storage))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m marktune.report",
        description="Write one self-contained HTML page (and PNG figures) summarising a search.",
        epilog="Example:\n  python -m marktune.report results/fmnist-20261123-190000\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    from marktune.cli import flags

    flags.add_experiment_argument(p)
    p.add_argument("--out", help="HTML file to write (default: <experiment>/report.html); never a file that "
                                 "is not a marktune report, nor into another run's or experiment's folder")
    flags.add_optuna_storage_flag(
        p, help="the study's database, when the search used --optuna-storage with a password "
                "(default: what the search recorded, else its optuna_journal.log)")
    return p


def running_search(path: Path) -> str:
    """Who runs a search of the experiment now, from its lock (a live holder); '' when none."""
    from marktune.results.files import LOCK_FILE
    from marktune.tune.folders.lock import LockHolder, holder_alive

    holder = LockHolder.read(Path(path) / LOCK_FILE)
    return holder.describe() if holder is not None and holder.what == "search" and holder_alive(holder) else ""


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        exp = load_experiment_with_space(args.experiment)
    except ExperimentError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    exp.running = running_search(exp.path)
    out = Path(args.out) if args.out else None
    if out is not None:
        try:
            check_report_file(out, experiment=exp.path)
        except RunFolderTaken as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    note = exp.missing_note()
    if note:
        print(f"[marktune] {note}")
    path = build_report(exp, out, optuna_storage=args.optuna_storage)
    print(f"[marktune] report: {path}")
    print(f"[marktune] figures: {exp.path / 'figures'} ({', '.join(sorted(p.name for p in (exp.path / 'figures').glob('*.png')))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
