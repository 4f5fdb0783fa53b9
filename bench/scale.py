"""marktune's driver at many trials, beside plain Ray Tune running the same trial (issue 52).

Each size N runs, one after the other on the same machine:

* **marktune**: ``python -m marktune.search`` on a synthetic space cut to the bone (2 tasks of a
  few tiny images: the trial itself costs almost nothing, so what is measured is the driver),
  random search, no early stopping, no confirmation, ``--max-concurrent`` trials at once on
  ``--cpus-per-trial`` CPUs each, actors reused: the real path (its callbacks, the Optuna
  searcher and journal, the summary, trials.csv, curves.csv);
* **plain Tune**: the same trainable (``runners.mark_sequence.train_mark_sequence``, the same
  reports and checkpoints) on the same param space, through ``tune.Tuner`` with Tune's own
  random search, FIFO scheduler, loggers and experiment-state cadence: no marktune code in the
  driver. A process of its own, so both start from a fresh Ray.

and then, on marktune's experiment: ``python -m marktune.report``, ``marktune.evaluate``'s read
of it (``load_experiment``), and ``--resume`` of the finished search. It prints per N: the wall
of each search, seconds per trial and results (tasks reported) per second, marktune's overhead
per trial over plain Tune's, the driver's peak memory (VmHWM), the seconds after Tune's fit
(marktune: the summary and its tables), the experiment folder's size and files, and the times
of report, read and resume. Rows are appended to ``--out`` as each size ends (``--resume``
skips sizes already there), with the commit and the CPU.

    PYTHONPATH=. .venv/bin/python bench/scale.py --sizes 100 1000
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
TASKS = 2
# a trial of almost no work: 2 tasks of 2 classes x 6 images of 8 x 8, one step of each phase
FIXED = {"num_tasks": TASKS, "epochs": 1, "kb_epochs": 1, "meta_epochs": 1, "mini_tasks": 1, "inner_steps": 1,
         "kb_depth": 1, "kb_width": 4, "latent_dim": 4, "fe_channels": 4, "batch_size": 16,
         "synthetic_classes_per_task": 2, "synthetic_images_per_class": 6, "synthetic_image_size": 8}
SEARCH = {"lr_meta": {"type": "loguniform", "low": 0.001, "high": 0.1},
          "meta_step": {"type": "loguniform", "low": 0.001, "high": 0.3}}
FIELDS = ["n", "tool", "wall_s", "s_per_trial", "results_per_s", "after_fit_s", "driver_peak_mb",
          "folder_mb", "files", "report_s", "read_s", "resume_s", "commit", "cpu"]
FIT_DONE = re.compile(r"Wrote the latest version of all result files")  # Tune's last line of fit()


def scale_space(path: Path, *, samples: int) -> Path:
    path.write_text(yaml.safe_dump({"benchmark": "synthetic", "fixed": FIXED, "search": SEARCH,
                                    "defaults": {"samples": samples}}))
    return path


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    return platform.processor() or "unknown CPU"


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def folder_size(path: Path) -> tuple[float, int]:
    """(MB, files) under ``path``."""
    size = files = 0
    for root, _, names in os.walk(path):
        for name in names:
            try:
                size += os.lstat(os.path.join(root, name)).st_size
                files += 1
            except OSError:
                pass
    return size / 1e6, files


class Watched:
    """A command run to its end, its output to a log, the moment its fit ended (Tune's last line)
    and its own peak resident memory (VmHWM, read until it exits)."""

    def __init__(self, argv: list[str], log: Path):
        self.argv, self.log = argv, log
        self.fit_done_at: float | None = None
        self.peak_kb = 0

    def run(self) -> tuple[float, int]:
        started = time.monotonic()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with open(self.log, "w") as out:
            proc = subprocess.Popen(self.argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, bufsize=1)
            watcher = threading.Thread(target=self._watch_memory, args=(proc,), daemon=True)
            watcher.start()
            for line in proc.stdout:
                out.write(line)
                if self.fit_done_at is None and FIT_DONE.search(line):
                    self.fit_done_at = time.monotonic()
            proc.wait()
        self.ended_at = time.monotonic()
        return self.ended_at - started, proc.returncode

    def _watch_memory(self, proc: subprocess.Popen) -> None:
        status = Path(f"/proc/{proc.pid}/status")
        while proc.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.peak_kb = max(self.peak_kb, int(line.split()[1]))
            except (OSError, ValueError):
                pass
            time.sleep(0.2)

    @property
    def after_fit(self) -> float:
        return self.ended_at - self.fit_done_at if self.fit_done_at is not None else float("nan")


def timed(argv: list[str], log: Path) -> float:
    watched = Watched(argv, log)
    seconds, code = watched.run()
    if code != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {code}; see {log}")
    return seconds


def measure(n: int, workdir: Path, args: argparse.Namespace) -> list[dict]:
    workdir.mkdir(parents=True, exist_ok=True)
    space = scale_space(workdir / "space.yaml", samples=n)
    name, storage = f"scale-{n}", workdir / "marktune"
    flags = ["--space", str(space), "--storage", str(storage), "--name", name, "--samples", str(n),
             "--searcher", "random", "--scheduler", "none", "--confirm-top", "0",
             "--cpus-per-trial", str(args.cpus_per_trial), "--max-concurrent", str(args.concurrent),
             "--num-cpus", str(args.num_cpus), "--seed", "0", "-q"]
    py = sys.executable
    rows = []
    search = Watched([py, "-m", "marktune.search", *flags], workdir / "marktune.log")
    wall, code = search.run()
    if code != 0:
        raise RuntimeError(f"marktune's search exited {code}; see {workdir / 'marktune.log'}")
    experiment = storage / name
    mb, files = folder_size(experiment)
    report = timed([py, "-m", "marktune.report", str(experiment)], workdir / "report.log")
    read = timed([py, "-c", "import sys; from marktune.results.experiment_reader import load_experiment; "
                  "e = load_experiment(sys.argv[1]); print(len(e.trials), 'trials')", str(experiment)],
                 workdir / "read.log")
    resume = timed([py, "-m", "marktune.search", "--resume", "--name", name, "--storage", str(storage), "-q"],
                   workdir / "resume.log")
    rows.append({"tool": "marktune", "wall_s": wall, "after_fit_s": search.after_fit, "driver_peak_mb": search.peak_kb / 1e3,
                 "folder_mb": mb, "files": files, "report_s": report, "read_s": read, "resume_s": resume})

    plain = Watched([py, str(Path(__file__).resolve()), "--plain-tune", str(n), "--workdir", str(workdir),
                     "--concurrent", str(args.concurrent), "--cpus-per-trial", str(args.cpus_per_trial),
                     "--num-cpus", str(args.num_cpus)], workdir / "plain.log")
    wall, code = plain.run()
    if code != 0:
        raise RuntimeError(f"plain Tune exited {code}; see {workdir / 'plain.log'}")
    mb, files = folder_size(workdir / "plain" / name)
    rows.append({"tool": "plain Tune", "wall_s": wall, "after_fit_s": plain.after_fit,
                 "driver_peak_mb": plain.peak_kb / 1e3, "folder_mb": mb, "files": files})
    for row in rows:
        row.update(n=n, s_per_trial=row["wall_s"] / n, results_per_s=n * TASKS / row["wall_s"],
                   commit=args.commit, cpu=args.cpu)
    return rows


def plain_tune(n: int, workdir: Path, *, concurrent: int, cpus_per_trial: float, num_cpus: int) -> None:
    """The same trainable and param space through Tune alone (Tune's searcher, scheduler, loggers)."""
    import ray
    from ray import tune

    from marktune.tune.plan import RUNTIME_KEY
    from marktune.tune.spaces import load_space
    from runners.mark_sequence import train_mark_sequence
    from runners.runtime import TrialRuntime

    space = load_space(str(workdir / "space.yaml"))
    param_space = space.param_space(None)
    param_space[RUNTIME_KEY] = TrialRuntime(threads=1).to_dict()
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False)
    tuner = tune.Tuner(tune.with_resources(train_mark_sequence, {"cpu": cpus_per_trial}), param_space=param_space,
                       tune_config=tune.TuneConfig(num_samples=n, max_concurrent_trials=concurrent, reuse_actors=True),
                       run_config=tune.RunConfig(name=f"scale-{n}", storage_path=str(workdir / "plain"), verbose=1))
    results = tuner.fit()
    print(f"plain Tune: {len(results)} trials, {sum(r.error is not None for r in results)} errored")


def print_rows(rows: list[dict]) -> None:
    def cell(value) -> str:
        if value in ("", None):
            return "-"
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return str(value)

    shown = FIELDS[:-2]
    print("  ".join(f"{c:>14}" for c in shown))
    for row in rows:
        print("  ".join(f"{cell(row.get(c)):>14}" for c in shown))
    by_n: dict[int, dict[str, dict]] = {}
    for row in rows:
        by_n.setdefault(int(row["n"]), {})[row["tool"]] = row
    for n, tools in sorted(by_n.items()):
        if {"marktune", "plain Tune"} <= set(tools):
            mt, pt = float(tools["marktune"]["wall_s"]), float(tools["plain Tune"]["wall_s"])
            print(f"N={n}: marktune {mt / pt:.2f}x plain Tune's wall; {(mt - pt) / n:+.3f} s per trial")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000], help="trial counts (default 100 1000)")
    parser.add_argument("--concurrent", type=int, default=8, help="trials at once (default 8)")
    parser.add_argument("--cpus-per-trial", type=float, default=0.25, help="CPUs per trial (default 0.25)")
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count() or 2, help="the local Ray's CPUs")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/marktune-scale"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "scale" / "scale.csv",
                        help="rows appended here as each size ends")
    parser.add_argument("--resume", action="store_true", help="skip the sizes --out already has for this commit")
    parser.add_argument("--plain-tune", type=int, default=None, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args(argv)
    if args.plain_tune is not None:
        plain_tune(args.plain_tune, args.workdir, concurrent=args.concurrent, cpus_per_trial=args.cpus_per_trial,
                   num_cpus=args.num_cpus)
        return 0
    args.commit, args.cpu = commit(), cpu_name()
    done: list[dict] = []
    if args.out.is_file():
        with open(args.out) as f:
            done = list(csv.DictReader(f))
    if not args.resume:
        done = []
    have = {int(r["n"]) for r in done if r["commit"] == args.commit}
    print(f"scale: sizes {args.sizes}, {args.concurrent} trials at once on {args.cpus_per_trial:g} CPU each, "
          f"{args.num_cpus} CPUs; {args.cpu}; commit {args.commit}; rows to {args.out}", flush=True)
    rows = [r for r in done if r["commit"] == args.commit]
    for n in args.sizes:
        if n in have:
            print(f"N={n}: already in {args.out}", flush=True)
            continue
        started = time.monotonic()
        new = measure(n, args.workdir / f"n{n}", args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        fresh = not args.out.is_file() or (not args.resume and not rows)
        with open(args.out, "w" if fresh else "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            if fresh:
                writer.writeheader()
            writer.writerows({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()} for r in new)
        rows += new
        print(f"N={n}: done in {time.monotonic() - started:.0f} s", flush=True)
        print_rows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
