"""Does the confirmation stage pay off live? The space's default search against random search
without confirmation at the same number of runs, each repeated, each winner re-run on fresh seeds.

For each repeat r (the sampler's ``--seed r``) two real searches run through Ray, one after the
other, with the space's defaults but for:

* ``default``: nothing (on digits: 32 trials, ASHA, the top 3 confirmed at 2 more seeds: 38 runs);
* ``plain``: ``--confirm-top 0 --samples N + K x S`` (the same number of runs, no confirmation).

Each search's winner (``best_config.yaml``) then runs at ``--fresh-seeds`` (seeds neither the
table nor any search used; ``data_seed`` unset, so the seed draws the class order and split as in
the table), and so do the dense table's best configuration (best 3-seed mean final test ACC)
and the space's default configuration at the same seeds. A repeat's regret is the mean over those seeds of the table best's final test
ACC minus the winner's, in points: paired by seed, so the class order's difficulty cancels.
Printed per arm: mean regret and its 95 % t interval over repeats, and the paired difference of
the two arms. Everything is appended to ``--out`` (CSV) as it ends; a second call skips what is
there (searches whose best_config.yaml exists are not re-run either).

    PYTHONPATH=. .venv/bin/python bench/live_confirm.py --space digits --table bench/curves/digits.csv \
        --repeats 5 --fresh-seeds 5 6 7 --storage /tmp/live --out docs/results/live-confirm-digits.csv
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.fresh_seeds import ranked_by_test, run_fresh  # noqa: E402
from marktune.mark.hardware import cpu_model_name  # noqa: E402
from marktune.replay.repeats import Interval  # noqa: E402
from marktune.replay.table import ReplayTable  # noqa: E402
from marktune.results.curves import read_curves  # noqa: E402
from marktune.tune.spaces import load_space  # noqa: E402

COLUMNS = ["kind", "arm", "repeat", "seed", "trial_id", "value", "runs", "seconds"]


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def append(path: Path, row: dict) -> None:
    new = not path.is_file()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def search(space: str, arm: str, repeat: int, storage: Path, extra: list[str]) -> tuple[Path, float]:
    """One search (skipped when its best_config.yaml exists); its experiment and wall seconds."""
    name = f"{arm}-{repeat}"
    experiment = storage / name
    if (experiment / "best_config.yaml").is_file():
        return experiment, math.nan
    started = time.perf_counter()
    command = [sys.executable, "-m", "marktune.search", "--space", space, "--seed", str(repeat), "--storage",
               str(storage), "--name", name, "-q", *extra]
    if experiment.exists():  # an interrupted one: continue it
        command = [sys.executable, "-m", "marktune.search", "--resume", "--name", name, "--storage", str(storage), "-q"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {(done.stdout + done.stderr)[-3000:]}")
    return experiment, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--space", required=True)
    p.add_argument("--table", type=Path, required=True, help="the space's dense curves table")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--fresh-seeds", type=int, nargs="+", default=[5, 6, 7])
    p.add_argument("--storage", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    space = load_space(args.space)
    d = space.defaults
    runs = d["samples"] + d["confirm_top"] * d["confirm_seeds"]
    arms = {"default": [], "plain": ["--confirm-top", "0", "--samples", str(runs)]}
    table = ReplayTable.from_curves(read_curves(args.table))
    best = table.configs[ranked_by_test(table)[0]]
    space_file = Path(space.path)
    done = {(r["kind"], r["arm"], r["repeat"], r["seed"]) for r in read_rows(args.out)}
    work = args.storage / "fresh"
    print(f"live confirm: {args.space}, {args.repeats} repeats x {list(arms)}, {runs} runs a search; the table's "
          f"best {best.key} ({best.final_test:.4f} over {len(best.curves)} seeds); fresh seeds {args.fresh_seeds}; "
          f"{cpu_model_name()}", flush=True)
    # the references at the fresh seeds: the table's best, and the space's default configuration
    # (its searched settings at the learner's defaults, as marktune.evaluate builds it)
    default_params = {k: v for k, v in space.default_trial_config().to_dict().items()
                      if k in space.params and v is not None}  # None: the learner's own default applies
    for arm, key, params in (("table-best", best.key, best.params), ("space-default", "default", default_params)):
        for seed in args.fresh_seeds:
            if ("reference", arm, "", str(seed)) in done:
                continue
            started = time.perf_counter()
            result = run_fresh(space_file, params, seed, work / f"{arm}-{seed}")
            append(args.out, {"kind": "reference", "arm": arm, "repeat": "", "seed": seed, "trial_id": key,
                              "value": result["acc"], "runs": 1, "seconds": round(time.perf_counter() - started, 1)})
            print(f"  {arm} at seed {seed}: test ACC {result['acc']:.4f}", flush=True)
    for repeat in range(args.repeats):
        for arm, extra in arms.items():
            if ("search", arm, str(repeat), "") not in done:
                experiment, seconds = search(args.space, arm, repeat, args.storage, extra)
                chosen = yaml.safe_load((experiment / "best_config.yaml").read_text())
                append(args.out, {"kind": "search", "arm": arm, "repeat": repeat, "seed": "",
                                  "trial_id": chosen["trial_id"], "value": chosen["val_acc"], "runs": runs,
                                  "seconds": round(seconds, 1)})
                print(f"  {arm} {repeat}: winner {chosen['trial_id']} ({seconds:.0f} s)", flush=True)
            left = [s for s in args.fresh_seeds if ("fresh", arm, str(repeat), str(s)) not in done]
            if not left:  # all recorded: the search's folder may be on another machine
                continue
            experiment = args.storage / f"{arm}-{repeat}"
            chosen = yaml.safe_load((experiment / "best_config.yaml").read_text())
            for seed in left:
                started = time.perf_counter()
                params = {k: v for k, v in chosen["config"].items() if k not in ("seed", "data_seed", "class_order")}
                trial_id = chosen["trial_id"]
                try:
                    acc = run_fresh(space_file, params, seed, work / f"{arm}-{repeat}-{seed}")["acc"]
                except RuntimeError as err:
                    if " became " not in str(err):  # a loss or the KB became NaN/inf: diverged
                        raise
                    # the winner diverged at this fresh seed: a result, as a user would meet it (an
                    # ERROR run). Recorded as NaN, its trial_id says so; the summary scores it at chance
                    print(f"  {arm} {repeat} at seed {seed}: diverged ({str(err).splitlines()[-1][-120:]})",
                          flush=True)
                    acc, trial_id = math.nan, f"{trial_id} (diverged)"
                append(args.out, {"kind": "fresh", "arm": arm, "repeat": repeat, "seed": seed,
                                  "trial_id": trial_id, "value": acc, "runs": 1,
                                  "seconds": round(time.perf_counter() - started, 1)})
    summarize(read_rows(args.out), list(arms), args.fresh_seeds,
              chance=1.0 / space.default_trial_config().classes_per_task)
    return 0


def summarize(rows: list[dict], arms: list[str], seeds: list[int], *, chance: float) -> None:
    """Per arm the regret over repeats; a diverged fresh run (NaN) scores ``chance`` (nothing learned)."""
    reference = {int(r["seed"]): float(r["value"]) for r in rows if r["kind"] == "reference"
                 and r["arm"] == "table-best"}
    preset = {int(r["seed"]): float(r["value"]) for r in rows if r["kind"] == "reference"
              and r["arm"] == "space-default"}
    regrets: dict[str, dict[int, float]] = {arm: {} for arm in arms}
    for arm in arms:
        fresh: dict[int, dict[int, float]] = {}
        for r in rows:
            if r["kind"] == "fresh" and r["arm"] == arm:
                value = float(r["value"])
                fresh.setdefault(int(r["repeat"]), {})[int(r["seed"])] = value if math.isfinite(value) else chance
        for repeat, values in fresh.items():
            if set(values) >= set(seeds):
                regrets[arm][repeat] = 100 * float(np.mean([reference[s] - values[s] for s in seeds]))
    print("\narm      repeats  regret in points, mean [95 % t interval]  per repeat")
    for arm in arms:
        values = [regrets[arm][k] for k in sorted(regrets[arm])]
        if values:
            i = Interval.of(values)
            print(f"{arm:<8} {len(values):<8} {i.mean:.2f} [{i.low:.2f}, {i.high:.2f}]"
                  f"{'':<22} {', '.join(f'{v:.2f}' for v in values)}")
    if set(preset) >= set(seeds):
        gap = 100 * float(np.mean([reference[s] - preset[s] for s in seeds]))
        print(f"the space's default configuration: regret {gap:.2f} points at the same seeds "
              "(an arm's regret below it is a win over the preset)")
    both = sorted(set(regrets[arms[0]]) & set(regrets[arms[1]]))
    if len(both) >= 2:
        diff = Interval.of([regrets[arms[1]][k] - regrets[arms[0]][k] for k in both])
        print(f"{arms[1]} - {arms[0]}, paired by repeat: {diff.mean:.2f} [{diff.low:.2f}, {diff.high:.2f}] points")


if __name__ == "__main__":
    sys.exit(main())
