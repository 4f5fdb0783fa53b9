"""Benchmark: how often MARK goes non-finite or dead, the released code against marktune, side by side (issue 41).

    PYTHONPATH=. .venv/bin/python bench/divergence_rates.py /path/to/meta-training-setup \\
        --setting issue41 --seeds 48-63 --out docs/results/divergence.csv [--jobs 2]
    PYTHONPATH=. .venv/bin/python bench/divergence_rates.py --summary docs/results/divergence.csv

Runs each seed once with the released code (``bench/released.py``, its checkout as the first
argument; nothing is fetched) and once with marktune, on the same data and settings, with no
gradient clip, one torch thread per run (``--jobs`` runs at a time). Both sides flush denormal floats to zero (``flush_denormals``, marktune's default): both run
into denormal gradients, on which an Intel Xeon's convolutions slow down many times
(docs/performance.md); flushing changes only values below 1.2e-38. Each run ends "non-finite"
(a loss became NaN or infinite: the run stops there), "dead" (it finished with a task at chance
in its last test row: accuracy at most 1/classes + 0.05) or "ok". Rows are appended to ``--out``
as runs end, and runs already there are skipped, so an interrupted recording resumes.

Settings (``--setting``):

* ``issue41``: issue 41's: 5 tasks, 2,000 images a task, 3 epochs, ``meta_epochs=2``,
  ``mini_tasks=5``, ``inner_steps=10``, ``meta_update=seed``, masks initialised to ones.
* ``warmup``: the first task only (of the same 5-task split) with 6 epochs in every phase, the
  fmnist space's KB warm-up length, where the space's history saw the warm-up blow up.
* ``released-init``: ``issue41`` with PyTorch's mask init on both sides, as the released code.
* ``warmup-clip``: ``warmup`` with the fmnist and digits spaces' ``kb_grad_clip: 1.0``
  (``--sides marktune``: the released code has no clip).

The summary gives, per setting and side, the count and share of each outcome with a 95 %
Clopper-Pearson interval, and the difference between the sides' non-finite shares.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

BASE = dict(benchmark="fmnist", num_tasks=5, max_train_per_task=2000, epochs=3, meta_epochs=2,
            mini_tasks=5, inner_steps=10, meta_update="seed", mask_init="identity", kb_grad_clip=None)
SETTINGS = {
    "issue41": (BASE, 5),
    "warmup": ({**BASE, "epochs": 6}, 1),
    "released-init": ({**BASE, "mask_init": "default"}, 5),
    "warmup-clip": ({**BASE, "epochs": 6, "kb_grad_clip": 1.0}, 1),  # marktune only: the spaces' clip
}  # name: (marktune settings, tasks to run)
SIDES = ("released", "marktune")
COMMIT = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                        cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
FIELDS = ("setting", "side", "seed", "outcome", "where", "tasks_done", "acc", "dead_tasks", "seconds", "cpu",
          "flush_denormals", "commit")


def parse_seeds(text: str) -> list[int]:
    seeds: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        seeds.extend(range(int(low), int(high or low) + 1))
    return seeds


def dead_tasks(row, classes: list[int]) -> list[int]:
    return [u for u, (a, c) in enumerate(zip(row, classes)) if a <= 1.0 / c + 0.05]


def one_run(checkout: str, setting: str, side: str, seed: int) -> dict:
    """One sequence, one thread; the row to record."""
    import torch

    from marktune.data import load_benchmark_for
    from marktune.mark.config import MarkConfig
    from marktune.mark.hardware import cpu_model_name, flush_denormals
    from marktune.mark.learner import MarkLearner
    from marktune.mark.training import NonFiniteLossError
    from released import run_released

    torch.set_num_threads(1)
    flush_denormals(True)  # both sides: marktune's default; see the module's docstring
    settings, tasks = SETTINGS[setting]
    cfg = MarkConfig.from_dict({**settings, "seed": seed})
    benchmark = load_benchmark_for(cfg)
    classes = [task.num_classes for task in benchmark.tasks]
    start = time.perf_counter()
    where, row = "", []
    if side == "released":
        run = run_released(checkout, cfg, benchmark=benchmark, tasks=tasks)
        done, where = run.tasks_done, run.nonfinite or ""
        row = list(run.test[done - 1, :done]) if done else []
    else:
        learner = MarkLearner(cfg, benchmark, verbose=0)
        try:
            while learner.tasks_done < tasks:
                report = learner.train_next_task()
                row = list(report.test_row)
        except NonFiniteLossError as err:
            where = str(err).split(";")[0]
        done = learner.tasks_done
    dead = dead_tasks(row, classes) if not where else []
    outcome = "non-finite" if where else ("dead" if dead else "ok")
    return {"setting": setting, "side": side, "seed": seed, "outcome": outcome, "where": where,
            "tasks_done": done, "acc": f"{sum(row) / len(row):.4f}" if row and not where else "",
            "dead_tasks": " ".join(str(u) for u in dead), "seconds": f"{time.perf_counter() - start:.1f}",
            "cpu": cpu_model_name(), "flush_denormals": True, "commit": COMMIT}


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def interval(k: int, n: int, method: str = "exact") -> tuple[float, float]:
    """95 % interval of the share k/n: Clopper-Pearson (``exact``) or ``wilson`` (scipy's)."""
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method=method)
    return ci.low, ci.high


def summary(rows: list[dict]) -> str:
    lines = []
    for setting in dict.fromkeys(r["setting"] for r in rows):
        lines.append(f"setting {setting}:")
        shares = {}
        for side in SIDES:
            mine = [r for r in rows if r["setting"] == setting and r["side"] == side]
            n = len(mine)
            if not n:
                continue
            parts = []
            for outcome in ("non-finite", "dead", "ok"):
                k = sum(r["outcome"] == outcome for r in mine)
                low, high = interval(k, n)
                parts.append(f"{outcome} {k}/{n} = {k / n:.2f} [{low:.2f}, {high:.2f}]")
                if outcome == "non-finite":
                    shares[side] = (k, n)
            accs = [float(r["acc"]) for r in mine if r["acc"]]
            mean_acc = f", mean ACC of the finished {sum(accs) / len(accs):.4f}" if accs else ""
            lines.append(f"  {side:9s} " + "; ".join(parts) + mean_acc)
            where = sorted(f"seed {r['seed']}: {r['where']}" for r in mine if r["where"])
            if where:
                lines.append("            non-finite at " + "; ".join(where))
        if len(shares) == 2:
            (k1, n1), (k2, n2) = shares["marktune"], shares["released"]
            p1, p2 = k1 / n1, k2 / n2
            diff = p1 - p2
            # Newcombe's hybrid score interval of a difference of two proportions, from Wilson's
            (l1, u1), (l2, u2) = interval(k1, n1, "wilson"), interval(k2, n2, "wilson")
            low = diff - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
            high = diff + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
            lines.append(f"  non-finite share, marktune - released: {diff:+.2f} [{low:+.2f}, {high:+.2f}] (Newcombe)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkout", nargs="?", type=Path, help="a checkout of JuliousHurtado/meta-training-setup")
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="issue41")
    parser.add_argument("--seeds", default="48-63", help="e.g. 48-63 or 1,2,5-9 (default 48-63)")
    parser.add_argument("--sides", default="released,marktune")
    parser.add_argument("--out", type=Path, default=Path("divergence.csv"))
    parser.add_argument("--jobs", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    parser.add_argument("--summary", type=Path, default=None, help="only print the summary of this table")
    args = parser.parse_args(argv)
    if args.summary:
        print(summary(read_rows(args.summary)))
        return 0
    if args.checkout is None:
        parser.error("give the released code's checkout (or --summary TABLE)")
    from released import check_checkout

    checkout = str(check_checkout(args.checkout))
    sides = [s for s in args.sides.split(",") if s]
    bad = [s for s in sides if s not in SIDES]
    if bad:
        parser.error(f"--sides: unknown {bad}; choose from {SIDES}")
    done = {(r["setting"], r["side"], int(r["seed"])) for r in read_rows(args.out)}
    todo = [(args.setting, side, seed) for seed in parse_seeds(args.seeds) for side in sides
            if (args.setting, side, seed) not in done]
    print(f"{len(todo)} runs to go ({len(done)} in {args.out} already), {args.jobs} at a time", flush=True)
    new_file = not args.out.is_file()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a", newline="") as f, ProcessPoolExecutor(args.jobs) as pool:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new_file:
            writer.writeheader()
        futures = [pool.submit(one_run, checkout, *job) for job in todo]
        for future in futures:
            row = future.result()
            writer.writerow(row)
            f.flush()
            print(f"  {row['side']:9s} seed {row['seed']}: {row['outcome']} {row['where']} "
                  f"ACC {row['acc'] or '-'} ({row['seconds']} s)", flush=True)
    print(summary(read_rows(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
