"""One MARK continual sequence from a config: for reproducing and debugging.

    python -m marktune.run --benchmark fmnist --set epochs=3 --set meta_epochs=2

Prints progress (task, phase, epoch, running accuracy), then both accuracy matrices,
ACC and BWT; writes ``results.json`` (updated after every task), a checkpoint after
every task (``--resume OUT_DIR`` continues from it) and TensorBoard scalars.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from marktune.mark import metrics
from marktune.mark.checkpoint import CheckpointError
from marktune.mark.config import ConfigError, MarkConfig
from marktune.data.benchmarks import DatasetMissingError, load_benchmark_for
from marktune.mark.hardware import check_precision
from marktune.mark.learner import MarkLearner, NonFiniteLossError
from marktune.results.records import log_task_to_tensorboard, results_dict, write_json_atomic
from marktune.tune.folders.output import RunFolderTaken, check_run_folder, move_aside
from marktune.tune.folders.ownership import FolderOwned, check_kind, check_not_inside, claim
from marktune.tune.plan import PlanError, check_config_seeds

CHECKPOINT = "checkpoint.pt"


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when there is one; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible here; use --device cpu (or auto)")
    return device


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m marktune.run",
        description="Run one MARK continual sequence (all tasks, in order) and report ACC and BWT.",
        epilog="Quick check on real Fashion-MNIST (about a minute on 2 CPU cores):\n"
               "  python -m marktune.run --benchmark fmnist --config search_spaces/fmnist.yaml\n"
               "Settings are the keys of marktune.mark.config.MarkConfig (paper defaults); "
               "a search's best_config.yaml is a valid --config.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--benchmark", help="cifar100, miniimagenet, fmnist, digits or synthetic "
                                       "(default: the config's, else cifar100)")
    p.add_argument("--config", type=Path, help="YAML file of settings (a search space's fixed settings "
                                               "or a best_config.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set epochs=3 (repeatable)")
    p.add_argument("--seed", type=int, help="seed of the class order, initialisation and batches")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--data-dir", type=Path, help="where data sets live (default: $MARKTUNE_DATA, "
                                                 "else ~/.cache/marktune)")
    p.add_argument("--download", action="store_true", help="let torchvision fetch CIFAR-100 / "
                                                           "Fashion-MNIST (needs internet)")
    p.add_argument("--out", type=Path, help="output directory (default: runs/<benchmark>-<time>)")
    p.add_argument("--resume", type=Path, metavar="OUT_DIR",
                   help="continue an interrupted run from its last finished task")
    p.add_argument("--overwrite", action="store_true",
                   help="--out holds another run: move it aside (renamed to OUT.replaced-<time>) and start anew; "
                        "without it such an --out is refused")
    p.add_argument("-v", "--verbose", action="count", default=1, help="-v: one line per epoch")
    p.add_argument("-q", "--quiet", action="store_true", help="only the final summary")
    return p


def config_from_args(args: argparse.Namespace) -> MarkConfig:
    base = {}
    overrides = list(args.overrides)
    if args.benchmark:
        overrides.insert(0, f"benchmark={args.benchmark}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.resume is not None:
        saved = args.resume / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"--resume {args.resume}: no config.yaml there; is it a marktune.run output?")
        return MarkConfig.from_sources(path=saved, overrides=overrides)
    return MarkConfig.from_sources(path=args.config, overrides=overrides, base=base)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        check_config_seeds(config)  # numpy takes 0 .. 2**32 - 1
        device = resolve_device(args.device)
        check_precision(config.precision, device)  # before any data is loaded
    except (ConfigError, PlanError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = args.resume or args.out or Path("runs") / f"{config.benchmark}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:  # a search's or an evaluation's folder is never written into or moved, --overwrite or not
        check_kind(out, "run", flag="--resume" if args.resume else "--out")
        check_not_inside(out, flag="--resume" if args.resume else "--out", itself=False)
        if args.resume is None and not args.overwrite:
            check_run_folder(out)  # another run's record is never written over
    except (RunFolderTaken, FolderOwned) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    verbose = 0 if args.quiet else args.verbose
    try:
        benchmark = load_benchmark_for(config, data_dir=args.data_dir, download=args.download)
    except DatasetMissingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.resume is None and args.overwrite and out.exists() and any(out.iterdir()):
        print(f"--overwrite: moved the run in {out} aside to {move_aside(out)}")
    claim(out, "run")
    config.save_yaml(out / "config.yaml")
    learner = MarkLearner(config, benchmark, device=device, verbose=verbose)
    if args.resume is not None and (out / CHECKPOINT).is_file():
        try:
            learner.load(out / CHECKPOINT)
        except CheckpointError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"resumed {out} after task {learner.tasks_done}/{learner.num_tasks}")
    if verbose:
        print(f"MARK on {benchmark.name}: {learner.num_tasks} tasks, device {device}, output {out}")

    return train_and_record(learner, out)


def train_and_record(learner: MarkLearner, out: Path) -> int:
    """Train the tasks left: after each a checkpoint, results.json and TensorBoard's scalars; at
    the end the matrices and ACC/BWT. 3: a loss became non-finite (results.json says where)."""
    from torch.utils.tensorboard import SummaryWriter  # imported late: it is slow to import

    start = time.perf_counter()
    with SummaryWriter(str(out / "tensorboard")) as writer:
        while learner.tasks_done < learner.num_tasks:
            try:
                report = learner.train_next_task()
            except NonFiniteLossError as err:
                print(f"error: {err}", file=sys.stderr)
                write_json_atomic(out / "results.json",
                                  {**results_dict(learner, wall_seconds=time.perf_counter() - start),
                                   "error": str(err)})
                return 3
            learner.save(out / CHECKPOINT)
            write_json_atomic(out / "results.json",
                              results_dict(learner, wall_seconds=time.perf_counter() - start))
            log_task_to_tensorboard(writer, report)
    results = results_dict(learner, wall_seconds=time.perf_counter() - start)
    write_json_atomic(out / "results.json", results)
    val, test = learner.matrices()
    print(metrics.format_matrix(val, title="validation accuracy"))
    print(metrics.format_matrix(test, title="test accuracy"))
    print(f"ACC {results['acc']:.4f}  BWT {results['bwt']:+.4f}  forgetting "
          f"{results['test']['forgetting']:.4f}  (test; validation ACC {results['val_acc']:.4f})  "
          f"wall {results['wall_seconds']:.1f} s")
    print(f"results: {out / 'results.json'}   tensorboard --logdir {out / 'tensorboard'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
