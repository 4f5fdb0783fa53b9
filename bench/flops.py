"""Training FLOPs as counted (marktune.mark.flops) against torch's counter run over the whole sequence.

marktune counts the first training step of each phase with
``torch.utils.flop_counter.FlopCounterMode`` and scales it by samples. Here the same sequence
runs once more entirely under the counter; its evaluation (and the diagnostics after each task,
which compute masks on validation images) is counted apart and taken out, so the two figures
cover the same training. What the scaled count leaves out on purpose, the forward passes of
frozen modules the fast path computes once per task outside the steps, is the difference.

    PYTHONPATH=. .venv/bin/python bench/flops.py --space digits            # its default configuration
    PYTHONPATH=. .venv/bin/python bench/flops.py --space digits --set kb_width=8 --set kb_depth=2
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from marktune.mark.config import parse_overrides  # noqa: E402
from marktune.mark.hardware import cpu_model_name  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--space", default="digits", help="a space: its default configuration is measured")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from marktune.data import load_benchmark_for
    from marktune.mark.learner import MarkLearner
    from marktune.tune.spaces import load_space

    torch.set_num_threads(args.threads)
    cfg = load_space(args.space).default_trial_config(parse_overrides(args.overrides))
    benchmark = load_benchmark_for(cfg)
    started = time.perf_counter()
    plain = MarkLearner(cfg, benchmark, verbose=0)
    plain.run()
    plain_seconds = time.perf_counter() - started

    whole = MarkLearner(cfg, benchmark, verbose=0)
    not_training = []
    for name in ("evaluate",):
        original = getattr(whole, name)

        def counted_apart(*a, _original=original, **k):
            with FlopCounterMode(display=False) as apart:
                out = _original(*a, **k)
            not_training.append(apart.get_total_flops())
            return out
        setattr(whole, name, counted_apart)
    import marktune.mark.evaluation as evaluation

    diagnostics = evaluation.diagnostics

    def diagnostics_apart(*a, **k):
        with FlopCounterMode(display=False) as apart:
            out = diagnostics(*a, **k)
        not_training.append(apart.get_total_flops())
        return out
    evaluation.diagnostics = diagnostics_apart
    started = time.perf_counter()
    try:
        with FlopCounterMode(display=False) as counter:
            whole.run()
    finally:
        evaluation.diagnostics = diagnostics
    counted_seconds = time.perf_counter() - started
    training = counter.get_total_flops() - sum(not_training)
    print(f"{args.space} default configuration{' with ' + ' '.join(args.overrides) if args.overrides else ''}, "
          f"{cfg.tasks} tasks, {args.threads} thread(s), {cpu_model_name()}")
    print(f"  marktune's count (first step per phase, scaled): {plain.flops.total / 1e9:.3f} GFLOP "
          f"(the run: {plain_seconds:.1f} s)")
    print(f"  torch's counter over the whole training:                  {training / 1e9:.3f} GFLOP "
          f"(evaluation and diagnostics, {sum(not_training) / 1e9:.3f} GFLOP, taken out; the run under the "
          f"counter: {counted_seconds:.1f} s)")
    print(f"  ratio: {plain.flops.total / training:.4f} (below 1: the frozen modules' passes computed once "
          "per task outside the steps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
