"""How should a search pick its winner through the seed noise? The pick rules replayed on a table.

Replays random search (drawn from the table, one recorded seed per trial, or with ``--shared-seed``
one seed for every trial of a replay as in a live search; no pruning, or ASHA
with ``--asha GRACExREDUCTION``) of each
``--samples`` count many times (``--replays``), and scores each pick rule by the regret of what it
picks (the table's best mean final test ACC minus the pick's) and by P, the share of replays whose
pick's mean beats the space's default configuration's mean (``bench/curves/defaults/``):

* ``one seed``: the best final val ACC as seen (what a search does without confirmation);
* ``top K x S``: the top K trials re-run at S more seeds, the winner the best mean val over its
  seeds (the confirmation stage; K x S extra runs);
* ``oracle``: the best mean final test ACC among the trials run (what no rule can beat).

    PYTHONPATH=. .venv/bin/python bench/confirm.py bench/curves/digits.csv --space digits
    ... [--samples 8 16 32 64] [--rules 3x2 5x2 2x1] [--replays 1000] [--workers 2] [--asha 2x3]
    ... [--markdown FILE]

Scored on held-out seeds by default (``--score held-out``, :mod:`marktune.replay.seed_roles`): in
each replay every trial runs at one recorded seed, the confirmation re-runs at others, and each
pick, the oracle's included, is worth its configuration's mean final test ACC at the seeds neither
used (the default configuration's too); the replays rotate through every such assignment, and
the table gives the mean regret per search seed beside the overall one. ``--score seen`` is the
former scoring, on every recorded seed (biased: the one-seed pick is scored at the seed that
selected it).

"task-trainings" is what each rule costs: the search's task-trainings plus its extra runs (each a
whole sequence), as a share of a full random search's of the same sample count.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from marktune.cli.flags import at_least  # noqa: E402
from marktune.mark.hardware import cpu_model_name  # noqa: E402
from marktune.replay.repeats import Interval  # noqa: E402
from marktune.replay.search import Strategy, replay, worth_of  # noqa: E402
from marktune.replay.seed_roles import SEEN_WARNING, TooFewSeedsError, assignments, table_seeds  # noqa: E402
from marktune.replay.table import ReplayTable, ReplayTableError, read_checked_table  # noqa: E402
from marktune.results.curves import CurvesError, read_curves  # noqa: E402
from marktune.tune.spaces import load_space  # noqa: E402


ALL = 10**9  # "all" as a rule's TOP: every trial that ran to the end is re-run (a search at 1 + S seeds)


def rule(text: str) -> tuple[int, int]:
    try:
        top, seeds = (ALL if v == "all" else int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a rule is TOPxSEEDS, e.g. 3x2 or allx2 (got {text!r})") from None
    if top < 1 or seeds < 1:
        raise argparse.ArgumentTypeError(f"TOP and SEEDS must be at least 1 (got {text!r})")
    return top, seeds


def cell(regrets: list[float], wins: list[bool]) -> str:
    interval = Interval.of(regrets)
    return (f"{100 * interval.mean:.2f} [{100 * interval.low:.2f}, {100 * interval.high:.2f}], "
            f"P {np.mean(wins):.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("curves", type=Path, help="a curves table with several seeds per configuration")
    parser.add_argument("--space", required=True)
    parser.add_argument("--default", type=Path, default=None,
                        help="the default configuration's curves (default: bench/curves/defaults/<table's name>)")
    parser.add_argument("--samples", type=at_least(1), nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--rules", type=rule, nargs="+", default=[(3, 2)], metavar="TOPxSEEDS")
    parser.add_argument("--replays", type=at_least(1), default=1000)
    parser.add_argument("--workers", type=at_least(1), default=2)
    parser.add_argument("--asha", type=rule, default=None, metavar="GRACExREDUCTION",
                        help="the search stops trials with ASHA (e.g. 2x3: grace period 2 tasks, reduction "
                             "factor 3); default: no pruning")
    parser.add_argument("--shared-seed", action="store_true",
                        help="every trial of a replay shows the same recorded seed (drawn per replay), as a live "
                             "search's trials all run at the space's seed; default: each trial draws its own")
    parser.add_argument("--score", choices=("held-out", "seen"), default="held-out",
                        help="held-out (default): picks are scored on seeds neither the search nor the confirmation "
                             "ran at; seen: on every recorded seed (biased)")
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args(argv)
    default_path = args.default or args.curves.parent / "defaults" / args.curves.name
    try:
        space = load_space(args.space)
        table = read_checked_table(args.curves, space)
        default = ReplayTable.from_curves(read_curves(default_path)).configs[0]
        seeds = table_seeds(table.configs)
        roles = (assignments(seeds, confirm=max(s for _, s in args.rules)) if args.score == "held-out" else None)
    except (ReplayTableError, CurvesError, OSError, IndexError, TooFewSeedsError) as err:
        print(f"confirm bench: {err}", file=sys.stderr)
        return 2
    if roles and not all(default.has_seeds(r.score) for r in roles):
        print(f"confirm bench: {default_path}: the default configuration is not recorded at every seed of the table "
              f"({', '.join(map(str, seeds))}); record it there too", file=sys.stderr)
        return 2
    started = time.perf_counter()
    strategy = Strategy(name="random", proposals="table") if args.asha is None else Strategy(
        name="random + asha", proposals="table", grace_period=args.asha[0], reduction_factor=args.asha[1])
    def label(k: int, s: int) -> str:
        return f"all at {1 + s} seeds" if k == ALL else f"top {k} x {s} more seeds"

    names = ["one seed", *[label(k, s) for k, s in args.rules], "oracle"]
    body = []
    for samples in args.samples:
        regrets: dict[str, list[float]] = {n: [] for n in names}
        by_seed: dict[str, dict[int, list[float]]] = {n: {} for n in names}  # search seed -> regrets
        wins: dict[str, list[bool]] = {n: [] for n in names}
        extra = {n: 0 for n in names}
        trainings = {n: 0.0 for n in names}
        for r in range(args.replays):
            shared = seeds[r % len(seeds)] if args.shared_seed and seeds else None
            role = roles[r % len(roles)] if roles else None
            outcome = replay(table=table, space=space, strategy=strategy, samples=samples,
                             workers=args.workers, seed=r, trial_seed=shared, roles=role)
            preset = worth_of(default, role)
            rng = np.random.default_rng(10_000_000 + r)
            picks = [("one seed", outcome.confirm(top=0, seeds=0, rng=rng))]
            picks += [(label(k, s), outcome.confirm(top=k, seeds=s, rng=rng)) for k, s in args.rules]
            for name, confirmation in picks:
                regrets[name].append(confirmation.regret)
                by_seed[name].setdefault(role.search if role else -1, []).append(confirmation.regret)
                wins[name].append(confirmation.picked.worth > preset)
                extra[name] += confirmation.extra_runs
                trainings[name] += ((outcome.task_trainings + confirmation.extra_runs * table.num_tasks)
                                    / outcome.budget)
            oracle = max(t.worth for t in outcome.trials if t.finished)
            regrets["oracle"].append(outcome.reference - oracle)
            by_seed["oracle"].setdefault(role.search if role else -1, []).append(outcome.reference - oracle)
            wins["oracle"].append(oracle > preset)
            trainings["oracle"] += outcome.task_trainings / outcome.budget
        for name in names:
            spread = (" ".join(f"{s}: {100 * np.nanmean(v):.2f}" for s, v in sorted(by_seed[name].items()))
                      if roles else "-")
            body.append([str(samples), name, cell(regrets[name], wins[name]), spread,
                         f"{extra[name] / args.replays:.1f}", f"{100 * trainings[name] / args.replays:.0f} %"])
        print(f"  {samples} samples done ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    header = ["samples", "pick", "regret in points [95 % interval], P(beats the default)",
              "mean regret by search seed", "extra runs", "task-trainings"]
    seen = ("every trial at one seed per replay" if args.shared_seed or roles else "one recorded seed per trial")
    scoring = (f"scored on held-out seeds, the replays rotating through {len(roles)} assignments of the seeds "
               f"(search / confirm / score: {roles[0]}; ...), the default's mean at the same score seeds"
               if roles else SEEN_WARNING)
    pruning = "no pruning" if args.asha is None else "ASHA grace %d, reduction %d" % args.asha
    intro = (f"confirm bench: {args.curves} ({len(table.configs)} configurations, seeds {seeds}), space "
             f"{space.path}; random search drawn from the table, {args.workers} "
             f"workers, {seen}, {pruning}; {args.replays} replays per sample count; the table's best "
             f"{table.best_final_test:.4f}, the default's mean {default.final_test:.4f} ({default_path}), over every seed; "
             f"{scoring}; "
             f"{cpu_model_name()}, {time.perf_counter() - started:.0f} s")
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    print(intro + "\n\n" + "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
                                     for row in [header, *body]))
    if args.markdown:
        args.markdown.write_text(intro + "\n\n" + "\n".join(
            ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
             *["| " + " | ".join(row) + " |" for row in body]]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
