"""Benchmark: MARK trials on one GPU, end to end, in one command (issue 9).

Runs on synthetic data of CIFAR-100's shape (20 tasks of 5 classes, 32 x 32 RGB, about 500
training images a class), so it needs no download and no Ray or Optuna: plain processes and
the learner. It prints, for the ``cifar100`` space's fixed settings (the authors' preset):

1. one trial timed per phase, with ``meta_vmap`` off and on;
2. phase 4 alone in fp32, TF32 (CUDA only) and bf16 (where the device has it);
3. 1, 2 and 4 trials packed on the device as separate processes, each capped at its share of
   the GPU memory: trials per hour and each trial's peak ``torch.cuda.max_memory_allocated``;
4. the device's name and memory, and the torch and CUDA versions;
5. phase 4's inner loop on one mini-task: the released code's (``ReduceLROnPlateau`` read
   back with ``loss.item()`` every step) against marktune's (the same rule on the device).

A full 20-task trial at the preset (50 epochs per phase, 10 x 10 x 40 meta steps) does not fit
in the 8 minutes this command is meant to take, so it runs ``--tasks`` tasks and extrapolates
to 20 from the measured tasks (task 0 has the KB warm-up, so 20-task figures are task 0 plus
19 times the mean of the later tasks); the output says so wherever a figure is extrapolated.

    PYTHONPATH=. python3 bench/gpu.py                        # on a machine with a GPU
    PYTHONPATH=. python3 bench/gpu.py --tasks 3 --epochs 10  # cut further, or less
    PYTHONPATH=. python3 bench/gpu.py --tasks 2 --epochs 1 --device cpu   # smoke test (CI)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from marktune.mark.config import MarkConfig, load_yaml_mapping  # noqa: E402
from marktune.data import load_benchmark_for  # noqa: E402
from marktune.mark.devices import cap_gpu_memory  # noqa: E402
from marktune.mark.hardware import cpu_has_native_bf16, cpu_model_name  # noqa: E402
from marktune.mark.learner import MarkLearner  # noqa: E402
from marktune.mark.model import ones_masks  # noqa: E402
from marktune.mark.phase4 import adapt_mini_task  # noqa: E402
from marktune.mark.training import PHASES, phase_totals  # noqa: E402
from tests.oracles import released_adapt_mini_task  # noqa: E402

FULL_TASKS = 20


def preset_config(args: argparse.Namespace, **overrides) -> MarkConfig:
    """The cifar100 space's fixed settings on synthetic data of CIFAR-100's shape, cut by the flags."""
    fixed = load_yaml_mapping(ROOT / "search_spaces" / "cifar100.yaml")
    fixed.pop("benchmark", None)
    values = {**fixed, "benchmark": "synthetic", "num_tasks": args.tasks, "synthetic_classes_per_task": 5,
              "synthetic_images_per_class": args.images_per_class, "synthetic_image_size": 32}
    if args.epochs is not None:  # every epoch-based phase, and as many outer meta steps (at most the preset's)
        values["epochs"] = args.epochs
        values["meta_epochs"] = min(args.epochs, int(fixed.get("meta_epochs", 10)))
    if args.meta is not None:
        values["meta_epochs"], values["mini_tasks"], values["inner_steps"] = args.meta
    values.update(overrides)
    return MarkConfig.from_dict(values)


def run_trial(cfg: MarkConfig, device: str) -> dict:
    """One trial (all ``cfg.tasks`` tasks): seconds per task and phase, peak GPU memory, ACC."""
    benchmark = load_benchmark_for(cfg)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    learner = MarkLearner(cfg, benchmark, device=device, verbose=0)
    start = time.perf_counter()
    learner.run()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    _, test = learner.matrices()
    return {"wall": wall, "seconds": learner.seconds, "acc": sum(test[-1]) / len(test[-1]),
            "peak_mb": torch.cuda.max_memory_allocated() / 2 ** 20 if device.startswith("cuda") else None}


def task_seconds(seconds: list[dict[str, float]]) -> list[float]:
    return [sum(s.values()) for s in seconds]


def extrapolate(per_task: list[float], tasks: int = FULL_TASKS) -> float:
    """Seconds of a ``tasks``-task trial: task 0 (with the KB warm-up) plus the rest at the later tasks' mean."""
    if len(per_task) >= tasks:
        return sum(per_task[:tasks])
    later = per_task[1:] or per_task
    return per_task[0] + (tasks - 1) * sum(later) / len(later)


def describe_device(device: str) -> str:
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        return (f"{props.name}, {props.total_memory / 2 ** 30:.1f} GiB; torch {torch.__version__}, "
                f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
    return f"CPU {cpu_model_name()}, {torch.get_num_threads()} threads; torch {torch.__version__}"


def phase_line(result: dict) -> str:
    totals = phase_totals(result["seconds"])
    return " / ".join(f"{totals[p]:.1f}" for p in PHASES)


def section_trial(args: argparse.Namespace) -> dict:
    print(f"\n1. one trial, {args.tasks} of {FULL_TASKS} tasks, timed per phase "
          f"({' / '.join(PHASES)} seconds, summed over tasks)")
    out = {}
    for vmap in (False, True):
        result = run_trial(preset_config(args, meta_vmap=vmap), args.device)
        per_task = task_seconds(result["seconds"])
        full = extrapolate(per_task)
        out[f"meta_vmap={vmap}"] = {**result, "per_task": per_task, "full_trial_s": full}
        peak = f", peak GPU memory {result['peak_mb']:.0f} MB" if result["peak_mb"] is not None else ""
        print(f"   meta_vmap {'on ' if vmap else 'off'}: {result['wall']:.1f} s ({phase_line(result)}); "
              f"per task {', '.join(f'{s:.1f}' for s in per_task)}; ACC {result['acc']:.3f}{peak}")
        print(f"      20-task trial: {full / 60:.1f} min"
              + ("" if args.tasks >= FULL_TASKS else f" (extrapolated from {args.tasks} measured tasks)"))
    return out


def section_precision(args: argparse.Namespace) -> dict:
    print("\n2. phase 4 alone (task 0, other phases cut to 1 epoch), by arithmetic")
    modes = [("fp32", {}, False)]
    if args.device.startswith("cuda"):
        modes.append(("TF32", {}, True))
    if args.device.startswith("cuda") or cpu_has_native_bf16():
        modes.append(("bf16", {"precision": "bf16"}, False))
    else:
        print("   bf16: skipped, this CPU has no native bf16 (marktune refuses it here)")
    out = {}
    for name, extra, tf32 in modes:
        saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        try:
            cfg = preset_config(args, num_tasks=1, fe_epochs=1, kb_epochs=1, mask_epochs=1,
                                consolidation_epochs=1, **extra)
            result = run_trial(cfg, args.device)
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
        meta = result["seconds"][0]["meta"]
        steps = cfg.meta_epochs * cfg.mini_tasks * cfg.inner_steps
        out[name] = {"meta_s": meta, "inner_steps": steps}
        print(f"   {name:<5} {meta:7.2f} s for {steps} inner steps ({1000 * meta / steps:.2f} ms a step, "
              f"meta_vmap {'on' if cfg.meta_vmap or (cfg.meta_vmap is None and args.device != 'cpu') else 'off'})")
    return out


def section_packing(args: argparse.Namespace) -> dict:
    print(f"\n3. trials packed on one device, separate processes ({args.tasks}-task trials"
          + (", each capped at 1/N of the GPU memory)" if args.device.startswith("cuda") else ", no memory cap on a CPU)"))
    out = {}
    for n in args.pack:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--device", args.device,
               "--tasks", str(args.tasks), "--images-per-class", str(args.images_per_class),
               "--fraction", str(1.0 / n)]
        if args.meta is not None:
            cmd += ["--meta", ",".join(map(str, args.meta))]
        if args.epochs is not None:
            cmd += ["--epochs", str(args.epochs)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        if args.device == "cpu":  # share the cores instead of oversubscribing them
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // n))
        start = time.perf_counter()
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) for _ in range(n)]
        results = []
        for p in procs:
            stdout, _ = p.communicate()
            if p.returncode != 0:
                raise SystemExit(f"a packed trial failed (exit {p.returncode})")
            results.append(json.loads(stdout.strip().splitlines()[-1]))
        wall = time.perf_counter() - start
        full = max(extrapolate(r["per_task"]) for r in results)
        per_hour = n * 3600 / full
        peaks = ", ".join(f"{r['peak_mb']:.0f}" for r in results) if results[0]["peak_mb"] is not None else "n/a"
        out[n] = {"wall": wall, "trials_per_hour_20_tasks": per_hour, "peak_mb": [r["peak_mb"] for r in results]}
        print(f"   {n} at once: {wall:.1f} s wall; {per_hour:.2f} 20-task trials an hour"
              + ("" if args.tasks >= FULL_TASKS else " (extrapolated)") + f"; peak MB per trial: {peaks}")
    return out


def section_inner_loop(args: argparse.Namespace, repeats: int = 5) -> dict:
    """One mini-task's adaptation both ways, alternated, from the same KB; the median of ``repeats``."""
    cfg = preset_config(args, num_tasks=1)
    steps = max(cfg.inner_steps, 20)
    cfg = preset_config(args, num_tasks=1, inner_steps=steps)
    learner = MarkLearner(cfg, load_benchmark_for(cfg), device=args.device, verbose=0)
    task, device = learner.benchmark.tasks[0], learner.device
    idx = torch.arange(min(cfg.batch_size, len(task.train.y)))
    print(f"\n5. phase 4's inner loop, one mini-task of {len(idx)} images, {steps} steps, "
          f"median of {repeats}: the host-read plateau rule against the on-device one")
    xb, yb = learner.images(task.train.x[idx].to(device)), task.train.y[idx].to(device)
    masks = ones_masks(learner.kb, len(idx), device)
    inner = learner.inner_loop()

    def released() -> None:  # adapt_mini_task's work, with the released inner loop
        released_adapt_mini_task(inner, t=0, xb=xb, yb=yb, masks=masks, num_classes=task.num_classes)

    def on_device() -> None:
        adapt_mini_task(inner, t=0, xb=xb, yb=yb, masks=masks, num_classes=task.num_classes)

    times: dict[str, list[float]] = {"released": [], "on_device": []}
    for _ in range(repeats + 1):  # the first round warms up
        for name, run in (("released", released), ("on_device", on_device)):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            run()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    out = {name: 1000 * sorted(ts[1:])[len(ts[1:]) // 2] / steps for name, ts in times.items()}
    print(f"   released {out['released']:.3f} ms a step, on the device {out['on_device']:.3f} ms a step "
          f"(on-device / released {out['on_device'] / out['released']:.2f})")
    return out


def worker(args: argparse.Namespace) -> int:
    """One packed trial: cap the allocator first, run, print a JSON line."""
    device = torch.device(args.device)
    if device.type == "cuda":
        cap_gpu_memory(device, args.fraction)
    result = run_trial(preset_config(args), args.device)
    print(json.dumps({"per_task": task_seconds(result["seconds"]), "peak_mb": result["peak_mb"]}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tasks", type=int, default=2, help="tasks measured per trial (20 is full length)")
    parser.add_argument("--epochs", type=int, help="cut every epoch-based phase to this, and phase 4's outer "
                                                   "steps to at most this (default: the preset's 50 and 10)")
    parser.add_argument("--images-per-class", type=int, help="synthetic images per class "
                                                             "(default: 500 on CUDA, as CIFAR-100; 20 on a CPU)")
    parser.add_argument("--meta", type=lambda s: [int(x) for x in s.split(",")], metavar="E,K,S",
                        help="phase 4's outer steps, mini-tasks and inner steps (default: the preset's "
                             "10,10,40 on CUDA, cut by --epochs; a smoke-test 1,2,5 on a CPU)")
    parser.add_argument("--pack", type=lambda s: [int(x) for x in s.split(",")],
                        help="trials packed at once, e.g. 1,2,4 (default: 1,2,4 on CUDA, 1,2 on a CPU)")
    parser.add_argument("--skip", default="", help="sections to skip: any of trial,precision,packing,inner")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fraction", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    on_cuda = args.device.startswith("cuda")
    if on_cuda and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch sees no CUDA here (torch {torch.__version__}, "
                         f"CUDA {torch.version.cuda}); use --device cpu")
    if args.images_per_class is None:
        args.images_per_class = 500 if on_cuda else 20
    if args.meta is None and not on_cuda:  # a CPU only checks that every section runs
        args.meta = [1, 2, 5]
    if args.meta is not None and (len(args.meta) != 3 or min(args.meta) < 1):
        raise SystemExit(f"--meta: expected three whole numbers >= 1, E,K,S (got {args.meta})")
    if args.pack is None:
        args.pack = [1, 2, 4] if on_cuda else [1, 2]
    if args.worker:
        return worker(args)

    started = time.perf_counter()
    print(f"4. device: {describe_device(args.device)}")
    cfg = preset_config(args)
    print(f"   settings: cifar100 preset on synthetic data of its shape, {cfg.tasks} of {FULL_TASKS} tasks, "
          f"{cfg.synthetic_images_per_class} images a class, epochs {cfg.epochs}, meta "
          f"{cfg.meta_epochs} x {cfg.mini_tasks} x {cfg.inner_steps}, batch {cfg.batch_size}")
    figures = {"device": describe_device(args.device), "tasks": args.tasks, "epochs": cfg.epochs}
    skip = set(filter(None, args.skip.split(",")))
    if "trial" not in skip:
        figures["trial"] = section_trial(args)
    if "precision" not in skip:
        figures["precision"] = section_precision(args)
    if "packing" not in skip:
        figures["packing"] = section_packing(args)
    if "inner" not in skip:
        figures["inner_loop_ms_per_step"] = section_inner_loop(args)
    print(f"\nbench/gpu.py took {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
