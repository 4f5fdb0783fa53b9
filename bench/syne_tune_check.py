"""Syne Tune's own simulator on a recorded table: random search and ASHA, for the replay's cross-check.

Run with a Python that has Syne Tune (a bench dependency, never in marktune's set-up):

    python3 -m venv /tmp/stvenv && /tmp/stvenv/bin/pip install syne-tune==0.16.0 huggingface_hub scipy
    PYTHONPATH=. .venv/bin/python bench/syne_tune_check.py --export bench/curves/digits.csv /tmp/digits.npz
    /tmp/stvenv/bin/python bench/syne_tune_check.py /tmp/digits.npz --samples 32 --workers 2 --replay-seeds 30

The ``.npz`` is :func:`marktune.replay.blackbox.save_blackbox`'s (``--export`` makes it with
marktune's own Python). Each replay seed runs a search of ``--samples`` trials on ``--workers``
simulated workers (``UserBlackboxBackend`` + ``SimulatorCallback``, each trial drawing one of the
table's seeds), the configuration id its one searched setting (a second, constant column keeps
pandas 3's look-up working). The pick is the finished trial of best final val ACC, scored by its
configuration's mean final test ACC over the table's seeds (as the replay scores it); printed per
strategy: regret against the table's best mean, with its 95 % t interval, and the task-trainings
used as a share of samples x tasks. Syne Tune's stopping criterion is checked between events, so a
search may start a trial or two past ``--samples`` (their task-trainings count); its random search
draws configurations with replacement, the replay's draws from the table without.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def export(curves: Path, out: Path) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from marktune.replay.blackbox import save_blackbox, to_blackbox_arrays
    from marktune.replay.table import ReplayTable
    from marktune.results.curves import read_curves

    arrays = to_blackbox_arrays(ReplayTable.from_curves(read_curves(curves)))
    save_blackbox(arrays, out)
    print(f"{out}: {arrays.objectives.shape} (configurations x seeds x tasks x objectives); left out "
          f"{len(arrays.dropped)}: {', '.join(arrays.dropped) or 'none'}")
    return 0


def blackbox_of(path: Path):
    import pandas as pd
    from syne_tune.blackbox_repository.blackbox_tabular import BlackboxTabular
    from syne_tune.config_space import choice, randint

    data = np.load(path)
    ids = [str(i) for i in data["config_ids"]]
    hyperparameters = pd.DataFrame({"config": ids, "constant": ["0"] * len(ids)})
    space = {"config": choice(ids), "constant": choice(["0"])}
    tasks = int(data["fidelities"][-1])
    bb = BlackboxTabular(hyperparameters=hyperparameters, configuration_space=space,
                         fidelity_space={"tasks": randint(1, tasks)}, objectives_evaluations=data["objectives"],
                         fidelity_values=data["fidelities"], objectives_names=list(data["objectives_names"]))
    worth = dict(zip(ids, data["objectives"][:, :, -1, 1].mean(axis=1)))  # mean final test over seeds
    return bb, space, worth, tasks


def one_search(bb, space, worth, tasks, *, scheduler_name: str, samples: int, workers: int, seed: int,
               grace: int, eta: int):
    from syne_tune import StoppingCriterion, Tuner
    from syne_tune.backend.simulator_backend.simulator_callback import SimulatorCallback
    from syne_tune.blackbox_repository.simulated_tabular_backend import UserBlackboxBackend
    from syne_tune.experiments import load_experiment
    from syne_tune.optimizer.baselines import ASHA, RandomSearch

    # no seed to the backend: it would query that one table seed for every trial; without one it
    # draws a seed per trial with np.random, seeded here so that a replay seed replays
    np.random.seed(seed)
    backend = UserBlackboxBackend(blackbox=bb, elapsed_time_attr="elapsed_time")
    config_space = {**space, "tasks": tasks}
    if scheduler_name == "random":
        scheduler = RandomSearch(config_space, metrics=["val_acc"], do_minimize=False, random_seed=seed)
    else:
        scheduler = ASHA(config_space, metric="val_acc", do_minimize=False, time_attr="tasks", max_t=tasks,
                         grace_period=grace, reduction_factor=eta, random_seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        import os
        os.environ["SYNETUNE_FOLDER"] = tmp
        tuner = Tuner(trial_backend=backend, scheduler=scheduler, n_workers=workers, sleep_time=0,
                      stop_criterion=StoppingCriterion(max_num_trials_started=samples),
                      callbacks=[SimulatorCallback()], results_update_interval=600, print_update_interval=600,
                      save_tuner=False, wait_trial_completion_when_stopping=True,
                      tuner_name=f"st-{scheduler_name}-{seed}")
        tuner.run()
        df = load_experiment(tuner.name).results
    final = df[df["tasks"] == tasks]
    trainings = len(df)  # one row per (trial, task) reported
    if final.empty:
        return math.nan, trainings
    picked = final.sort_values("val_acc", ascending=False).iloc[0]["config_config"]  # Syne Tune prefixes config_
    return float(worth[str(picked)]), trainings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("table", type=Path, help="a .npz of marktune.replay.blackbox (or, with --export, a curves table)")
    parser.add_argument("out", type=Path, nargs="?", help="--export: the .npz to write")
    parser.add_argument("--export", action="store_true", help="write the .npz of a curves table (marktune's Python)")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--replay-seeds", type=int, default=30)
    parser.add_argument("--grace", type=int, default=1)
    parser.add_argument("--eta", type=int, default=2)
    args = parser.parse_args(argv)
    if args.export:
        return export(args.table, args.out)
    import contextlib
    import io
    import logging

    from scipy import stats

    logging.getLogger("syne_tune").setLevel(logging.ERROR)  # its per-trial lines and warnings, thousands of them
    bb, space, worth, tasks = blackbox_of(args.table)
    best = max(worth.values())
    print(f"syne tune bench: {args.table}: {len(worth)} configurations, {tasks} tasks; {args.replay_seeds} seeds x "
          f"{args.samples} samples on {args.workers} workers; the table's best mean final test {best:.4f}")
    for name in ("random", "asha"):
        started = time.perf_counter()
        regrets, used = [], []
        for seed in range(args.replay_seeds):
            with contextlib.redirect_stdout(io.StringIO()):  # its banner and summary tables, printed per search
                value, trainings = one_search(bb, space, worth, tasks, scheduler_name=name, samples=args.samples,
                                              workers=args.workers, seed=seed, grace=args.grace, eta=args.eta)
            regrets.append(best - value)
            used.append(trainings / (args.samples * tasks))
        xs = np.array([r for r in regrets if not math.isnan(r)])
        half = stats.t.ppf(0.975, len(xs) - 1) * xs.std(ddof=1) / math.sqrt(len(xs)) if len(xs) > 1 else math.nan
        label = name if name == "random" else f"asha g{args.grace} r{args.eta}"
        print(f"{label:14s} regret {100 * xs.mean():.2f} [{100 * (xs.mean() - half):.2f}, {100 * (xs.mean() + half):.2f}] "
              f"({len(xs)}/{len(regrets)} picked); task-trainings {100 * np.mean(used):.0f} %; "
              f"{time.perf_counter() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
