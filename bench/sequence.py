"""Benchmark: one MARK sequence on real Fashion-MNIST, timed per phase (issue 5).

The default configuration is the one issue 5 profiles the seed's code with: 5 tasks
of 2 classes, 2000 training images per task, 3 epochs per epoch-based phase,
2 meta epochs x 5 mini-tasks x 10 inner steps. Any ``--set key=value`` overrides it.

Prints wall seconds per phase (summed over tasks) and in total, training and
evaluation images per second, peak resident memory, ACC and BWT (test). With
``--compare-meta`` it also times phase 4 of the last task once with the loop and
once vectorised (``meta_vmap``) from the same starting state, and prints the ratio.

    .venv/bin/python bench/sequence.py                           # fp32, the default
    .venv/bin/python bench/sequence.py --set precision=bf16      # bfloat16 autocast
    .venv/bin/python bench/sequence.py --reference               # the plain reference path (tests/oracles.py)
    .venv/bin/python bench/sequence.py --compare-meta            # plus loop-vs-vmap phase 4
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # marktune, and tests.oracles

from marktune.mark import metrics# noqa: E402
from marktune.mark.config import MarkConfig  # noqa: E402
from marktune.data import load_benchmark_for  # noqa: E402
from marktune.mark.learner import MarkLearner  # noqa: E402
from marktune.mark.training import PHASES, TaskData, phase_totals  # noqa: E402

ISSUE_5 = dict(benchmark="fmnist", num_tasks=5, max_train_per_task=2000, epochs=3,
               meta_epochs=2, mini_tasks=5, inner_steps=10)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def training_images(cfg: MarkConfig, learner: MarkLearner) -> int:
    """Images that went forward and backward through a trained part, over the whole sequence."""
    total = 0
    for t in range(learner.tasks_done):
        n = len(learner.benchmark.tasks[t].train.y)
        total += cfg.phase_epochs("feature") * n + cfg.phase_epochs("mask") * n
        if t == 0:
            total += cfg.phase_epochs("kb") * n
        total += cfg.phase_epochs("consolidation") * n
        if cfg.meta_update == "finetune":
            total += cfg.phase_epochs("finetune") * n
        elif cfg.meta_update != "none":
            batch = min(cfg.batch_size, n)
            total += cfg.meta_epochs * cfg.mini_tasks * cfg.inner_steps * batch
    return total


def evaluation_images(learner: MarkLearner) -> int:
    tasks = learner.benchmark.tasks
    return sum(len(tasks[u].val.y) + len(tasks[u].test.y)
               for t in range(learner.tasks_done) for u in range(t + 1))


def compare_meta(learner: MarkLearner) -> dict[str, float]:
    """Phase 4 of the last task, loop and vmap, each from the same KB state."""
    t = learner.tasks_done - 1
    bench_task = learner.benchmark.tasks[t]
    kb_state = {k: v.clone() for k, v in learner.kb.state_dict().items()}
    out = {}
    for name, vmap in (("loop", False), ("vmap", True)):
        learner.kb.load_state_dict(kb_state)
        learner.meta_vmap = vmap
        task = TaskData(t=t, x=bench_task.train.x.to(learner.device), y=bench_task.train.y.to(learner.device),
                        num_classes=bench_task.num_classes, extractor=learner.extractors[t],
                        mask_gen=learner.mask_generators[t], head=learner.heads[t],
                        generator=torch.Generator().manual_seed(123))
        task.features, task.features_cached = learner.compute.feature_source(task)
        start = time.perf_counter()
        learner.meta_rule.update_kb(learner.phase4_context(task))
        out[name] = time.perf_counter() - start
    learner.kb.load_state_dict(kb_state)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compare-meta", action="store_true")
    parser.add_argument("--reference", action="store_true",
                        help="run the plain reference path (the test oracle of tests/oracles.py) instead")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("-v", "--verbose", type=int, default=1)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = MarkConfig.from_sources(base=ISSUE_5, overrides=args.overrides)
    changed = {k: v for k, v in cfg.to_dict().items() if v != MarkConfig(benchmark=cfg.benchmark).to_dict()[k]}
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, device {args.device}")
    print(f"config (non-default): {changed}" + (", reference path" if args.reference else ""))
    t0 = time.perf_counter()
    benchmark = load_benchmark_for(cfg)
    load_s = time.perf_counter() - t0
    extra = {}
    if args.reference:
        from tests.oracles import ReferencePath
        extra["compute"] = ReferencePath
    learner = MarkLearner(cfg, benchmark, device=args.device, verbose=args.verbose, **extra)
    load_before = os.getloadavg()[0]
    start, cpu_start = time.perf_counter(), time.process_time()
    learner.run()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    load_after = os.getloadavg()[0]

    per_phase = phase_totals(learner.seconds)
    train_s = sum(v for k, v in per_phase.items() if k != "eval")
    eval_s = per_phase["eval"]
    train_ips = training_images(cfg, learner) / max(train_s, 1e-9)
    eval_ips = evaluation_images(learner) / max(eval_s, 1e-9)
    val, test = learner.matrices()
    figures = {
        "wall_seconds": wall, "cpu_seconds": cpu, "data_load_seconds": load_s,
        "load_average_before_after": [load_before, load_after],
        "phase_seconds": per_phase,
        "eval_seconds_per_task": [s.get("eval", 0.0) for s in learner.seconds],
        "meta_seconds_per_task": [s.get("meta", 0.0) for s in learner.seconds],
        "train_images_per_s": train_ips, "eval_images_per_s": eval_ips,
        "eval_over_train_throughput": eval_ips / train_ips,
        "peak_rss_mb": peak_rss_mb(),
        "acc": metrics.average_accuracy(test), "bwt": metrics.backward_transfer(test),
        "val_acc": metrics.average_accuracy(val),
    }
    print("\n== results ==")
    print("phase seconds (all tasks): " + ", ".join(f"{p} {per_phase[p]:.1f}" for p in PHASES))
    print("eval seconds per task:     " + ", ".join(f"{s:.2f}" for s in figures["eval_seconds_per_task"]))
    print("meta seconds per task:     " + ", ".join(f"{s:.2f}" for s in figures["meta_seconds_per_task"]))
    print(f"wall seconds: {wall:.1f} (data load {load_s:.1f} s, not included); process CPU seconds {cpu:.1f}")
    print(f"1-min load average before/after: {load_before:.2f}/{load_after:.2f} "
          f"(above ~{torch.get_num_threads()}: other processes shared the cores, wall times are inflated)")
    print(f"training images/s: {train_ips:.0f}   evaluation images/s: {eval_ips:.0f}   "
          f"ratio {eval_ips / train_ips:.1f}x")
    print(f"peak RSS: {figures['peak_rss_mb']:.0f} MB")
    print("test matrix:")
    for row in test:
        print("  " + " ".join(f"{a:.3f}" for a in row))
    print(f"ACC {figures['acc']:.4f}   BWT {figures['bwt']:+.4f}   (validation ACC {figures['val_acc']:.4f})")
    if args.compare_meta:
        times = compare_meta(learner)
        figures["compare_meta"] = times
        print(f"phase 4 (last task): loop {times['loop']:.2f} s, vmap {times['vmap']:.2f} s, "
              f"vmap/loop {times['vmap'] / times['loop']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
