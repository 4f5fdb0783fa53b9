"""Are the trials a search calls "tied with the best" indistinguishable from it on seeds the search
did not see? The summary's tie rule checked on a dense table of several seeds (issue 47, item 6).

Per replay: ``--samples`` configurations drawn from the table, every trial at one search seed (the
replays rotate through the seeds, as a live search's trials share the space's seed). The tie rule
of :mod:`marktune.results.noise` (``tie_margin``; the table holds no validation counts, so the
binomial SE counts as 0) marks the trials whose final val ACC lies within the margin of the best's,
once with the space's ``noise.seed_sd`` (one configuration's seed-to-seed SD) and once with the
residual configuration x seed SD of the table's final val ACC (the noise between two trials that
share a seed, the two-way decomposition's residual). On the seeds the search did not see, a tied
trial is *indistinguishable* from the best when the paired 95 % t interval of their final test ACC
difference covers 0, and *as good* when its held-out mean lies within the same margin of the
best's. Printed: for each SD, how many trials a search ties on average and both rates; and the
same rates for the trials the rule did not tie (what it misses).

    PYTHONPATH=. .venv/bin/python bench/tie_check.py bench/curves/digits.csv --space digits [--samples 32] [--replays 500]
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from marktune.cli.flags import at_least  # noqa: E402
from marktune.mark.hardware import cpu_model_name  # noqa: E402
from marktune.replay.seed_roles import table_seeds  # noqa: E402
from marktune.replay.table import ReplayTable, ReplayTableError, read_checked_table  # noqa: E402
from marktune.results.curves import CurvesError  # noqa: E402
from marktune.results.noise import tie_margin  # noqa: E402
from marktune.tune.spaces import load_space  # noqa: E402


def finals(table: ReplayTable, seeds: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(final val, final test) per configuration complete at every seed x seed."""
    keep = [c for c in table.configs if c.has_seeds(seeds)]
    val = np.array([[next(x.val[-1] for x in c.curves if x.seed == s) for s in seeds] for c in keep])
    test = np.array([[next(x.test[-1] for x in c.curves if x.seed == s) for s in seeds] for c in keep])
    return val, test


def residual_sd(y: np.ndarray) -> float:
    """The residual SD of a two-way (configuration x seed) decomposition without interaction."""
    fitted = y.mean(axis=1, keepdims=True) + y.mean(axis=0, keepdims=True) - y.mean()
    n, k = y.shape
    return float(math.sqrt(((y - fitted) ** 2).sum() / ((n - 1) * (k - 1))))


def check(val: np.ndarray, test: np.ndarray, *, sd: float, samples: int, replays: int) -> dict[str, float]:
    margin = tie_margin(se_best=math.nan, se_other=math.nan, seed_sd=sd)
    n, k = val.shape
    t975 = stats.t.ppf(0.975, k - 2)  # k - 1 held-out seeds, k - 2 degrees of freedom
    counts = {"tied": 0, "tied_same": 0, "tied_within": 0, "other": 0, "other_same": 0, "other_within": 0}
    for r in range(replays):
        rng = np.random.default_rng(r)
        seed = r % k
        held = [s for s in range(k) if s != seed]
        drawn = rng.choice(n, size=min(samples, n), replace=False)
        seen = val[drawn, seed]
        best = drawn[int(np.argmax(seen))]  # the first of equals, as the search ranks
        for i in drawn:
            if i == best:
                continue
            kind = "tied" if val[best, seed] - val[i, seed] < margin else "other"
            diff = test[best, held] - test[i, held]
            half = t975 * diff.std(ddof=1) / math.sqrt(len(diff))
            counts[kind] += 1
            counts[f"{kind}_same"] += int(abs(diff.mean()) <= half)
            counts[f"{kind}_within"] += int(abs(diff.mean()) < margin)
    return {"margin": margin, **counts, "per_search": counts["tied"] / replays}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("curves", type=Path, help="a dense table with 3 or more seeds")
    p.add_argument("--space", required=True)
    p.add_argument("--samples", type=at_least(2), default=32)
    p.add_argument("--replays", type=at_least(1), default=500)
    args = p.parse_args(argv)
    try:
        space = load_space(args.space)
        table = read_checked_table(args.curves, space)
    except (ReplayTableError, CurvesError, OSError) as err:
        print(f"tie bench: {err}", file=sys.stderr)
        return 2
    seeds = table_seeds(table.configs)
    if len(seeds) < 3:
        print(f"tie bench: {args.curves} has {len(seeds)} seed(s); the check needs 3 or more (1 to search at, "
              "2 or more held out for an interval)", file=sys.stderr)
        return 2
    val, test = finals(table, seeds)
    sds = {"the space's noise.seed_sd": space.noise.seed_sd, "residual configuration x seed SD": residual_sd(val)}
    print(f"tie bench: {args.curves} ({val.shape[0]} configurations complete at seeds {seeds}), space {space.path}; "
          f"{args.replays} searches of {args.samples} trials, the search seed rotating; {cpu_model_name()}\n")
    print("| SD | value | margin | tied trials a search | tied: indistinguishable held out | tied: within the "
          "margin held out | not tied: indistinguishable | not tied: within the margin |")
    print("|---|---|---|---|---|---|---|---|")
    for name, sd in sds.items():
        if sd is None:
            continue
        c = check(val, test, sd=sd, samples=args.samples, replays=args.replays)

        def share(a: str, b: str) -> str:
            return f"{100 * c[a] / c[b]:.0f} %" if c[b] else "-"
        print(f"| {name} | {sd:.4f} | {c['margin']:.4f} | {c['per_search']:.1f} | {share('tied_same', 'tied')} | "
              f"{share('tied_within', 'tied')} | {share('other_same', 'other')} | {share('other_within', 'other')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
