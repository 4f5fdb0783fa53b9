"""What is still running when a process that used Ray in-process exits: the reproducer behind the
test session's ``os._exit`` (tests/conftest.py, docs/testing.md).

The test process does what this script does: torch computes (its OpenMP pool starts), Ray starts
in the process, Tune runs trials, ``ray.shutdown()``, then the interpreter's own teardown. This
prints the native threads (by name, from ``/proc/self/task``) at each step: several of Ray's and
gRPC's outlive ``ray.shutdown()`` and are still running while the interpreter finalises and the
C++ static destructors run at exit. With ``--runs N`` it runs itself N times in child processes
and prints each exit status (139: SIGSEGV).

    .venv/bin/python scripts/ray_teardown_threads.py            # the thread names, once
    .venv/bin/python scripts/ray_teardown_threads.py --runs 20  # exit statuses of 20 runs
"""
from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time


def threads() -> dict[str, int]:
    names: collections.Counter[str] = collections.Counter()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names[f.read().strip()] += 1
        except OSError:  # a thread that ended while listed
            pass
    return dict(sorted(names.items()))


def once() -> None:
    import torch

    x = torch.randn(256, 256)
    for _ in range(20):
        x = torch.tanh(x @ x)
    print("after torch:", threads(), flush=True)
    import ray
    from ray import tune

    def trainable(config):
        tune.report({"a": config["x"]})

    ray.init(num_cpus=2, include_dashboard=False, address="local", log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        tune.Tuner(trainable, param_space={"x": tune.grid_search([1, 2])},
                   run_config=tune.RunConfig(storage_path=tmp, name="t", verbose=0)).fit()
    print("Ray up, after Tune:", threads(), flush=True)
    ray.shutdown()
    time.sleep(2)
    print("2 s after ray.shutdown():", threads(), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=0, help="run N child processes and print their exit statuses")
    args = parser.parse_args(argv)
    if not args.runs:
        once()
        return 0  # the interpreter's own teardown follows
    codes = collections.Counter()
    for n in range(1, args.runs + 1):
        child = subprocess.run([sys.executable, __file__], capture_output=True, text=True)
        codes[child.returncode] += 1
        print(f"run {n}: exit {child.returncode}", flush=True)
    print(f"{args.runs} runs: exit statuses {dict(codes)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
