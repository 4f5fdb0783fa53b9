"""Benchmark: one MARK sequence by the authors' released code and by marktune, side by side (issue 29).

    PYTHONPATH=. .venv/bin/python bench/vs_released.py /path/to/meta-training-setup [--threads 2] [--set KEY=VALUE]

Both run in this process, one after the other, on the same data (marktune's Split Fashion-MNIST
tasks, so the same images, class order and validation split), with the same settings
(``bench/sequence.py``'s: 5 tasks, 2,000 images a task, 3 epochs, ``meta_epochs=2``,
``mini_tasks=5``, ``inner_steps=10``; the released code's rule, ``meta_update=seed``; masks
initialised to ones on both sides, ``mask_init=identity``: with PyTorch's init both sides' ReLU masks
die at this size and every task sits at chance, so ACC would tell nothing) and the same
torch threads. The released code is not fetched: give its checkout (``bench/released.py``).

The released code runs as released, without flushing denormals (``--released-flush-denormals``
flushes them for it too); marktune flushes them by default (``flush_denormals``). Prints the wall seconds of each and their ratio, per-phase seconds, ACC (test, after the last
task), and this CPU's fp32 GEMM peak (a large ``torch.mm`` at the same thread count); with ``--flops``
also the share of it marktune reached over its wall time, its convolutions' and linear layers'
FLOPs counted from their shapes as they ran (``torch.utils.flop_counter``) in a second run.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gemm_share import gemm_peak_gflops  # noqa: E402
from released import check_checkout, run_released  # noqa: E402

from marktune.data import load_benchmark_for  # noqa: E402
from marktune.mark import metrics  # noqa: E402
from marktune.mark.config import MarkConfig  # noqa: E402
from marktune.mark.hardware import cpu_model_name, flush_denormals  # noqa: E402
from marktune.mark.learner import MarkLearner  # noqa: E402
from marktune.mark.training import PHASES, phase_totals  # noqa: E402

SETTINGS = dict(benchmark="fmnist", num_tasks=5, max_train_per_task=2000, epochs=3,
                meta_epochs=2, mini_tasks=5, inner_steps=10, meta_update="seed", mask_init="identity")


def counted(fn):
    """Run ``fn`` under torch's FLOP counter; (its result, FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        out = fn()
    return out, counter.get_total_flops()


def run_marktune(cfg: MarkConfig, benchmark) -> dict:
    learner = MarkLearner(cfg, benchmark, verbose=0)
    start = time.perf_counter()
    learner.run()
    wall = time.perf_counter() - start
    _, test = learner.matrices()
    return {"wall": wall, "phases": phase_totals(learner.seconds),
            "acc": metrics.average_accuracy(test)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkout", type=Path, help="a checkout of JuliousHurtado/meta-training-setup")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for both (default 2)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--flops", action="store_true",
                        help="also count marktune's FLOPs in a second run (not timed; slower) for its GEMM-peak share")
    parser.add_argument("--released-flush-denormals", action="store_true",
                        help="run the released code with denormals flushed to zero too (marktune's default; "
                             "the released code does not)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    checkout = check_checkout(args.checkout)
    cfg = MarkConfig.from_sources(base=SETTINGS, overrides=args.overrides)
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    benchmark = load_benchmark_for(cfg)
    print(f"CPU: {cpu_model_name()} ({torch.backends.cpu.get_cpu_capability()}), {args.threads} torch threads, "
          f"torch {torch.__version__}", flush=True)

    if args.released_flush_denormals:
        flush_denormals(True)
    released = run_released(checkout, cfg, benchmark=benchmark)
    print(f"released code: {released.wall_seconds:.1f} s, ACC {released.acc:.4f}"
          + (f", NON-FINITE at {released.nonfinite}" if released.nonfinite else ""), flush=True)
    ours = run_marktune(cfg, benchmark)
    print(f"marktune:      {ours['wall']:.1f} s, ACC {ours['acc']:.4f}", flush=True)
    peak = gemm_peak_gflops(repeat=10)
    figures = {"cpu": cpu_model_name(), "threads": args.threads, "gemm_peak_gflops": peak,
               "released_flush_denormals": args.released_flush_denormals,
               "released": {"wall": released.wall_seconds, "phases": released.phase_seconds, "acc": released.acc,
                            "nonfinite": released.nonfinite},
               "marktune": ours, "speedup": released.wall_seconds / ours["wall"]}
    if args.flops:
        _, figures["marktune"]["flops"] = counted(lambda: run_marktune(cfg, benchmark))

    print("\n== side by side ==")
    print(f"{'':14s}" + "".join(f"{p:>14s}" for p in PHASES) + f"{'wall':>10s}{'ACC':>8s}")
    for name, side in (("released code", figures["released"]), ("marktune", figures["marktune"])):
        print(f"{name:14s}" + "".join(f"{side['phases'][p]:14.1f}" for p in PHASES)
              + f"{side['wall']:10.1f}{side['acc']:8.4f}")
    print(f"speed-up: {figures['speedup']:.2f}x  (marktune ACC {'>=' if ours['acc'] >= released.acc else '<'} "
          f"released ACC)")
    print(f"fp32 GEMM peak at {args.threads} threads: {peak:.0f} GFLOP/s")
    if args.flops:
        side = figures["marktune"]
        side["gemm_share"] = share = side["flops"] / side["wall"] / 1e9 / peak
        print(f"marktune: {side['flops'] / 1e12:.2f} TFLOP (convolutions and linear layers, forward and backward), "
              f"{share:.0%} of the peak over its wall time (bench/gemm_share.py: the ceiling op by op)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
