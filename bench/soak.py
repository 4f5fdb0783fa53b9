"""A search under fire: trial workers killed every few seconds, the driver once, then resumed; nothing lost.

One soak round (:func:`soak_round`) runs ``python -m marktune.search`` on a small synthetic space
(``--samples`` trials of 3 tasks, 2 at a time, about a second a task) in a session of its own.
Every 3-6 s it SIGKILLs one trial worker (a ``ray::ImplicitFunc`` process of that session), and
once, at a random moment after the first task was reported, the driver with all of its Ray
processes; then it resumes the search (``--resume``), still killing workers, until the search
ends. The moments and the victims come from ``--seed``, printed (the search's own timing still
varies from run to run, so a seed replays the kills, not every interleaving). Then
:func:`what_was_lost` checks the experiment:

- every trial is in the Optuna study exactly once, in a final state, and trials.csv has the same
  trials with the same states; none ended ERROR (a kill is transient: retried,
  ``--max-failures 50``);
- curves.csv has, per trial, the tasks 1 .. tasks_done, with the val ACC that the study holds;
- no task of any trial was reported twice (the trials' own ``result.json``);
- ``optuna_journal.log`` reads whole (every line one JSON record; a fresh process loads it).

``tests/tune/test_soak.py`` runs one round; this bench runs rounds for ``--minutes``:

    PYTHONPATH=. .venv/bin/python bench/soak.py --minutes 10 --seed 0

and prints per round the kills survived and anything lost (it must be nothing).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
NAME = "soak"
NUM_TASKS = 3
WORKER = "ray::ImplicitFunc"  # a Tune function trainable's actor: one trial's MARK sequence
FINAL = {"COMPLETE": "COMPLETE", "PRUNED": "PRUNED", "ERROR": "FAIL"}  # trials.csv status -> Optuna state


def soak_space(path: Path, *, samples: int) -> Path:
    """A synthetic space of tasks of about a second, grace period 1 so that ASHA stops some."""
    path.write_text(yaml.safe_dump({
        "benchmark": "synthetic",
        "fixed": {"num_tasks": NUM_TASKS, "epochs": 1, "kb_epochs": 1, "meta_epochs": 4, "mini_tasks": 2,
                  "inner_steps": 3, "kb_width": 8, "latent_dim": 16, "fe_channels": 8, "batch_size": 32,
                  "synthetic_classes_per_task": 4, "synthetic_images_per_class": 60, "synthetic_image_size": 12},
        "search": {"lr_meta": {"type": "loguniform", "low": 0.001, "high": 0.1},
                   "meta_step": {"type": "loguniform", "low": 0.001, "high": 0.3}},
        "defaults": {"samples": samples, "grace_period": 1, "reduction_factor": 2, "cpus_per_trial": 1},
    }))
    return path


def _session_pids(session: int) -> list[tuple[int, str]]:
    """(pid, command line) of every process in ``session`` but the session leader's own."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            if pid == session or os.getsid(pid) != session:
                continue
            found.append((pid, (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")))
        except (OSError, ProcessLookupError):
            continue
    return found


def trial_workers(session: int) -> list[int]:
    return sorted(pid for pid, cmd in _session_pids(session) if cmd.startswith(WORKER))


def _kill(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False


def kill_session(session: int) -> None:
    """SIGKILL the driver (the session's leader) and every process it started (Ray's included)."""
    _kill(session)
    for _ in range(50):
        left = _session_pids(session)
        if not left:
            return
        for pid, _ in left:
            _kill(pid)
        time.sleep(0.1)


def _tasks_reported(experiment: Path) -> int:
    done = 0
    for result in experiment.glob("trial_*/result.json"):
        done += sum(1 for line in result.read_text(errors="replace").splitlines() if line.strip())
    return done


@dataclass
class Round:
    seed: int
    worker_kills: int = 0
    driver_kills: int = 0
    runs: list[int] = field(default_factory=list)  # each search process's exit status
    seconds: float = 0.0
    lost: list[str] = field(default_factory=list)  # what_was_lost's findings


def soak_round(workdir: Path, *, seed: int, samples: int = 12, kill_every: tuple[float, float] = (3.0, 6.0),
               timeout_s: float = 900.0, log=print) -> Round:
    """One search under fire, resumed after its driver was killed; then the checks."""
    rng = random.Random(seed)
    workdir.mkdir(parents=True, exist_ok=True)
    space = soak_space(workdir / "space.yaml", samples=samples)
    storage = workdir / "storage"
    experiment = storage / NAME
    outcome = Round(seed=seed)
    started = time.monotonic()
    driver_killed = False
    argv = ["--space", str(space), "--storage", str(storage), "--name", NAME, "--num-cpus", "2",
            "--seed", str(seed), "--max-failures", "50"]
    for attempt in range(2):
        args = argv if attempt == 0 else [*argv, "--resume"]
        with open(workdir / f"search-{attempt}.log", "w") as out:
            search = subprocess.Popen([sys.executable, "-m", "marktune.search", *args], cwd=ROOT,
                                      env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=out,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        # the driver dies once, a random number of task reports into the first run
        kill_driver_at = rng.randint(2, max(3, samples * NUM_TASKS // 2)) if attempt == 0 else math.inf
        next_kill = time.monotonic() + rng.uniform(*kill_every)
        try:
            while search.poll() is None:
                if time.monotonic() - started > timeout_s:
                    raise TimeoutError(f"soak seed {seed}: the search ran past {timeout_s:.0f} s")
                if _tasks_reported(experiment) >= kill_driver_at:
                    kill_session(search.pid)
                    search.wait()
                    outcome.driver_kills += 1
                    driver_killed = True
                    break
                if time.monotonic() >= next_kill:
                    workers = trial_workers(search.pid)
                    if workers and _kill(rng.choice(workers)):
                        outcome.worker_kills += 1
                    next_kill = time.monotonic() + rng.uniform(*kill_every)
                time.sleep(0.05)
        finally:
            if search.poll() is None:
                kill_session(search.pid)
                search.wait()
        outcome.runs.append(search.returncode)
        if not driver_killed or attempt == 1:
            break
    outcome.seconds = time.monotonic() - started
    outcome.lost = what_was_lost(experiment, samples=samples)
    if outcome.runs[-1] != 0:
        outcome.lost.append(f"the last search exited {outcome.runs[-1]} (see {workdir}/search-*.log)")
    log(f"soak seed {seed}: {outcome.worker_kills} trial workers and {outcome.driver_kills} driver killed; "
        f"exits {outcome.runs}; {outcome.seconds:.0f} s; lost: {'; '.join(outcome.lost) or 'nothing'}")
    return outcome


def _study(experiment: Path):
    import optuna
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(experiment / "optuna_journal.log")))
    return optuna.load_study(study_name=NAME, storage=storage)


def what_was_lost(experiment: Path, *, samples: int) -> list[str]:
    """Every way the experiment disagrees with itself or lost a trial or task (empty: nothing)."""
    lost: list[str] = []
    journal = experiment / "optuna_journal.log"
    for n, line in enumerate(journal.read_text(errors="replace").splitlines(), 1):
        try:
            json.loads(line)
        except ValueError:
            lost.append(f"optuna_journal.log line {n} is not a whole record")
    try:
        study = _study(experiment)
    except Exception as err:  # noqa: BLE001 - any failure to read it back is the finding
        return [*lost, f"the study does not load from optuna_journal.log: {err!r}"]
    trials = study.trials
    if len(trials) != samples:
        lost.append(f"the study has {len(trials)} trials, not {samples}")
    unfinished = [t.number for t in trials if not t.state.is_finished()]
    if unfinished:
        lost.append(f"study trials {unfinished} are not in a final state")
    with open(experiment / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    if len(rows) != len(trials):
        lost.append(f"trials.csv has {len(rows)} trials, the study {len(trials)}")
    by_settings = {_key(t.params): t for t in trials}
    if len(by_settings) != len(trials):
        lost.append("two study trials have the same settings (one trial twice?)")
    curves: dict[str, dict[int, float]] = {}
    with open(experiment / "curves.csv") as f:
        for r in csv.DictReader(f):
            tasks = curves.setdefault(r["trial_id"], {})
            if int(r["task"]) in tasks:
                lost.append(f"curves.csv has trial {r['trial_id']} task {r['task']} twice")
            tasks[int(r["task"])] = float(r["val_acc"])
    for row in rows:
        trial = by_settings.get(_key({k: row[k] for k in ("lr_meta", "meta_step")}))
        if trial is None:
            lost.append(f"trials.csv's {row['trial_id']} is not in the study")
            continue
        if row["status"] == "ERROR":  # a kill is transient: retried, never the end of a trial (--max-failures 50)
            lost.append(f"{row['trial_id']} ended ERROR: {row.get('error', '')[:200]}")
        if FINAL.get(row["status"]) != trial.state.name:
            lost.append(f"{row['trial_id']}: trials.csv says {row['status']}, the study {trial.state.name}")
        done = int(row["tasks_done"])
        got = curves.get(row["trial_id"], {})
        if sorted(got) != list(range(1, done + 1)):
            lost.append(f"{row['trial_id']}: curves.csv has tasks {sorted(got)}, trials.csv {done} done")
        if sorted(trial.intermediate_values) != sorted(got) or any(
                abs(trial.intermediate_values[k] - v) > 1e-12 for k, v in got.items() if k in trial.intermediate_values):
            lost.append(f"{row['trial_id']}: the study's task values {trial.intermediate_values} differ from "
                        f"curves.csv's {got}")
        reported = []
        result = experiment / f"trial_{row['trial_id']}" / "result.json"
        for line in (result.read_text(errors="replace").splitlines() if result.is_file() else []):
            if line.strip():
                reported.append(int(json.loads(line)["tasks_done"]))
        twice = sorted({k for k in reported if reported.count(k) > 1})
        if twice:
            lost.append(f"{row['trial_id']}: task(s) {twice} ran twice (result.json)")
    return lost


def _key(params: dict) -> tuple:
    return tuple(round(math.log(float(params[k])), 9) for k in ("lr_meta", "meta_step"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="run rounds until this much time has passed")
    parser.add_argument("--seed", type=int, default=0, help="the first round's seed (then +1 per round)")
    parser.add_argument("--samples", type=int, default=12)
    parser.add_argument("--kill-every", type=float, nargs=2, default=(3.0, 6.0), metavar=("LOW", "HIGH"),
                        help="seconds between worker kills, drawn uniformly (default 3 6)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/marktune-soak"))
    args = parser.parse_args(argv)
    print(f"soak: rounds of a {args.samples}-trial search, a trial worker killed every {args.kill_every[0]:g}-"
          f"{args.kill_every[1]:g} s and the driver once; "
          f"{args.minutes:g} min from seed {args.seed}; folders under {args.workdir}", flush=True)
    deadline = time.monotonic() + 60 * args.minutes
    rounds: list[Round] = []
    seed = args.seed
    while time.monotonic() < deadline:
        rounds.append(soak_round(args.workdir / f"seed-{seed}", seed=seed, samples=args.samples,
                                 kill_every=tuple(args.kill_every), log=lambda s: print(s, flush=True)))
        seed += 1
    lost = [r for r in rounds if r.lost]
    print(f"soak: {len(rounds)} rounds, {sum(r.worker_kills for r in rounds)} trial workers and "
          f"{sum(r.driver_kills for r in rounds)} drivers killed; rounds that lost something: "
          f"{', '.join(str(r.seed) for r in lost) or 'none'}")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
