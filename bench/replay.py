"""Replay bench: how random search, TPE, ASHA and first-k would have done on recorded curves (issue 21).

Replays a curves table (``curves.csv``, :mod:`marktune.results.curves`) offline with the search's
own searcher and scheduler on simulated workers (:mod:`marktune.replay.search`), many times, and
prints per strategy the regret (best final test ACC of the table minus that of the configuration
picked by validation) at 25, 50 and 100 % of the task-trainings of a full random search of the
same sample count, with 95 % t intervals over the replay seeds; then Kendall's tau of each rung
(val ACC after task k) against the final values.

Scored on held-out seeds by default (``--score held-out``, :mod:`marktune.replay.seed_roles`): each
replay's trials all run at one recorded seed and the pick is worth its configuration's mean final
test ACC at the other seeds; the replays rotate through the seeds. ``--score seen`` scores on every
recorded seed, the one the pick was selected at included (biased; for tables of one seed).

    PYTHONPATH=. .venv/bin/python bench/replay.py bench/curves/fmnist.csv --space search_spaces/fmnist.yaml
    PYTHONPATH=. .venv/bin/python bench/replay.py --synthetic 48 --space search_spaces/fmnist.yaml --samples 48
    ... [--samples N] [--workers 2] [--replay-seeds 20] [--jobs 2] [--surrogate weighted|nearest] [--markdown FILE]
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from marktune.cli.flags import at_least  # noqa: E402
from marktune.mark.hardware import cpu_model_name  # noqa: E402
from marktune.results.curves import CurvesError, read_curves, write_curves  # noqa: E402
from marktune.replay.seed_roles import SEEN_WARNING, TooFewSeedsError, assignments, table_seeds  # noqa: E402
from marktune.replay.grid import Strategy, benchmark_strategies, standard_strategies  # noqa: E402
from marktune.replay.repeats import FRACTIONS, Interval, StrategyResult, replay_strategies  # noqa: E402
from marktune.replay.features import DEFAULT_FOLDS  # noqa: E402
from marktune.replay.surrogates import SURROGATES, WeightedNearest, make_surrogate  # noqa: E402
from marktune.replay.table import ReplayTable, ReplayTableError, check_table, synthetic_curves  # noqa: E402
from marktune.tune.spaces import load_space  # noqa: E402

RANDOM_FROM_TABLE = ("random search draws the table's configurations without replacement (the table of a "
                     "random search without pruning is a sample of the random sampler's proposals; no "
                     "surrogate error)")
RANDOM_FROM_SAMPLER = "random search asks Optuna's RandomSampler, mapped to the table by the surrogate"


def points(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.2f}"


def cell(interval: Interval, seeds: int) -> str:
    """Regret in ACC points, mean [95 % interval]; how many seeds had a pick when not all did."""
    if interval.n == 0:
        return "no pick"
    text = f"{points(interval.mean)} [{points(interval.low)}, {points(interval.high)}]"
    return text + (f" ({interval.n}/{seeds} picked)" if interval.n < seeds else "")


def rows(results: list[StrategyResult]) -> list[list[str]]:
    out = []
    for r in results:
        out.append([r.strategy.name, *[cell(r.regrets[f], r.seeds) for f in FRACTIONS],
                    f"{100 * r.trainings.mean:.0f} %", f"{r.wall_s.mean:.0f}"])
    return out


HEADER = ["strategy", *[f"regret at {int(100 * f)} %" for f in FRACTIONS], "task-trainings used", "wall s"]


def text_table(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *body])


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                      *["| " + " | ".join(row) + " |" for row in body]])


def _startups(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers separated by commas, got {text!r}") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError("n_startup_trials cannot be negative")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("curves", nargs="?", type=Path, help="a curves table (curves.csv); or --synthetic")
    parser.add_argument("--space", required=True, help="the space the table was recorded in (name or .yaml)")
    parser.add_argument("--samples", type=at_least(1), default=None, help="trials per replayed search (default: the "
                        "space's defaults.samples)")
    parser.add_argument("--workers", type=at_least(1), default=2, help="simulated parallel workers")
    parser.add_argument("--replay-seeds", type=at_least(1), default=20)
    parser.add_argument("--jobs", type=at_least(1), default=min(2, os.cpu_count() or 1), help="processes")
    parser.add_argument("--tpe-startup", type=_startups, default=[None], metavar="N[,N...]",
                        help="TPE's n_startup_trials, one TPE strategy set per value (default: Optuna's, "
                        "10, as the search)")
    parser.add_argument("--random-from", choices=("table", "sampler"), default="table")
    parser.add_argument("--grid", action="store_true",
                        help="replay the benchmark grid instead (marktune.replay.grid.benchmark_strategies: random, "
                        "QMC, TPE with and without the constant liar, TPE independent and grouped, GP, each with no "
                        "pruning, ASHA g1/g2 x r2/r3 and asynchronous Hyperband; first-k)")
    parser.add_argument("--only", default=None, metavar="LABEL[,LABEL...]",
                        help="--grid: only these proposals (random, random-sampler, qmc, tpe, 'tpe no-liar', "
                        "tpe-independent, tpe-group, gp, first-k)")
    parser.add_argument("--schedulers", default=None, metavar="LABEL[,LABEL...]",
                        help="--grid: only these schedulers ('' for none, 'asha g1 r2', ..., 'hyperband g1 r2')")
    parser.add_argument("--surrogate", choices=list(SURROGATES), default="gp",
                        help="what stands for a proposal outside the table: gp (default; the curve a Gaussian "
                        "process on logit ACC predicts, plus a recorded seed's noise; bench/surrogates.py chose "
                        "it), weighted (the nearest recorded configuration under per-setting weights fitted on "
                        "the table) or nearest (all settings alike)")
    parser.add_argument("--synthetic", type=int, default=None, metavar="N",
                        help="replay a synthetic table of N configurations instead of a file")
    parser.add_argument("--score", choices=("held-out", "seen"), default="held-out",
                        help="held-out (default): a pick is scored on recorded seeds its search did not run at; "
                        "seen: on every recorded seed, its own included (biased; a table of one seed needs it)")
    parser.add_argument("--save-table", type=Path, default=None, help="write the (synthetic) table here")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the tables as markdown here")
    args = parser.parse_args(argv)
    if (args.curves is None) == (args.synthetic is None):
        parser.error("give a curves table or --synthetic N (one of them)")
    started = time.perf_counter()
    space = load_space(args.space)
    try:  # the table is checked before any work starts
        curves = (synthetic_curves(space=space, configs=args.synthetic, seed=0) if args.synthetic
                  else read_curves(args.curves))
        checked = check_table(curves, space, source=str(args.curves or "the synthetic table"))
    except (ReplayTableError, CurvesError, OSError) as err:
        print(f"replay bench: {err}", file=sys.stderr)
        return 2
    roles = None
    if args.score == "held-out":
        try:
            roles = assignments(table_seeds(ReplayTable.from_curves(curves).configs), confirm=0)
        except (TooFewSeedsError, ReplayTableError) as err:
            print(f"replay bench: {args.curves or 'the synthetic table'}: {err}", file=sys.stderr)
            return 2
    if args.save_table:
        write_curves(args.save_table, curves.rows, searched=curves.searched)
    table = ReplayTable.from_curves(curves)
    surrogate = make_surrogate(kind=args.surrogate, table=table, space=space)  # fitted once per table
    samples = args.samples or int(space.defaults["samples"])
    seeds = list(range(args.replay_seeds))
    if args.grid:
        strategies = benchmark_strategies(
            num_tasks=table.num_tasks, n_startup_trials=args.tpe_startup[0],
            proposals=args.only.split(",") if args.only is not None else None,
            schedulers=args.schedulers.split(",") if args.schedulers is not None else None)
    else:
        strategies = standard_strategies(num_tasks=table.num_tasks, tpe_startups=args.tpe_startup)
    if args.random_from == "sampler":
        strategies = [Strategy(**{**s.__dict__, "proposals": "random-sampler"}) if s.proposals == "table"
                      and s.stop_after is None else s for s in strategies]
    results = replay_strategies(table=table, space=space, strategies=strategies, samples=samples,
                                workers=args.workers, seeds=seeds, surrogate=surrogate, jobs=args.jobs, roles=roles)
    loo, loo_mean = surrogate.leave_one_out()
    best = max(table.configs, key=lambda c: c.final_test)
    source = "synthetic table" if args.synthetic else str(args.curves)
    intro = [
        f"replay bench: {source}: {len(table.configs)} configurations, {table.num_tasks} tasks"
        + (f", {table.dropped} incomplete curve(s) dropped" if table.dropped else "") + f"; space {space.path}",
        *([f"runs that ended in an error ({len(checked.errored)} of {checked.runs}, not replayed): "
           + "; ".join(map(str, checked.errored))] if checked.errored else []),
        f"machine: {cpu_model_name()}, {args.jobs} process(es)",
        f"{len(seeds)} replay seeds x {samples} samples on {args.workers} simulated workers; budget "
        f"{samples * table.num_tasks} task-trainings ({samples} samples x {table.num_tasks} tasks)",
        f"proposals: {RANDOM_FROM_TABLE if args.random_from == 'table' else RANDOM_FROM_SAMPLER}; TPE "
        f"(n_startup_trials {', '.join(str(n or 10) for n in args.tpe_startup)}) through MarkOptunaSearch; "
        "ASHA through make_scheduler",
        f"surrogate for proposals outside the table (--surrogate {args.surrogate}): {surrogate.name}; "
        f"cross-validated mean absolute error of the final val ACC (each configuration predicted without its "
        f"fold, {DEFAULT_FOLDS} folds; nearest: exact leave-one-out) {points(loo)} points (predicting the mean of "
        f"the others: {points(loo_mean)})",
        f"best final test ACC in the table: {best.final_test:.4f} ({best.key}, its mean over every seed)",
        (f"scored on held-out seeds: each replay's trials run at one recorded seed and a pick is worth its mean final "
         f"test ACC at the others, the regret's reference the best such mean; the replays rotate through "
         f"{len(roles)} assignments ({'; '.join(map(str, roles))})" if roles else SEEN_WARNING),
    ]
    if isinstance(surrogate, WeightedNearest):
        shares = sorted(surrogate.setting_weights().items(), key=lambda kv: -kv[1])
        intro.insert(-1, "surrogate's weight per setting (share of the total): "
                     + ", ".join(f"{name} {share:.2f}" for name, share in shares))
    regret_note = ("regret in ACC points (best final test ACC of the table minus the picked configuration's), "
                   f"mean [95 % t interval] over {len(seeds)} replay seeds, at a fraction of the budget; "
                   "first-k picks by val after k tasks and pays k task-trainings per trial")
    taus = [[str(k), f"{tv:.2f}", f"{tt:.2f}"] for k, tv, tt in table.rung_tau()]
    tau_header = ["val after task k", "tau vs final val", "tau vs final test"]
    elapsed = time.perf_counter() - started
    print("\n".join(intro))
    print(f"\n{regret_note}\n{text_table(HEADER, rows(results))}")
    print(f"\nKendall's tau of each rung against the final values, over {len(table.configs)} configurations\n"
          f"{text_table(tau_header, taus)}")
    print(f"\nreplay took {elapsed:.1f} s")
    if args.markdown:
        args.markdown.write_text("\n".join(f"{line}  " for line in intro) + f"\n\n{regret_note}\n\n"
                                 + markdown_table(HEADER, rows(results))
                                 + f"\n\nKendall's tau of each rung against the final values, over "
                                 f"{len(table.configs)} configurations\n\n" + markdown_table(tau_header, taus) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
