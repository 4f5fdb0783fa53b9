"""Do a space's settings matter? Random configurations, each run to the end at several seeds.

Draws ``--configs`` random configurations from a search space (as a random search would), runs
each whole MARK sequence at every ``--seeds`` (the learner's seed: initialisation, batches,
dropout; the class order and validation split stay those of the space's ``data_seed``), and
removes the seed's own effect with a two-way (configuration x seed) decomposition of the final
mean test ACC:

    Y[c, s] = m + a_c + b_s + e_cs

It prints the standard deviation of the configuration effects ``a_c`` (raw, and with the
residual's share removed: ``var(a_hat) - var(e)/S``), the residual standard deviation, their
ratio, and Kendall's tau between the seeds' rankings of the configurations. It also runs the
space's default configuration (its fixed settings and MarkConfig's defaults) at the same seeds.

Every per-task curve goes to ``--out`` as a curves table (``marktune.results.curves``, with a
``seed`` column) as soon as its run ends, so an interrupted measurement keeps what it did and
``--resume`` continues it. ``--split-default FILE`` then moves the default configuration's rows
(trial id ``default``, its searched settings blank: it takes MarkConfig's) out of the table into
FILE, so that the table replays as a random search (``bench/replay.py``) and the default stays
on record.

    PYTHONPATH=. .venv/bin/python bench/separation.py --space fmnist-lowdata --configs 24 \
        --seeds 0 1 --workers 2 --out bench/curves/fmnist-lowdata.csv \
        --split-default bench/curves/defaults/fmnist-lowdata.csv
"""
from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from marktune.cli.flags import at_least  # noqa: E402
from marktune.replay.table import ReplayTableError, check_table  # noqa: E402
from marktune.results.curves import CurveRow, CurvesError, read_curves, write_curves  # noqa: E402
from marktune.tune.spaces import Param, SearchSpace, load_space  # noqa: E402

DEFAULT_ID = "default"


def draw(param: Param, rng: np.random.Generator) -> Any:
    """One value of ``param`` drawn as Tune's domain of the same kind draws it."""
    if param.kind == "loguniform":
        return float(math.exp(rng.uniform(math.log(param.low), math.log(param.high))))
    if param.kind == "uniform":
        return float(rng.uniform(param.low, param.high))
    if param.kind == "int":
        return int(rng.integers(int(param.low), int(param.high) + 1))
    if param.kind == "logint":
        return int(round(math.exp(rng.uniform(math.log(param.low), math.log(param.high + 1) - 1e-9) - 0.5)))
    return param.values[int(rng.integers(len(param.values)))]


def configurations(space: SearchSpace, *, count: int, seed: int) -> dict[str, dict[str, Any]]:
    rng = np.random.default_rng(seed)
    out = {DEFAULT_ID: {}}
    for i in range(count):
        out[f"c{i:02d}"] = {name: draw(p, rng) for name, p in space.params.items()}
    return out


def run_one(job: tuple[str, dict[str, Any], dict[str, Any], int]) -> list[dict[str, Any]]:
    """One whole sequence in a worker process (one thread): its per-task rows."""
    import torch

    from marktune.data.benchmarks import load_benchmark_for
    from marktune.mark.config import MarkConfig
    from marktune.mark.learner import MarkLearner

    torch.set_num_threads(1)
    config_id, base, params, seed = job
    config = MarkConfig.from_dict({**base, **params, "seed": seed})
    learner = MarkLearner(config, load_benchmark_for(config), verbose=0)
    rows = []
    try:
        while learner.tasks_done < learner.num_tasks:
            start = time.perf_counter()
            report = learner.train_next_task()
            rows.append({"task": learner.tasks_done, "val_acc": report.mean_val_acc,
                         "test_acc": report.mean_test_acc, "seconds": time.perf_counter() - start})
        status = "COMPLETE"
    except Exception as err:  # a diverged configuration is a result, not a crash of the bench
        status = f"ERROR: {type(err).__name__}"
    return [{"trial_id": config_id, "status": status, "params": params, "seed": seed, **r} for r in rows] or \
        [{"trial_id": config_id, "status": status, "params": params, "seed": seed, "task": 0,
          "val_acc": math.nan, "test_acc": math.nan, "seconds": math.nan}]


class TooFewConfigurations(ValueError):
    """A table with fewer than two configurations complete at every seed: nothing to decompose."""


def decompose(final: np.ndarray) -> dict[str, float]:
    """Two-way (configuration x seed) decomposition without replication of ``final[c, s]``."""
    c, s = final.shape
    grand = final.mean()
    config_effect = final.mean(axis=1) - grand
    seed_effect = final.mean(axis=0) - grand
    residual = final - grand - config_effect[:, None] - seed_effect[None, :]
    residual_sd = math.sqrt((residual ** 2).sum() / ((c - 1) * (s - 1)))
    raw_sd = float(config_effect.std(ddof=1))
    corrected = math.sqrt(max(raw_sd ** 2 - residual_sd ** 2 / s, 0.0))
    return {"configs": c, "seeds": s, "grand_mean": float(grand), "config_sd_raw": raw_sd,
            "config_sd": corrected, "residual_sd": residual_sd, "ratio": corrected / residual_sd,
            "seed_effects": seed_effect.tolist()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--space", default="fmnist-lowdata")
    parser.add_argument("--configs", type=at_least(2), default=24, help="random configurations (at least 2: the "
                        "decomposition compares them)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--sample-seed", type=int, default=0, help="seed of the configurations' draw")
    parser.add_argument("--workers", type=at_least(1), default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, required=True, help="the curves table (CSV) to write")
    parser.add_argument("--report-only", action="store_true",
                        help="only print the decomposition of --out (and --split-default's file, if it exists)")
    parser.add_argument("--resume", action="store_true", help="keep the runs --out already holds")
    parser.add_argument("--split-default", type=Path, metavar="FILE",
                        help="at the end, move the default configuration's rows from --out to FILE")
    args = parser.parse_args(argv)

    from marktune.mark.config import parse_overrides

    overrides = parse_overrides(args.overrides)
    space = load_space(args.space, overrides=overrides)
    base = space.base_config(overrides)
    configs = configurations(space, count=args.configs, seed=args.sample_seed)
    searched = list(space.params)
    try:  # a table read back is checked before any work starts
        recorded = read_curves(args.out) if (args.report_only or args.resume) and args.out.exists() else None
        if recorded is not None:
            # (a recording cut short may hold fewer than 2 finished configurations: --resume goes on,
            # and the report refuses too few in its own words)
            check_table(recorded, space, source=str(args.out), blank_ids=[DEFAULT_ID], min_configs=0)
        extra = (read_curves(args.split_default) if args.report_only and args.split_default
                 and args.split_default.exists() else None)
    except (ReplayTableError, CurvesError) as err:
        print(f"separation bench: {err}", file=sys.stderr)
        return 2
    if args.report_only:
        if recorded is None:
            print(f"separation bench: {args.out} does not exist; nothing to report", file=sys.stderr)
            return 2
        try:
            report(recorded, seeds=args.seeds, default_table=extra)
        except TooFewConfigurations as err:
            print(f"separation bench: {args.out}: {err}", file=sys.stderr)
            return 2
        return 0
    rows: list[CurveRow] = recorded.rows if recorded is not None else []
    done = {(r.trial_id, r.seed) for r in rows}
    jobs = [(cid, base, params, seed) for cid, params in configs.items() for seed in args.seeds
            if (cid, seed) not in done]
    print(f"space {space.name}: {len(configs) - 1} random configurations + the default, seeds {args.seeds}; "
          f"{len(jobs)} runs to do on {args.workers} workers ({platform.processor() or platform.machine()})",
          flush=True)
    start = time.perf_counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with mp.get_context("spawn").Pool(args.workers) as pool:
        for i, result in enumerate(pool.imap_unordered(run_one, jobs), start=1):
            for r in result:
                rows.append(CurveRow(trial_id=r["trial_id"], status=r["status"], params=r["params"], task=r["task"],
                                     val_acc=r["val_acc"], test_acc=r["test_acc"], seconds=r["seconds"],
                                     seed=r["seed"]))
            write_curves(args.out, rows, searched=searched)
            last = result[-1]
            print(f"[{i}/{len(jobs)} {time.perf_counter() - start:6.0f}s] {last['trial_id']} seed {last['seed']}: "
                  f"{last['status']} after {last['task']} tasks, val {last['val_acc']:.4f} test {last['test_acc']:.4f}, "
                  f"{sum(x['seconds'] for x in result):.0f}s", flush=True)
    table = read_curves(args.out)
    try:
        report(table, seeds=args.seeds)
    except TooFewConfigurations as err:  # the table is written; only the decomposition has nothing to work on
        print(f"separation bench: {args.out}: {err}", file=sys.stderr)
    if args.split_default:
        split_default(table, out=args.out, default_out=args.split_default)
    return 0


def split_default(table, *, out: Path, default_out: Path) -> None:
    default_out.parent.mkdir(parents=True, exist_ok=True)
    write_curves(default_out, [r for r in table.rows if r.trial_id == DEFAULT_ID], searched=table.searched)
    write_curves(out, [r for r in table.rows if r.trial_id != DEFAULT_ID], searched=table.searched)
    print(f"the default configuration's curves: {default_out}; {out} holds the random configurations only")


def report(table, *, seeds: list[int], default_table=None) -> dict[str, float]:
    from scipy.stats import kendalltau

    curves = table.curves()
    if default_table is not None:
        curves.update(default_table.curves())
    tasks = max(r.task for r in table.rows)
    final: dict[str, dict[int, float]] = {}
    seconds: list[float] = []
    for (cid, seed), rows in curves.items():
        seconds.append(sum(r.seconds for r in rows if math.isfinite(r.seconds)))
        if rows[-1].task == tasks and math.isfinite(rows[-1].test_acc):
            final.setdefault(cid, {})[seed] = rows[-1].test_acc
    random_ids = sorted(cid for cid in final if cid != DEFAULT_ID and all(s in final[cid] for s in seeds))
    failed = sorted({cid for cid, _ in curves} - set(random_ids) - {DEFAULT_ID})
    if len(random_ids) < 2:  # the decomposition and Kendall's tau need two configurations at every seed
        raise TooFewConfigurations(f"the table has {len(random_ids)} random configurations with a final result "
                                   f"at every seed {seeds} (besides {DEFAULT_ID!r}); the report needs at least 2 "
                                   f"(record more with --configs, or give the seeds the table holds with --seeds)")
    y = np.array([[final[cid][s] for s in seeds] for cid in random_ids])
    if len(seeds) < 2:  # one seed: curves for the replay bench, no decomposition
        print(f"\n{len(random_ids)} random configurations complete at seed {seeds[0]}: final mean test ACC "
              f"{y.min():.4f} .. {y.max():.4f} (a decomposition needs two seeds)")
        if DEFAULT_ID in final:
            d = final[DEFAULT_ID].get(seeds[0], math.nan)
            print(f"  the space's default configuration: {d:.4f} ({int((y[:, 0] > d).sum())} of "
                  f"{len(random_ids)} random configurations above it)")
        print(f"  seconds per run: median {np.median(seconds):.0f}, max {max(seconds):.0f} (one thread)")
        return {}
    out = decompose(y)
    tau = kendalltau(y[:, 0], y[:, 1]) if len(seeds) >= 2 else None
    print(f"\n{len(random_ids)} random configurations complete at seeds {seeds}"
          + (f"; {len(failed)} did not finish at every seed: {', '.join(failed)}" if failed else ""))
    print(f"  final mean test ACC: mean {out['grand_mean']:.4f}, range {y.min():.4f} .. {y.max():.4f}")
    print(f"  seed effects: {', '.join(f'{b:+.4f}' for b in out['seed_effects'])}")
    print(f"  SD of configuration effects: {out['config_sd_raw']:.4f} raw, {out['config_sd']:.4f} with the "
          f"residual's share removed")
    print(f"  residual SD (configuration x seed): {out['residual_sd']:.4f}")
    print(f"  ratio: {out['ratio']:.2f}  (target >= 3)")
    if tau is not None:
        print(f"  Kendall's tau between seed {seeds[0]} and seed {seeds[1]} rankings: {tau.statistic:.3f} "
              f"(p = {tau.pvalue:.2g})")
    if DEFAULT_ID in final:
        d = [final[DEFAULT_ID].get(s, math.nan) for s in seeds]
        rank = [int((y[:, i] > d[i]).sum()) for i in range(len(seeds))]
        print(f"  the space's default configuration: {', '.join(f'{v:.4f}' for v in d)} "
              f"({', '.join(map(str, rank))} of {len(random_ids)} random configurations above it)")
    print(f"  seconds per run: median {np.median(seconds):.0f}, max {max(seconds):.0f} (one thread)")
    best = int(np.argmax(y.mean(axis=1)))
    print(f"  the best configuration by its mean: {random_ids[best]}, {y[best].mean():.4f}")
    print("  seed SD of one configuration's final test ACC (pooled: root of the mean variance, ddof 1), by its "
          "mean's band:")
    for low, high, configs, sd in seed_sd_by_band(y):
        print(f"    {low:.4f} .. {high:.4f}: {configs} configurations, seed SD {sd:.4f}")
    return out


def seed_sd_by_band(y: np.ndarray, *, quantiles=(0.0, 0.25, 0.5, 0.75, 0.9, 1.0)) -> list[tuple[float, float, int, float]]:
    """(low, high, configurations, pooled seed SD) per band of the configurations' mean over seeds
    (``y``: configurations x seeds), the bands cut at the quantiles; then all of them."""
    means = y.mean(axis=1)
    var = y.var(axis=1, ddof=1)
    cuts = np.quantile(means, quantiles)
    out = []
    for k, (low, high) in enumerate(zip(cuts[:-1], cuts[1:])):
        inside = (means >= low) & ((means < high) if k < len(cuts) - 2 else (means <= high))
        out.append((float(low), float(high), int(inside.sum()), float(np.sqrt(var[inside].mean()))))
    out.append((float(means.min()), float(means.max()), len(means), float(np.sqrt(var.mean()))))
    return out


if __name__ == "__main__":
    sys.exit(main())
