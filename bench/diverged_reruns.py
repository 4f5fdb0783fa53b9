"""The recorded runs that went non-finite, run again here, with the space's settings and with one changed (issue 41).

    PYTHONPATH=. .venv/bin/python bench/diverged_reruns.py bench/curves/digits.csv --space digits \\
        --vary mask_init=default

Finds the runs of a curves table whose status is ``ERROR: NonFiniteLossError`` (configuration,
seed, settings), runs each again on this machine (one thread, as ``bench/separation.py`` does)
as recorded and with each ``--vary KEY=VALUE`` in turn, and prints per run and
variant: finished or not, after how many tasks, the error's words (which phase and task), and
the final mean test ACC with the tasks at chance ("dead": val ACC at most 1/classes + 0.05).
Round-off decides which runs diverge, so a run recorded on another CPU may finish here.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def diverged_runs(path: Path) -> list[tuple[str, int, dict]]:
    from marktune.results.curves import read_curves

    runs = {}
    for row in read_curves(path).rows:
        if row.status.startswith("ERROR") and "NonFinite" in row.status:
            runs[(row.trial_id, row.seed)] = dict(row.params)
    return [(cid, seed, params) for (cid, seed), params in sorted(runs.items())]


def rerun(base: dict, params: dict, seed: int) -> tuple[str, int, str]:
    """(status, tasks done, what it says) of one sequence, in this process, one thread."""
    import torch

    from marktune.data.benchmarks import load_benchmark_for
    from marktune.mark.config import MarkConfig
    from marktune.mark.learner import MarkLearner

    torch.set_num_threads(1)
    config = MarkConfig.from_dict({**base, **params, "seed": seed})
    learner = MarkLearner(config, load_benchmark_for(config), verbose=0)
    report = None
    try:
        while learner.tasks_done < learner.num_tasks:
            report = learner.train_next_task()
    except Exception as err:  # noqa: BLE001 - the divergence is the result
        return "diverged", learner.tasks_done, f"{type(err).__name__}: {err}"
    chance = 1.0 / 2 + 0.05  # 2 classes a task in every split benchmark here
    dead = [u + 1 for u, v in enumerate(report.val_row) if v <= chance]
    return "finished", learner.tasks_done, (f"test ACC {report.mean_test_acc:.4f}"
                                            + (f", task(s) {dead} at chance" if dead else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("table", type=Path)
    parser.add_argument("--space", required=True)
    parser.add_argument("--vary", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting to change in a second run of each (repeatable: one variant each)")
    args = parser.parse_args(argv)
    from marktune.mark.config import parse_overrides
    from marktune.tune.spaces import load_space

    space = load_space(args.space)
    base = space.base_config()
    variants = [("as recorded", {})] + [(v, parse_overrides([v])) for v in args.vary]
    runs = diverged_runs(args.table)
    print(f"{args.table}: {len(runs)} runs ended non-finite; each run again here, {len(variants)} way(s)")
    counts = {name: 0 for name, _ in variants}
    for cid, seed, params in runs:
        for name, change in variants:
            status, tasks, words = rerun({**base, **change}, params, seed)
            counts[name] += status == "diverged"
            print(f"  {cid} seed {seed}, {name}: {status} after {tasks} tasks; {words}", flush=True)
    print("diverged here: " + "; ".join(f"{name} {n} of {len(runs)}" for name, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
