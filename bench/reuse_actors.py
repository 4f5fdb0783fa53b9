"""The same search with and without Tune's actor reuse, side by side (``--reuse-actors``).

Runs ``python -m marktune.search`` as a user does, once with ``--no-reuse-actors`` (a new Ray
actor, so a new process with its own torch import, for every trial) and once with the default
(a new trial runs in the actor of one that ended), ``--rounds`` times alternating, on the same
space, seed and CPUs. Prints each run's wall seconds, the trials' processes, and whether both
made the same trials (``trials.csv`` without the trial ids), and the rows that differ if not.
Names the CPU. ASHA decides on results in the order they arrive, so when two trials reach a rung
together, two runs can stop a trial at different tasks with or without reuse (seen once with
``--samples 2``); the learner's own figures are the same either way.

    PYTHONPATH=. .venv/bin/python bench/reuse_actors.py                  # digits, 6 trials, 2 CPUs
    PYTHONPATH=. .venv/bin/python bench/reuse_actors.py --samples 12 --rounds 1
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from marktune.mark.hardware import cpu_model_name
from marktune.results.files import RESULT_FILE, read_results

ROOT = Path(__file__).resolve().parents[1]


def one_search(*, space: str, samples: int, cpus: int, seed: int, reuse: bool, storage: Path) -> dict:
    argv = [sys.executable, "-m", "marktune.search", "--space", space, "--samples", str(samples),
            "--storage", str(storage), "--name", "bench", "--num-cpus", str(cpus), "--cpus-per-trial", "1",
            "--seed", str(seed), "-q", "--reuse-actors" if reuse else "--no-reuse-actors"]
    started = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"the search failed ({' '.join(argv)}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    experiment = storage / "bench"
    with open(experiment / "trials.csv") as f:
        rows = sorted(tuple(v for k, v in r.items() if k != "trial_id") for r in csv.DictReader(f))
    # every row a trial reported (retries too): Tune adds the process's pid to each
    pids = {row["pid"] for trial in experiment.glob("trial_*") for row in read_results(trial / RESULT_FILE)}
    return {"seconds": seconds, "rows": rows, "processes": len(pids)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--space", default="digits", help="a shipped space or a space file (default digits)")
    p.add_argument("--samples", type=int, default=6, help="trials per search (default 6)")
    p.add_argument("--num-cpus", type=int, default=2, help="the local Ray's CPUs, one per trial (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=2, help="pairs of runs, alternating (default 2)")
    args = p.parse_args(argv)
    print(f"[bench] {cpu_model_name()}, {os.cpu_count()} CPUs; python -m marktune.search --space {args.space} "
          f"--samples {args.samples} --num-cpus {args.num_cpus} --cpus-per-trial 1 --seed {args.seed}", flush=True)
    runs: dict[bool, list[dict]] = {False: [], True: []}
    for round_ in range(args.rounds):
        for reuse in (False, True):
            with tempfile.TemporaryDirectory() as tmp:
                run = one_search(space=args.space, samples=args.samples, cpus=args.num_cpus, seed=args.seed,
                                 reuse=reuse, storage=Path(tmp))
            runs[reuse].append(run)
            flag = "--reuse-actors   " if reuse else "--no-reuse-actors"
            print(f"[bench] round {round_ + 1} {flag}: {run['seconds']:6.1f} s wall, "
                  f"{run['processes']} trial processes for {args.samples} trials", flush=True)
    fresh = sum(r["seconds"] for r in runs[False]) / args.rounds
    reused = sum(r["seconds"] for r in runs[True]) / args.rounds
    every = runs[False] + runs[True]
    same = all(r["rows"] == every[0]["rows"] for r in every)
    print(f"[bench] mean wall: {fresh:.1f} s without reuse, {reused:.1f} s with it "
          f"({100 * (fresh - reused) / fresh:.0f} % less); the same trials in every run: {same}")
    if not same:  # which rows (status, tasks, figures, settings) not every run made
        common = set.intersection(*(set(r["rows"]) for r in every))
        for i, run in enumerate(every):
            flag = "--reuse-actors" if i >= len(runs[False]) else "--no-reuse-actors"
            for row in sorted(set(run["rows"]) - common):
                print(f"[bench]   only in a {flag} run: {', '.join(row)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
