"""Training FLOPs of every setting a space can propose: a table the replay reads its cost from.

A sequence's training FLOPs (``marktune.mark.flops``) depend on its settings less
``COUNT_FREE`` (rates, decays, dropout, the activation, the seed) and the data sizes. So this
runs one whole counted sequence for every combination of a space's searched settings that do
count (each an ``int`` or a ``choice``: a continuous one cannot be tabulated), the others at the
space's defaults, seed 0, and writes its cumulative count after every task, as each run ends
(``--resume`` continues, and runs a combination whose run diverged again with the gentler free
settings of ``GENTLER``: they change no count). ``--check N`` then runs the first N configurations of the dense table
(``bench/separation.py``'s draws, all their settings) and prints how far each count lies from its
combination's: the claim that the free settings change nothing, tested on real runs.

    PYTHONPATH=. .venv/bin/python bench/flops_table.py --space digits --workers 2 \\
        --out bench/curves/flops/digits.csv [--resume] [--check 12]

The replay (``marktune.replay.costs``) reads the table for ``--objectives val_acc,flops``.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import math
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.scale import commit  # noqa: E402
from marktune.mark.flops import COUNT_FREE  # noqa: E402
from marktune.mark.hardware import cpu_model_name  # noqa: E402
from marktune.replay.costs import FLOPS_COLUMNS, counted_settings  # noqa: E402
from marktune.tune.spaces import SearchSpace, load_space  # noqa: E402


def combinations(space: SearchSpace) -> list[dict[str, Any]]:
    """Every combination of the space's searched settings that change the count."""
    names = counted_settings(space)
    values = []
    for name in names:
        p = space.params[name]
        values.append(list(p.values) if p.kind == "choice" else list(range(int(p.low), int(p.high) + 1)))
    return [dict(zip(names, combo)) for combo in itertools.product(*values)]


# free settings (marktune.mark.flops.COUNT_FREE) for a combination that diverged at the defaults
GENTLER = {"lr_meta": 0.001, "meta_step": 0.01}


def run_one(job: tuple[str, str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One counted sequence in a worker (one thread): its cumulative count after every task."""
    import torch

    from marktune.data.benchmarks import load_benchmark_for
    from marktune.mark.learner import MarkLearner

    torch.set_num_threads(1)
    space_name, source, settings = job
    config = load_space(space_name).default_trial_config({**settings, "seed": 0})
    learner = MarkLearner(config, load_benchmark_for(config), verbose=0)
    rows, started, status = [], time.perf_counter(), "COMPLETE"
    try:
        while learner.tasks_done < learner.num_tasks:
            learner.train_next_task()
            rows.append({"task": learner.tasks_done, "train_flops": learner.flops.total})
    except Exception as err:  # a diverged run is recorded, not a crash of the bench
        status = f"ERROR: {type(err).__name__}"
    seconds = time.perf_counter() - started
    return [{"source": source, **settings, **r, "status": status, "seconds": round(seconds, 2)} for r in rows] or \
        [{"source": source, **settings, "task": 0, "train_flops": math.nan, "status": status,
          "seconds": round(seconds, 2)}]


def read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--space", required=True, help="a search space by name or path")
    parser.add_argument("--out", type=Path, required=True, help="the CSV table to write (rows as each run ends)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes, one thread each")
    parser.add_argument("--resume", action="store_true", help="run only what --out does not hold yet")
    parser.add_argument("--check", type=int, default=0, metavar="N",
                        help="also run the dense table's first N configurations with all their settings")
    parser.add_argument("--sample-seed", type=int, default=0, help="the dense table's draws (bench/separation.py)")
    parser.add_argument("--table-first", type=int, default=0, metavar="N",
                        help="run first the combinations of the dense table's first N configurations (what a "
                             "replay drawing from the table needs), then the rest")
    args = parser.parse_args(argv)

    if args.out.exists() and not args.resume:  # hours of counted runs are not written over
        parser.error(f"{args.out} exists: add --resume to continue it, or give another --out")
    space = load_space(args.space)
    names = counted_settings(space)  # refuses a continuous setting that counts, before any run

    def key(settings) -> tuple[str, ...]:  # a combination as the CSV holds it
        return tuple(str(settings[n]) for n in names)
    jobs = [(args.space, "grid", combo) for combo in combinations(space)]
    from bench.separation import configurations

    if args.table_first:
        drawn = configurations(space, count=args.table_first, seed=args.sample_seed).values()
        needed = {key(c) for c in drawn if c}
        jobs.sort(key=lambda j: key(j[2]) not in needed)  # stable: needed first
    if args.check:
        drawn = configurations(space, count=args.check, seed=args.sample_seed)
        jobs += [(args.space, cid, params) for cid, params in drawn.items() if cid != "default"]
    done = read_rows(args.out) if args.resume else []
    seen = {(r["source"], key(r)) for r in done}
    complete = {(r["source"], key(r)) for r in done if r["status"] == "COMPLETE"}
    todo = []
    for space_name, source, settings in jobs:
        run = (source, key(settings))
        if run in complete or (run in seen and source != "grid"):
            continue  # done (a checked configuration runs once, diverged or not)
        todo.append((space_name, source, {**settings, **GENTLER} if run in seen else settings))
    jobs = todo
    extra = sorted({k for _, _, s in jobs for k in s} - set(names))
    columns = FLOPS_COLUMNS[:1] + names + extra + FLOPS_COLUMNS[1:] + ["commit", "cpu"]
    if done and set(done[0]) != set(columns):
        columns = list(done[0])  # keep the file's header (a resumed --check adds no new columns)
    stamp = {"commit": commit(), "cpu": cpu_model_name()}
    print(f"{args.space}: {len(jobs)} counted runs to go ({len(seen)} in {args.out}); settings that count: "
          f"{', '.join(names)}; free: {', '.join(sorted(set(space.params) & COUNT_FREE))}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    new_file = not done
    started = time.perf_counter()
    with args.out.open("w" if new_file else "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        if new_file:
            writer.writeheader()
        with mp.get_context("spawn").Pool(args.workers) as pool:
            for i, rows in enumerate(pool.imap_unordered(run_one, jobs), 1):
                for r in rows:
                    writer.writerow({**r, **stamp})
                f.flush()
                last = rows[-1]
                print(f"[{i}/{len(jobs)}] {last['source']} {' '.join(f'{n}={last[n]}' for n in names)}: "
                      f"{last['train_flops'] / 1e9:.3f} GFLOP, {last['status']}, {last['seconds']} s "
                      f"({time.perf_counter() - started:.0f} s so far)", flush=True)
    if args.check:
        print(check_report(read_rows(args.out), names))
    return 0


def check_report(rows: list[dict[str, str]], names: list[str]) -> str:
    """How far each checked configuration's final count lies from its combination's."""
    def final(source_rows):
        last = max(source_rows, key=lambda r: int(r["task"]))
        return float(last["train_flops"]) if last["status"] == "COMPLETE" else math.nan

    grid: dict[tuple, list] = {}
    checked: dict[str, list] = {}
    for r in rows:
        if r["source"] != "grid":
            checked.setdefault(r["source"], []).append(r)
        elif r["status"] == "COMPLETE":  # a combination's diverged run left for its rerun
            grid.setdefault(tuple(r[n] for n in names), []).append(r)
    lines, worst = [], 0.0
    for cid, crows in sorted(checked.items()):
        key = tuple(crows[0][n] for n in names)
        mine, theirs = final(crows), final(grid[key]) if key in grid else math.nan
        if math.isnan(mine) or math.isnan(theirs):
            lines.append(f"  {cid}: not comparable (a run did not complete)")
            continue
        worst = max(worst, abs(mine / theirs - 1))
        lines.append(f"  {cid}: {mine / 1e9:.3f} against {theirs / 1e9:.3f} GFLOP")
    return f"check: {len(checked)} configurations, largest relative difference {worst:.2e}\n" + "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
