"""Does the replay predict live searches? The replay's held-out prediction for the live protocol
of ``bench/live_confirm.py``, set beside the live repeats it recorded (issue 47, item 4).

The live protocol, replayed on a dense table with the space's defaults: per repeat r, two
searches with the same draws (the sampler's seed r), every trial at the space's seed (0):

* ``default``: ``samples`` trials with the space's scheduler, the top K confirmed at S more seeds;
* ``plain``: ``samples + K x S`` trials, no confirmation (the one-seed pick at the same runs).

Each pick is scored on held-out seeds (:mod:`marktune.replay.seed_roles`): with ``--roles live``
the live assignment (search at seed 0, confirm at 1 .. S, score on the rest; live scored at fresh
seeds the table lacks), with ``--roles all`` every assignment in turn. Printed per side: the
paired gain (plain's regret minus default's, in points) as mean [95 % t interval], its SD per
search, how often the confirmation changed the pick and the mean gain when it did; then what
the live repeats measured, the chance of a live mean at or below the one seen if the replay's
per-search distribution held (resampling it, ``--live`` repeats at a time), and the repeats a
live test needs to tell the replay's mean gain from zero (two-sided 5 %, power 80 %:
n = ((1.96 + 0.84) SD / mean)^2).

    PYTHONPATH=. .venv/bin/python bench/calibration.py bench/curves/digits.csv --space digits \\
        --live bench/curves/live/digits-confirm.csv [--replays 3000] [--roles live|all] [--markdown FILE]
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from marktune.cli.flags import at_least  # noqa: E402
from marktune.mark.hardware import cpu_model_name  # noqa: E402
from marktune.replay.repeats import Interval  # noqa: E402
from marktune.replay.search import Strategy, replay  # noqa: E402
from marktune.replay.seed_roles import SeedRoles, TooFewSeedsError, assignments, table_seeds  # noqa: E402
from marktune.replay.table import ReplayTable, ReplayTableError, read_checked_table  # noqa: E402
from marktune.results.curves import CurvesError  # noqa: E402
from marktune.tune.spaces import load_space  # noqa: E402

Z_POWER = 1.959964 + 0.841621  # two-sided 5 %, power 80 %


def live_gains(path: Path) -> list[float]:
    """Per live repeat, plain's regret minus default's at the fresh seeds, in points (paired by
    repeat and seed: the reference cancels)."""
    with open(path) as f:
        rows = list(csv.DictReader(f))
    fresh: dict[tuple[str, int], dict[int, float]] = {}
    for r in rows:
        if r["kind"] == "fresh":
            fresh.setdefault((r["arm"], int(r["repeat"])), {})[int(r["seed"])] = float(r["value"])
    out = []
    for repeat in sorted({k for _, k in fresh}):
        default, plain = fresh.get(("default", repeat)), fresh.get(("plain", repeat))
        if default and plain and set(default) == set(plain):
            out.append(100 * float(np.mean([default[s] - plain[s] for s in default])))
    return out


def repeats_needed(mean: float, sd: float) -> float:
    return math.inf if mean == 0 else (Z_POWER * sd / mean) ** 2


def simulate(table: ReplayTable, space, roles: list[SeedRoles], replays: int, *, samples: int, top: int, more: int,
             asha: tuple[int, float] | None) -> dict[str, np.ndarray]:
    strategy = (Strategy(name="random", proposals="table") if asha is None else
                Strategy(name="random + asha", proposals="table", grace_period=asha[0], reduction_factor=asha[1]))
    gains, changed = np.empty(replays), np.zeros(replays, dtype=bool)
    for r in range(replays):
        role = roles[r % len(roles)]
        searched = replay(table=table, space=space, strategy=strategy, samples=samples, seed=r, roles=role)
        confirmed = searched.confirm(top=top, seeds=more, rng=np.random.default_rng(10_000_000 + r))
        plain = replay(table=table, space=space, strategy=strategy, samples=samples + top * more, seed=r, roles=role)
        gains[r] = 100 * (plain.regret(1.0) - confirmed.regret)
        changed[r] = confirmed.picked is not searched.pick(1.0)
    return {"gain": gains, "changed": changed}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("curves", type=Path, help="the space's dense table (5 seeds)")
    p.add_argument("--space", required=True)
    p.add_argument("--live", type=Path, default=None, help="bench/live_confirm.py's CSV (none: the replay alone)")
    p.add_argument("--samples", type=at_least(1), default=None, help="default: the space's")
    p.add_argument("--rule", default=None, metavar="TOPxSEEDS", help="the confirmation (default: the space's)")
    p.add_argument("--asha", default=None, metavar="GRACExREDUCTION|none", help="default: the space's scheduler")
    p.add_argument("--replays", type=at_least(2), default=3000)
    p.add_argument("--roles", choices=("live", "all"), default="live",
                   help="live: search at seed 0, confirm at 1 .. S, score on the rest; all: every assignment")
    p.add_argument("--markdown", type=Path, default=None)
    args = p.parse_args(argv)
    try:
        space = load_space(args.space)
        table = read_checked_table(args.curves, space)
        d = space.defaults
        samples = args.samples or int(d["samples"])
        top, more = ((int(d["confirm_top"] or 0), int(d["confirm_seeds"])) if args.rule is None
                     else tuple(int(v) for v in args.rule.lower().split("x")))
        if args.asha is None:
            asha = (int(d["grace_period"]), float(d["reduction_factor"])) if d.get("scheduler") == "asha" else None
        else:
            asha = None if args.asha == "none" else (int(args.asha.split("x")[0]), float(args.asha.split("x")[1]))
        if top < 1 or more < 1:
            raise ValueError(f"no confirmation stage to calibrate (top {top} x {more} seeds): give --rule TOPxSEEDS")
        every = assignments(table_seeds(table.configs), confirm=more)
        live = live_gains(args.live) if args.live else []
    except (ReplayTableError, CurvesError, OSError, TooFewSeedsError, KeyError, ValueError) as err:
        print(f"calibration bench: {err}", file=sys.stderr)
        return 2
    roles = every if args.roles == "all" else [r for r in every if r.search == 0
                                                and r.confirm == tuple(range(1, more + 1))]
    sim = simulate(table, space, roles, args.replays, samples=samples, top=top, more=more, asha=asha)
    gain, changed = sim["gain"], sim["changed"]
    predicted, sd = Interval.of(list(gain)), float(np.std(gain, ddof=1))
    rng = np.random.default_rng(0)
    by_seed = {s: float(np.mean(gain[[i for i in range(args.replays) if roles[i % len(roles)].search == s]]))
               for s in sorted({r.search for r in roles})}
    lines = [f"calibration bench: {args.curves}, space {space.path}: {samples} samples, "
             f"{'no pruning' if asha is None else 'ASHA grace %d, reduction %g' % asha}, top {top} x {more} more "
             f"seeds against the one-seed pick of {samples + top * more} samples; {args.replays} replays, roles {args.roles} "
             f"({'; '.join(map(str, roles[:3]))}{' ...' if len(roles) > 3 else ''}); {cpu_model_name()}",
             "mean gain by search seed: " + ", ".join(f"{s}: {v:.2f}" for s, v in by_seed.items()),
             "",
             "| | paired gain of the confirmation, points | SD per search | pick changed | gain when changed |",
             "|---|---|---|---|---|",
             f"| replay, held out | {predicted.mean:.2f} [{predicted.low:.2f}, {predicted.high:.2f}] | {sd:.2f} | "
             f"{100 * changed.mean():.0f} % | {gain[changed].mean() if changed.any() else math.nan:.2f} |"]
    if len(live) >= 2:
        seen = Interval.of(live)
        draws = rng.choice(gain, size=(20_000, len(live)))
        chance = float((draws.mean(axis=1) <= seen.mean).mean())
        lines.append(f"| live ({len(live)} repeats, fresh seeds) | {seen.mean:.2f} [{seen.low:.2f}, {seen.high:.2f}] | "
                     f"{np.std(live, ddof=1):.2f} | | |")
        lines += ["", f"If the replay's per-search gains held, a live mean of {len(live)} repeats at or below "
                  f"{seen.mean:.2f} would occur with probability {chance:.3f}.",
                  f"Repeats a live test needs to tell the replay's mean gain from zero (5 %, power 80 %): "
                  f"{repeats_needed(predicted.mean, sd):.0f} (from the replay's SD per search)."]
    else:
        lines += ["", f"Repeats a live test needs to tell this mean gain from zero (5 %, power 80 %): "
                  f"{repeats_needed(predicted.mean, sd):.0f}."]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
