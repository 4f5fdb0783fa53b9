"""Which surrogate predicts a recorded table best? Each candidate cross-validated, beside the noise.

For a curves table and its space, every configuration's seed-mean val curve is predicted by each
surrogate of :data:`marktune.replay.curve_models.CURVE_MODELS` fitted without it (``--folds`` folds
over configurations; ``--folds 0``: exact leave-one-out), and printed: the mean absolute error of
the final val ACC and of the whole curve, the bar of predicting the mean of the others, the pooled
seed-to-seed SD of the configurations predicted and the ratio error / SD (the goal: at most 1.5),
and for a model with an uncertainty the share of finals within 2 of its predicted SD. Over all
configurations, then over the top quarter and the top 10 % by recorded final val (where a search
decides).

    PYTHONPATH=. .venv/bin/python bench/surrogates.py bench/curves/digits.csv --space digits
    ... [--models nearest,weighted,forest,gp] [--folds 10] [--markdown FILE]
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from marktune.mark.hardware import cpu_model_name  # noqa: E402
from marktune.replay.curve_models import CURVE_MODELS, cross_validate, score  # noqa: E402
from marktune.replay.features import DEFAULT_FOLDS, table_features  # noqa: E402
from marktune.replay.table import ReplayTable, ReplayTableError, check_table  # noqa: E402
from marktune.results.curves import CurvesError, read_curves  # noqa: E402
from marktune.tune.spaces import load_space  # noqa: E402

HEADER = ["surrogate", "configurations", "final error", "curve error", "mean-of-others error", "seed SD",
          "error / seed SD", "within 2 SD", "fit s"]


def points(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("curves", type=Path, help="a curves table (curves.csv)")
    parser.add_argument("--space", required=True, help="the space the table was recorded in (name or .yaml)")
    parser.add_argument("--models", default=",".join(CURVE_MODELS),
                        help=f"comma-separated, of {', '.join(CURVE_MODELS)} (default: all)")
    parser.add_argument("--folds", type=int, default=DEFAULT_FOLDS,
                        help=f"folds over configurations (default {DEFAULT_FOLDS}; 0: leave-one-out)")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table as markdown here")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in CURVE_MODELS]
    if unknown or args.folds < 0 or args.folds == 1:
        parser.error(f"unknown model(s) {', '.join(unknown)}; of {', '.join(CURVE_MODELS)}" if unknown
                     else "--folds must be 0 (leave-one-out) or at least 2")
    try:  # the table is checked before any work starts
        space = load_space(args.space)
        curves = read_curves(args.curves)
        checked = check_table(curves, space, source=str(args.curves))
    except (ReplayTableError, CurvesError, OSError) as err:
        print(f"surrogate bench: {err}", file=sys.stderr)
        return 2
    table = ReplayTable.from_curves(curves)
    x, y = table_features(table, space)
    folds = len(y) if args.folds == 0 else args.folds
    seeds = sorted({cv.seed for c in table.configs for cv in c.curves if cv.seed is not None})
    print(f"surrogate bench: {args.curves}: {len(table.configs)} configurations x {table.num_tasks} tasks, "
          f"seeds {seeds or 'one'} ({table.dropped} incomplete curve(s) left out, {len(checked.errored)} of them "
          f"in error); space {space.path}; {folds} folds over configurations"
          + (" (leave-one-out)" if folds == len(y) else ""))
    print(f"machine: {cpu_model_name()}, one thread; errors in ACC points, mean absolute; the target is the "
          "configuration's seed-mean val ACC", flush=True)
    body = []
    for name in models:
        started = time.perf_counter()
        prediction = cross_validate(CURVE_MODELS[name](), x, y, folds=folds)
        seconds = time.perf_counter() - started
        for top in (0.0, 0.75, 0.9):  # all, the top quarter, the top 10 % by recorded final val
            s = score(table, y, prediction, top=top)
            body.append([name, f"{s.subset} ({s.configs})", points(s.final_error), points(s.curve_error),
                         points(s.mean_of_others_error), points(s.seed_sd),
                         "n/a" if math.isnan(s.ratio) else f"{s.ratio:.2f}",
                         "n/a" if math.isnan(s.coverage) else f"{100 * s.coverage:.0f} %", f"{seconds:.1f}"])
        print(f"  {name}: {seconds:.1f} s", flush=True)
    widths = [max(len(row[i]) for row in [HEADER, *body]) for i in range(len(HEADER))]
    print("\n" + "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [HEADER, *body]))
    if args.markdown:
        args.markdown.write_text("\n".join(["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER),
                                            *["| " + " | ".join(row) + " |" for row in body]]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
