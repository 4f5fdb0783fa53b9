"""Syne Tune's and DEHB's own strategies on a recorded table, beside the replay's (issue 39).

Run with a Python that has Syne Tune and DEHB (bench dependencies, never in marktune's set-up):

    python3 -m venv /tmp/stvenv && /tmp/stvenv/bin/pip install syne-tune==0.16.0 huggingface_hub scipy dehb==0.1.2
    PYTHONPATH=. .venv/bin/python bench/syne_tune_check.py --export bench/curves/digits.csv /tmp/digits.npz --space digits
    /tmp/stvenv/bin/python bench/syne_tune_check.py /tmp/digits.npz --samples 32 --workers 2 --replay-seeds 30

The ``.npz`` is :func:`marktune.replay.blackbox.save_blackbox`'s (``--export`` makes it with
marktune's own Python; ``--space`` adds the searched settings' distributions). Each replay seed
runs one search of ``--samples`` trials on ``--workers`` simulated workers, each trial on one of
the table's seeds drawn at random, as a live search sees one seed:

- ``random (ids)``, ``asha (ids)``: the configuration id is the one searched setting (a second,
  constant column keeps pandas 3's look-up working), so random search draws from the table itself.
- ``random``, ``asha``, ``bohb``, ``asha-bore``, ``asha-cqr``: Syne Tune's schedulers on the space's
  own settings (log scales kept); a proposal is answered by the table's nearest configuration
  (:class:`Table.nearest`: Euclidean in the unit cube, log settings on a log scale, a choice its
  bin's centre). ``random`` here is the fair partner of the model-based rows: the same mapping,
  no model. BOHB's KDE at Syne Tune's defaults needs more than (settings) "good" and as many
  "bad" results on a rung, where good is the top 15 %: with 9 settings, 67 results, more than a
  32- or 64-sample search has, so ``bohb`` never leaves random sampling there; ``bohb-min`` sets
  its ``num_min_data_points`` to settings + 1, the least it accepts that can fit (20 results).
- ``dehb``: DEHB 0.1.2's ask/tell on the same unit cube and mapping, fidelities 1, 2 and 5 tasks
  (its eta 2 from 1 to 5 tasks gives 1.25, 2.5, 5; rounded), each evaluation trained from
  scratch as DEHB does, ``--workers`` jobs at a time, until the budget's task-trainings are spent.

Scored as ``marktune.replay.search`` scores a replay: the budget is ``samples`` x tasks
task-trainings; at 25, 50 and 100 % of it, the pick is the trial of best final val ACC among those
that ran every task by then, worth its configuration's mean final test ACC over the table's seeds;
regret is the table's best mean minus that, in ACC points, mean [95 % t interval] over the replay
seeds. Also printed: the task-trainings used as a share of the budget and the simulated wall time
(the table's recorded seconds, ``--workers`` at a time). Syne Tune's stopping criterion is checked
between events, so a search may start a trial or two past ``--samples`` (their task-trainings
count); its random search draws with replacement, the replay's from the table without.
"""
from __future__ import annotations

import argparse
import contextlib
import heapq
import io
import json
import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FRACTIONS = (0.25, 0.5, 1.0)
SYNE_TUNE = ("random (ids)", "asha (ids)", "random", "asha", "bohb", "bohb-min", "asha-bore", "asha-cqr")
STRATEGIES = (*SYNE_TUNE, "dehb")


def export(curves: Path, out: Path, space_name: str | None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from marktune.replay.blackbox import save_blackbox, to_blackbox_arrays
    from marktune.replay.table import ReplayTable
    from marktune.results.curves import read_curves
    from marktune.tune.spaces import load_space

    arrays = to_blackbox_arrays(ReplayTable.from_curves(read_curves(curves)))
    save_blackbox(arrays, out, space=load_space(space_name) if space_name else None)
    print(f"{out}: {arrays.objectives.shape} (configurations x seeds x tasks x objectives); left out "
          f"{len(arrays.dropped)}: {', '.join(arrays.dropped) or 'none'}")
    return 0


# ---------------------------------------------------------------- the table, on this side

class Table:
    """What the ``.npz`` holds, and the nearest configuration to a proposal."""

    def __init__(self, path: Path) -> None:
        data = np.load(path)
        self.ids = [str(i) for i in data["config_ids"]]
        self.objectives = data["objectives"]  # configurations x seeds x tasks x (val, test, cumulative s)
        self.tasks = int(data["fidelities"][-1])
        self.worth = self.objectives[:, :, -1, 1].mean(axis=1)  # mean final test ACC over the seeds
        self.best = float(self.worth.max())
        self.median_task_s = float(np.median(np.diff(self.objectives[:, :, :, 2], axis=2, prepend=0.0)))
        if "space" not in data:
            self.specs, self.unit = None, None
            return
        self.specs = json.loads(str(data["space"]))
        self.settings = [json.loads(str(s)) for s in data["settings"]]
        self.unit = np.array([self.encode(s) for s in self.settings])

    def encode(self, settings: dict) -> np.ndarray:
        """A setting per axis of the unit cube: log settings on a log scale, a choice at its bin's centre."""
        out = []
        for p in self.specs:
            v = settings[p["name"]]
            if p["kind"] == "choice":
                values = [str(x) for x in p["values"]]
                out.append((values.index(str(v)) + 0.5) / len(values))
            elif p["kind"] in ("loguniform", "logint"):
                out.append((math.log(float(v)) - math.log(p["low"])) / (math.log(p["high"]) - math.log(p["low"])))
            else:
                out.append((float(v) - p["low"]) / (p["high"] - p["low"]))
        return np.array(out)

    def nearest(self, point: np.ndarray) -> int:
        return int(np.argmin(((self.unit - point) ** 2).sum(axis=1)))

    def syne_tune_space(self) -> dict:
        from syne_tune.config_space import choice, loguniform, lograndint, randint, uniform

        domain = {"loguniform": lambda p: loguniform(p["low"], p["high"]),
                  "uniform": lambda p: uniform(p["low"], p["high"]),
                  "int": lambda p: randint(int(p["low"]), int(p["high"])),
                  "logint": lambda p: lograndint(int(p["low"]), int(p["high"])),
                  "choice": lambda p: choice(list(p["values"]))}
        return {p["name"]: domain[p["kind"]](p) for p in self.specs}


# ---------------------------------------------------------------- a search's reports, scored

@dataclass(frozen=True)
class Report:
    clock: float  # simulated seconds
    trial: int
    tasks: int  # tasks done by the trial (its fidelity)
    val: float
    config: int  # the table's configuration that answered


@dataclass
class Score:
    regrets: dict[float, float]
    trainings: float  # task-trainings used, share of the budget
    wall_s: float


def score(reports: list[Report], table: Table, *, budget: int) -> Score:
    """Regret at each budget fraction as the replay scores it; a report is one task-training."""
    ordered = sorted(reports, key=lambda r: r.clock)
    regrets = {}
    for fraction in FRACTIONS:
        limit = fraction * budget + 1e-9
        finals = [r for i, r in enumerate(ordered) if i + 1 <= limit and r.tasks == table.tasks]
        picked = max(finals, key=lambda r: r.val) if finals else None  # max keeps the first of ties
        regrets[fraction] = math.nan if picked is None else table.best - float(table.worth[picked.config])
    return Score(regrets=regrets, trainings=len(ordered) / budget, wall_s=max((r.clock for r in ordered), default=0.0))


# ---------------------------------------------------------------- Syne Tune

def blackbox_of(table: Table, *, by_id: bool):
    """Syne Tune's tabular blackbox of the table, its objectives with the answering configuration's
    index; ``by_id=False``: searched on the space's settings, answered by the nearest configuration."""
    import pandas as pd
    from syne_tune.blackbox_repository.blackbox_tabular import BlackboxTabular
    from syne_tune.config_space import choice, randint

    index = np.broadcast_to(np.arange(len(table.ids), dtype=float)[:, None, None, None],
                            (*table.objectives.shape[:3], 1))
    objectives = np.concatenate([table.objectives, index], axis=3)
    names = ["val_acc", "test_acc", "elapsed_time", "config_index"]
    hyperparameters = pd.DataFrame({"config": table.ids, "constant": ["0"] * len(table.ids)})
    id_space = {"config": choice(table.ids), "constant": choice(["0"])}

    class NearestTable(BlackboxTabular):
        def _objective_function(self, configuration, fidelity=None, seed=None):
            if isinstance(configuration, dict) and not by_id:
                configuration = table.nearest(table.encode(configuration))  # an index: every task's values
            return super()._objective_function(configuration, fidelity=fidelity, seed=seed)

    bb = NearestTable(hyperparameters=hyperparameters, configuration_space=id_space,
                      fidelity_space={"tasks": randint(1, table.tasks)}, objectives_evaluations=objectives,
                      fidelity_values=np.arange(1, table.tasks + 1), objectives_names=names)
    space = id_space if by_id else table.syne_tune_space()
    bb.configuration_space = space  # what the backend filters a trial's config by
    return bb, space


def syne_tune_search(table: Table, name: str, *, samples: int, workers: int, seed: int, grace: int,
                     eta: int) -> list[Report]:
    from syne_tune import StoppingCriterion, Tuner
    from syne_tune.backend.simulator_backend.simulator_backend import SimulatorConfig
    from syne_tune.backend.simulator_backend.simulator_callback import SimulatorCallback
    from syne_tune.blackbox_repository.simulated_tabular_backend import UserBlackboxBackend
    from syne_tune.experiments import load_experiment
    from syne_tune.optimizer import baselines

    bb, space = blackbox_of(table, by_id=name.endswith("(ids)"))
    # no seed to the backend: it would query that one table seed for every trial; without one it
    # draws a seed per trial with np.random, seeded here so that a replay seed replays
    np.random.seed(seed)
    # the simulated clock as the replay's: no start, stop or report delays; a tuner "sleep" (no
    # worker free) advances it by 2 % of a median task, not Syne Tune's default 5 s (a digits
    # task takes 0.5 s, a fmnist-lowdata one 25 s)
    zero = SimulatorConfig(delay_on_trial_result=0, delay_complete_after_final_report=0,
                           delay_complete_after_stop=0, delay_start=0, delay_stop=0)
    backend = UserBlackboxBackend(blackbox=bb, elapsed_time_attr="elapsed_time", simulator_config=zero,
                                  tuner_sleep_time=0.02 * table.median_task_s)
    config_space = {**space, "tasks": table.tasks}
    kind = name.split(" ")[0]
    if kind == "random":
        scheduler = baselines.RandomSearch(config_space, metrics=["val_acc"], do_minimize=False, random_seed=seed)
    else:
        cls = {"asha": baselines.ASHA, "bohb": baselines.BOHB, "bohb-min": baselines.BOHB,
               "asha-bore": baselines.ASHABORE, "asha-cqr": baselines.ASHACQR}[kind]
        extra = {"num_min_data_points": len(space) + 1} if kind == "bohb-min" else {}
        scheduler = cls(config_space, metric="val_acc", do_minimize=False, time_attr="tasks", max_t=table.tasks,
                        grace_period=grace, reduction_factor=eta, random_seed=seed, **extra)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SYNETUNE_FOLDER"] = tmp
        tuner = Tuner(trial_backend=backend, scheduler=scheduler, n_workers=workers, sleep_time=0,
                      stop_criterion=StoppingCriterion(max_num_trials_started=samples),
                      callbacks=[SimulatorCallback()], results_update_interval=600, print_update_interval=600,
                      save_tuner=False, wait_trial_completion_when_stopping=True,
                      tuner_name=f"st-{kind}-{seed}")
        tuner.run()
        df = load_experiment(tuner.name).results
    return [Report(clock=float(r.st_tuner_time), trial=int(r.trial_id), tasks=int(r.tasks), val=float(r.val_acc),
                   config=int(r.config_index)) for r in df.itertuples()]


# ---------------------------------------------------------------- DEHB

def dehb_search(table: Table, *, samples: int, workers: int, seed: int, eta: int) -> list[Report]:
    """DEHB's ask/tell with ``workers`` simulated workers, until the budget's task-trainings are
    committed; each evaluation trains its fidelity's tasks from scratch on a seed of its own."""
    from dehb import DEHB

    rng = np.random.default_rng(seed)
    budget = samples * table.tasks
    with tempfile.TemporaryDirectory() as tmp:
        optimizer = DEHB(f=None, dimensions=len(table.specs), min_fidelity=1, max_fidelity=table.tasks, eta=eta,
                         n_workers=1, seed=seed, configspace=False, output_path=tmp, log_level="ERROR")
        reports: list[Report] = []
        running: list[tuple[float, int, dict, int, float]] = []  # (end clock, job, job info, config, val)
        committed, jobs = 0, 0

        def launch(now: float) -> None:
            nonlocal committed, jobs
            job = optimizer.ask()
            tasks = max(1, int(round(job["fidelity"])))
            config = table.nearest(np.clip(np.asarray(job["config"], dtype=float), 0.0, 1.0))
            curve = table.objectives[config, rng.integers(table.objectives.shape[1])]
            for k in range(tasks):
                reports.append(Report(clock=now + curve[k, 2], trial=jobs, tasks=k + 1, val=curve[k, 0], config=config))
            heapq.heappush(running, (now + curve[tasks - 1, 2], jobs, job, config, float(curve[tasks - 1, 0])))
            committed += tasks
            jobs += 1

        for _ in range(workers):
            launch(0.0)
        while running:
            now, _, job, config, val = heapq.heappop(running)
            optimizer.tell(job, {"fitness": -val, "cost": 1.0})  # DEHB minimises
            if committed < budget:
                launch(now)
    return reports


# ---------------------------------------------------------------- the bench

def interval(values: list[float]) -> tuple[float, float, int]:
    from scipy import stats

    xs = np.array([v for v in values if not math.isnan(v)])
    if len(xs) < 2:
        return (float(xs.mean()) if len(xs) else math.nan), math.nan, len(xs)
    return float(xs.mean()), float(stats.t.ppf(0.975, len(xs) - 1) * xs.std(ddof=1) / math.sqrt(len(xs))), len(xs)


def cell(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    mean, half, n = interval(values)
    text = f"{scale * mean:.{digits}f} [{scale * (mean - half):.{digits}f}, {scale * (mean + half):.{digits}f}]"
    return text if n == len(values) else f"{text} ({n}/{len(values)} picked)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("table", type=Path, help="a .npz of marktune.replay.blackbox (or, with --export, a curves table)")
    parser.add_argument("out", type=Path, nargs="?", help="--export: the .npz to write")
    parser.add_argument("--export", action="store_true", help="write the .npz of a curves table (marktune's Python)")
    parser.add_argument("--space", help="--export: the space the table was recorded in (its settings' distributions)")
    parser.add_argument("--only", help=f"comma-separated strategies (default all: {', '.join(STRATEGIES)})")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--replay-seeds", type=int, default=30)
    parser.add_argument("--grace", type=int, default=1)
    parser.add_argument("--eta", type=int, default=2)
    args = parser.parse_args(argv)
    if args.export:
        if args.out is None:
            parser.error("--export needs the .npz to write: TABLE.csv OUT.npz")
        return export(args.table, args.out, args.space)
    names = STRATEGIES if not args.only else tuple(s.strip() for s in args.only.split(","))
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown:
        parser.error(f"unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}")
    table = Table(args.table)
    if table.specs is None and any(not n.endswith("(ids)") for n in names):
        parser.error(f"{args.table} has no space: export it again with --space, or run --only 'random (ids),asha (ids)'")
    logging.getLogger("syne_tune").setLevel(logging.ERROR)  # its per-trial lines and warnings, thousands of them
    logging.getLogger().setLevel(logging.ERROR)
    budget = args.samples * table.tasks
    print(f"strategies on {args.table}: {len(table.ids)} configurations x {table.objectives.shape[1]} seeds, "
          f"{table.tasks} tasks; {args.replay_seeds} replay seeds x {args.samples} samples (budget {budget} "
          f"task-trainings) on {args.workers} workers; ASHA-type grace {args.grace}, eta {args.eta}; the table's "
          f"best mean final test {table.best:.4f}")
    print("| strategy | regret at 25 % | regret at 50 % | regret at 100 % | task-trainings used | simulated wall s | bench s |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        started = time.perf_counter()
        scores = []
        for seed in range(args.replay_seeds):
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                if name == "dehb":
                    reports = dehb_search(table, samples=args.samples, workers=args.workers, seed=seed, eta=args.eta)
                else:
                    reports = syne_tune_search(table, name, samples=args.samples, workers=args.workers, seed=seed,
                                               grace=args.grace, eta=args.eta)
            scores.append(score(reports, table, budget=budget))
        label = name if name.startswith("random") or name == "dehb" else f"{name} g{args.grace} r{args.eta}"
        regrets = " | ".join(cell([s.regrets[f] for s in scores]) for f in FRACTIONS)
        print(f"| {label} | {regrets} | {cell([s.trainings for s in scores], digits=0)} % | "
              f"{cell([s.wall_s for s in scores], scale=1.0, digits=0)} | {time.perf_counter() - started:.0f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
