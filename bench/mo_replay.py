"""Accuracy against size: which multi-objective search finds the table's front? Replayed on a dense table.

Each strategy is replayed ``--replay-seeds`` times (``marktune.replay.search.replay``: the
search's own searcher and scheduler on simulated workers) with the objectives val_acc and a cost:
params (``--cost params``, counted from the settings) or training FLOPs (``--cost flops``, read
from ``bench/flops_table.py``'s table of the space, ``--flops-table``). A search reports the
Pareto set of its finished trials by (final val ACC as seen, cost);
it is scored by the hypervolume it misses (``ReplayOutcome.hypervolume_regret``): the table's own
front (each configuration's 3-seed mean final test ACC against its cost) minus the
picks', each pick worth its configuration's mean, in % of the box between the table's best and
worst corners. Also what its most accurate pick (a member of every report) misses of the table's
best, in ACC points, and the task-trainings each used, as a share of a full random search's.

Against them, the search with one objective as shipped (``one objective``: random draws, with
and without the space's ASHA), which reports its best trial and the cheapest trial tied with it
(the summary's sentence); the same hypervolume scores those one or two picks.

Strategies: ``random`` draws from the table (no surrogate error); ``random-sampler``, ``tpe``
(Optuna's multi-objective TPE) and ``nsga2`` propose through the surrogate, so compare them with
``random-sampler``. ``+ asha``: ASHA on val ACC alone; ``+ mo-asha``: the multi-objective ASHA
(``marktune/tune/strategy/mo_asha.py``).

    PYTHONPATH=. .venv/bin/python bench/mo_replay.py bench/curves/digits.csv --space digits \\
        --samples 32 --workers 2 --replay-seeds 20 [--cost flops --flops-table bench/curves/flops/digits.csv] \\
        [--only random,tpe] [--markdown FILE]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from marktune.mark.hardware import cpu_model_name  # noqa: E402
from marktune.replay.costs import FlopsTable, ParameterCounts, final_costs  # noqa: E402
from marktune.replay.repeats import Interval  # noqa: E402
from marktune.replay.search import Strategy, replay  # noqa: E402
from marktune.replay.surrogates import make_surrogate  # noqa: E402
from marktune.replay.table import ReplayTable, check_table  # noqa: E402
from marktune.results.curves import read_curves  # noqa: E402
from marktune.results.objectives import parse_objectives  # noqa: E402
from marktune.tune.spaces import load_space  # noqa: E402


def strategies(cost: str = "params") -> list[Strategy]:
    TWO = parse_objectives(f"val_acc,{cost}")
    out = []
    for label, proposals in (("random", "table"), ("random-sampler", "random-sampler"), ("tpe", "tpe"),
                             ("nsga2", "nsga2")):
        out.append(Strategy(name=label, proposals=proposals, objectives=TWO))
        if proposals in ("table", "tpe"):
            out.append(Strategy(name=f"{label} + asha g2 r3 (val ACC alone)", proposals=proposals,
                                grace_period=2, reduction_factor=3, objectives=TWO, asha_objectives=TWO[:1]))
            for grace, factor in ((2, 3), (1, 2)):
                out.append(Strategy(name=f"{label} + mo-asha g{grace} r{factor}", proposals=proposals,
                                    grace_period=grace, reduction_factor=factor, objectives=TWO))
    return out




def single_objective(space) -> list[Strategy]:
    """The shipped search with its one objective (random draws, the space's ASHA): it reports its
    best trial and the cheapest trial tied with it (the summary's sentence, results/summary.py)."""
    grace, factor = space.defaults["grace_period"], space.defaults["reduction_factor"]
    return [Strategy(name="one objective: random", proposals="table"),
            Strategy(name=f"one objective: random + asha g{grace} r{factor} (the space's default)", proposals="table",
                     grace_period=grace, reduction_factor=factor)]


def best_and_cheapest_tied(outcome, seed_sd: float) -> list:
    """A one-objective search's report: its best finished trial and the cheapest finished trial
    tied with it by the summary's rule (seed noise only: a replay knows no validation counts, so
    the binomial SE terms of the live rule are left out)."""
    from marktune.results.noise import Scored, find_ties

    done = [t for t in outcome.trials if t.finished]
    if not done:
        return []
    ties = find_ties([Scored(t.trial_id, t.value, float("nan"), None) for t in done], seed_sd=seed_sd)
    best = next(t for t in done if t.trial_id == ties.best)
    tied = [t for t in done if t.trial_id in ties.tied]
    cheapest = min([best, *tied], key=lambda t: (t.size, -t.value))
    return [best] if cheapest is best else [best, cheapest]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("curves", type=Path)
    p.add_argument("--space", required=True)
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--replay-seeds", type=int, default=20)
    p.add_argument("--only", default="", help="comma-separated strategy names' first words (default: all)")
    p.add_argument("--cost", choices=("params", "flops"), default="params",
                   help="the second objective: parameters, or training FLOPs read from --flops-table")
    p.add_argument("--flops-table", type=Path, help="bench/flops_table.py's table of the space (for --cost flops)")
    p.add_argument("--markdown", type=Path)
    args = p.parse_args(argv)
    if args.cost == "flops" and args.flops_table is None:
        p.error("--cost flops needs --flops-table (bench/flops_table.py writes it)")
    space = load_space(args.space)
    curves = read_curves(args.curves)
    check_table(curves, space, source=str(args.curves))
    table = ReplayTable.from_curves(curves)
    costs = FlopsTable(args.flops_table, space) if args.cost == "flops" else ParameterCounts(space)
    table_sizes = final_costs(costs, [c.params for c in table.configs], tasks=table.num_tasks)
    if any(np.isnan(table_sizes)):
        p.error(f"{args.flops_table} lacks the count of some configuration of the table: resume bench/flops_table.py")
    chosen = [s for s in single_objective(space) + strategies(args.cost) if not args.only or s.name.split(" ")[0] in args.only.split(",")]
    surrogate = None
    started = time.perf_counter()
    body = []
    for strategy in chosen:
        if strategy.proposals != "table" and surrogate is None:
            surrogate = make_surrogate(table=table, space=space)
        regrets, used, best = [], [], []
        t0 = time.perf_counter()
        for seed in range(args.replay_seeds):
            outcome = replay(table=table, space=space, strategy=strategy, samples=args.samples,
                             workers=args.workers, seed=seed, costs=costs,
                             surrogate=None if strategy.proposals == "table" else surrogate)
            # a modelled stand-in is scored by its own settings' size, a table draw by its configuration's
            picks = None if len(strategy.objectives) > 1 else best_and_cheapest_tied(
                outcome, seed_sd=space.noise.seed_sd)
            regrets.append(outcome.hypervolume_regret(table_sizes, picks))
            used.append(outcome.task_trainings / outcome.budget)
            best.append(100 * outcome.regret(1.0))  # its most accurate pick: a member of any report
        i, b = Interval.of(regrets), Interval.of(best)
        body.append([strategy.name, f"{i.mean:.2f} [{i.low:.2f}, {i.high:.2f}]", f"{b.mean:.2f} [{b.low:.2f}, {b.high:.2f}]",
                     f"{100 * np.mean(used):.0f} %", f"{time.perf_counter() - t0:.0f}"])
        print(f"  {strategy.name}: {body[-1][1]}, {body[-1][2]} ({body[-1][4]} s)", file=sys.stderr, flush=True)
    header = ["strategy", "hypervolume regret, % of the box [95 % interval]",
              "most accurate pick: regret, ACC points", "task-trainings", "wall s"]
    intro = (f"mo replay: {args.curves} ({len(table.configs)} configurations; "
             f"{min(table_sizes):,.0f} to {max(table_sizes):,.0f} {args.cost}), space {args.space}, objectives "
             f"val_acc and {args.cost}; {args.samples} samples, {args.workers} workers, {args.replay_seeds} replay seeds; "
             f"{cpu_model_name()}, {time.perf_counter() - started:.0f} s")
    widths = [max(len(r[k]) for r in [header, *body]) for k in range(len(header))]
    print(intro + "\n\n" + "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *body]))
    if args.markdown:
        args.markdown.write_text(intro + "\n\n" + "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                                                             *["| " + " | ".join(r) + " |" for r in body]]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
