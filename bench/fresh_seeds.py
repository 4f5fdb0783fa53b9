"""Does a recorded table predict fresh runs? Configurations of the table re-run at new seeds.

Picks ``--configs`` configurations of a curves table (recorded with ``bench/separation.py``) by
their seeds' mean final test ACC: the best, the worst and evenly spaced ranks between; re-runs each
with ``python -m marktune.run`` (the space's fixed settings as ``--config``, the configuration's
settings as ``--set``) at each ``--seeds`` (seeds the table did not use), and prints per run the
fresh final test and val ACC beside the table's mean, the configuration's own seed SD and its 95 %
prediction interval for one new run (mean +- t(0.975, n-1) x SD x sqrt(1 + 1/n), n recorded seeds),
and whether the fresh run lands inside; then the same with the seed SD pooled over the configurations
of neighbouring rank (10 % of the table on each side, where the noise is alike: three seeds say little
of one configuration's SD) and the normal quantile. Runs one after the other, one thread each, and appends
each result to ``--out`` (CSV) as it ends; ``--out`` kept, a second call skips the runs it holds.

    PYTHONPATH=. .venv/bin/python bench/fresh_seeds.py bench/curves/digits.csv --space digits \
        --configs 6 --seeds 3 4 --out bench/curves/fresh/digits.csv
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from marktune.cli.flags import at_least  # noqa: E402
from marktune.mark.hardware import cpu_model_name  # noqa: E402
from marktune.replay.table import ReplayTable, ReplayTableError, check_table  # noqa: E402
from marktune.results.curves import CurvesError, read_curves  # noqa: E402
from marktune.tune.spaces import load_space  # noqa: E402

COLUMNS = ["config", "rank", "seed", "fresh_test", "fresh_val", "table_test_mean", "table_test_sd", "table_seeds",
           "low", "high", "inside", "band_sd", "band_low", "band_high", "inside_band", "seconds"]
BAND = 0.1  # the neighbours in rank whose seed SD is pooled: this share of the configurations on each side


def ranked_by_test(table: ReplayTable) -> list[int]:
    """The configurations with two seeds or more, best mean final test ACC first (their indices)."""
    return sorted((i for i, c in enumerate(table.configs) if len(c.curves) >= 2),
                  key=lambda i: -table.configs[i].final_test)


def band_sd(table: ReplayTable, rank: int, *, share: float = BAND) -> float:
    """The seed SD of the final test ACC pooled (root of the mean variance, ddof 1) over the
    configurations within ``share`` of the table's size in rank of ``rank`` (by mean final test)."""
    ranked = ranked_by_test(table)
    width = max(1, int(round(share * len(ranked))))
    near = ranked[max(0, rank - width):rank + width + 1]
    return math.sqrt(float(np.mean([np.var([cv.test[-1] for cv in table.configs[i].curves], ddof=1) for i in near])))


def chosen(table: ReplayTable, count: int, *, top: bool = False) -> list[tuple[int, int]]:
    """(rank from the best, 0-based; index) of ``count`` configurations evenly spaced by mean final
    test ACC, the best and the worst included, among those with two seeds or more; ``top``: the
    best ``count`` by mean final val, whatever their seeds (a table of one seed: the seed SD of
    the configurations a search picks among is then measured on the fresh runs)."""
    if top:
        ranked = sorted(range(len(table.configs)), key=lambda i: -table.configs[i].final_val)
        return [(r, ranked[r]) for r in range(min(count, len(ranked)))]
    ranked = ranked_by_test(table)
    ranks = sorted({int(round(r)) for r in np.linspace(0, len(ranked) - 1, count)})
    return [(r, ranked[r]) for r in ranks]


def run_fresh(space_path: Path, params: dict, seed: int, out_dir: Path) -> dict:
    """One ``marktune.run`` of the space's fixed settings and ``params`` at ``seed``: its
    ``results.json`` (``acc``: final mean test ACC, the table's last ``test_acc``; ``val_acc``).
    Raises RuntimeError when the run fails (a diverged loss among the reasons)."""
    sets = [arg for name, value in params.items() for arg in ("--set", f"{name}={value}")]
    command = [sys.executable, "-m", "marktune.run", "--config", str(space_path), *sets, "--seed", str(seed),
               "--device", "cpu", "--quiet", "--out", str(out_dir), "--overwrite"]  # a leftover of an interrupted bench: moved aside
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads((out_dir / "results.json").read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("curves", type=Path, help="a curves table with a seed column")
    parser.add_argument("--space", required=True, help="the space the table was recorded in (name or .yaml)")
    parser.add_argument("--configs", type=at_least(1), default=6)
    parser.add_argument("--seeds", type=int, nargs="+", default=[3, 4], help="fresh seeds (not in the table)")
    parser.add_argument("--out", type=Path, required=True, help="CSV of the fresh runs (appended, resumable)")
    parser.add_argument("--top", action="store_true",
                        help="re-run the best --configs by final val instead of a spread of ranks, and print the "
                             "seed SD of their final val ACC pooled over recorded and fresh runs")
    args = parser.parse_args(argv)
    try:
        space = load_space(args.space)
        curves = read_curves(args.curves)
        check_table(curves, space, source=str(args.curves))
    except (ReplayTableError, CurvesError, OSError) as err:
        print(f"fresh-seeds bench: {err}", file=sys.stderr)
        return 2
    table = ReplayTable.from_curves(curves)
    used = {cv.seed for c in table.configs for cv in c.curves}
    if used & set(args.seeds):
        parser.error(f"seeds {sorted(used & set(args.seeds))} are in the table already; give fresh ones")
    from scipy import stats

    done = set()
    if args.out.exists():
        with open(args.out, newline="") as f:
            done = {(r["config"], int(r["seed"])) for r in csv.DictReader(f)}
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", newline="") as f:
            csv.writer(f).writerow(COLUMNS)
    print(f"fresh-seeds bench: {args.curves} ({len(table.configs)} configurations, seeds {sorted(used)}), "
          f"space {space.path}; fresh seeds {args.seeds}; {cpu_model_name()}", flush=True)
    picked = chosen(table, args.configs, top=args.top)
    for rank, i in picked:
        config = table.configs[i]
        finals = np.array([cv.test[-1] for cv in config.curves])
        n = len(finals)
        mean = float(finals.mean())
        sd = float(finals.std(ddof=1)) if n >= 2 else math.nan
        half = float(stats.t.ppf(0.975, n - 1)) * sd * math.sqrt(1 + 1 / n) if n >= 2 else math.nan
        pooled = band_sd(table, rank) if not args.top else math.nan
        band_half = 1.959964 * pooled * math.sqrt(1 + 1 / n)
        for seed in args.seeds:
            if (config.key, seed) in done:
                continue
            started = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                result = run_fresh(space.path, config.params, seed, Path(tmp) / "run")
            fresh_test, fresh_val = float(result["acc"]), float(result["val_acc"])
            inside = mean - half <= fresh_test <= mean + half if math.isfinite(half) else None
            inside_band = mean - band_half <= fresh_test <= mean + band_half if math.isfinite(band_half) else None
            row = [config.key, rank + 1, seed, f"{fresh_test:.4f}", f"{fresh_val:.4f}", f"{mean:.4f}", f"{sd:.4f}", n,
                   f"{mean - half:.4f}", f"{mean + half:.4f}", inside, f"{pooled:.4f}", f"{mean - band_half:.4f}",
                   f"{mean + band_half:.4f}", inside_band, f"{time.perf_counter() - started:.0f}"]
            with open(args.out, "a", newline="") as f:
                csv.writer(f).writerow(row)
            if inside is None:  # one recorded seed (--top): no interval to land in
                print(f"  {config.key} (rank {rank + 1} of {len(table.configs)}) seed {seed}: test {fresh_test:.4f}, "
                      f"val {fresh_val:.4f}; table {mean:.4f} ({n} seed)", flush=True)
                continue
            print(f"  {config.key} (rank {rank + 1} of {len(table.configs)}) seed {seed}: test {fresh_test:.4f}; "
                  f"table {mean:.4f} +- {sd:.4f} ({n} seeds), 95 % prediction interval "
                  f"[{mean - half:.4f}, {mean + half:.4f}]: {'inside' if inside else 'OUTSIDE'}; with the seed SD "
                  f"of its rank's neighbours, {pooled:.4f}: [{mean - band_half:.4f}, {mean + band_half:.4f}]: "
                  f"{'inside' if inside_band else 'OUTSIDE'}", flush=True)
    if args.top:
        print_top_seed_sd(table, picked, args.out)
    return 0


def print_top_seed_sd(table: ReplayTable, picked: list[tuple[int, int]], out: Path) -> None:
    """The seed SD of the final val ACC (the search's metric) of the configurations re-run, pooled
    (root of the mean variance, ddof 1) over their recorded and fresh runs."""
    with open(out, newline="") as f:
        fresh = list(csv.DictReader(f))
    variances = []
    for rank, i in picked:
        config = table.configs[i]
        values = [cv.val[-1] for cv in config.curves] + [float(r["fresh_val"]) for r in fresh if r["config"] == config.key]
        print(f"  {config.key} (rank {rank + 1} by final val): final val {', '.join(f'{v:.4f}' for v in values)}")
        if len(values) >= 2:
            variances.append(float(np.var(values, ddof=1)))
    if variances:
        print(f"seed SD of the final val ACC, pooled over these {len(variances)} configurations: "
              f"{math.sqrt(float(np.mean(variances))):.4f}")


if __name__ == "__main__":
    sys.exit(main())
