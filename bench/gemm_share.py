"""Benchmark: how close MARK's convolutions come to this CPU's fp32 GEMM peak, op by op (issue 29).

    PYTHONPATH=. .venv/bin/python bench/gemm_share.py [--threads 2] [--batch 128] [--repeat 20]

A MARK sequence's arithmetic is the KB's three convolutions and its linear layers, forward and
backward, at batch 128. This times each of them alone, as the learner runs them (channels-last,
oneDNN), in each direction it needs: forward, gradient of the input, gradient of the weights
(``aten.convolution_backward`` with one output at a time). For each it prints the FLOPs
(2 x multiply-adds, from the shapes), milliseconds, GFLOP/s and the share of the peak, where the
peak is a large ``torch.mm`` (2048^3) at the same thread count, best of ``--repeat``. The last
line is the ceiling: the share a KB training step would reach if every op ran as fast as alone
and nothing else (pooling, ReLU, masks, the optimiser, Python) took any time.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from marktune.mark.hardware import cpu_model_name  # noqa: E402
from marktune.mark.model import KnowledgeBase  # noqa: E402


def best_ms(fn, repeat: int) -> float:
    for _ in range(3):
        fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def gemm_peak_gflops(repeat: int, n: int = 2048) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n ** 3 / best_ms(lambda: torch.mm(a, b), repeat) * 1000 / 1e9


def conv_ops(kb: KnowledgeBase, batch: int) -> list[tuple[str, float, object]]:
    """(name, FLOPs, callable) of every convolution direction a KB training step runs."""
    cl = torch.channels_last
    ops = []
    size, c_in = kb.geometry[0].size_in, kb.convs[0].in_channels
    for b, (conv, g) in enumerate(zip(kb.convs, kb.geometry)):
        x = torch.randn(batch, c_in, size, size).contiguous(memory_format=cl)
        w, bias = conv.weight.detach(), conv.bias.detach()
        out = torch.nn.functional.conv2d(x, w, bias, padding=g.padding)
        grad = torch.randn_like(out).contiguous(memory_format=cl)
        macs = out.numel() * w[0].numel()
        args = (grad, x, w, [w.shape[0]], [1, 1], [g.padding] * 2, [1, 1], False, [0, 0], 1)
        bw = torch.ops.aten.convolution_backward
        ops.append((f"conv{b + 1} forward {tuple(x.shape[1:])}->{tuple(out.shape[1:])}", 2 * macs,
                    lambda x=x, w=w, bias=bias, g=g: torch.nn.functional.conv2d(x, w, bias, padding=g.padding)))
        if b > 0:  # the first block's input is the image: no gradient of it
            ops.append((f"conv{b + 1} grad input", 2 * macs, lambda args=args: bw(*args, [True, False, False])))
        ops.append((f"conv{b + 1} grad weight", 2 * macs, lambda args=args: bw(*args, [False, True, True])))
        size, c_in = g.size_out, conv.out_channels
    flat = kb.fc.in_features
    h, w = torch.randn(batch, flat), kb.fc.weight.detach()
    g_out = torch.randn(batch, kb.fc.out_features)
    macs = batch * flat * kb.fc.out_features
    ops.append(("fc forward", 2 * macs, lambda: torch.nn.functional.linear(h, w)))
    ops.append(("fc grad input", 2 * macs, lambda: g_out @ w))
    ops.append(("fc grad weight", 2 * macs, lambda: g_out.t() @ h))
    return ops


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    kb = KnowledgeBase(image_size=32).to(memory_format=torch.channels_last)
    peak = gemm_peak_gflops(args.repeat)
    print(f"CPU: {cpu_model_name()} ({torch.backends.cpu.get_cpu_capability()}), {args.threads} threads, "
          f"torch {torch.__version__}; fp32 GEMM peak (2048^3 mm) {peak:.0f} GFLOP/s")
    print(f"{'op (batch ' + str(args.batch) + ')':46s}{'MFLOP':>9s}{'ms':>9s}{'GFLOP/s':>9s}{'of peak':>9s}")
    total_flops = total_ms = 0.0
    with torch.no_grad():
        for name, flops, fn in conv_ops(kb, args.batch):
            ms = best_ms(fn, args.repeat)
            rate = flops / ms / 1e6
            total_flops, total_ms = total_flops + flops, total_ms + ms
            print(f"{name:46s}{flops / 1e6:9.0f}{ms:9.2f}{rate:9.0f}{rate / peak:9.0%}")
    rate = total_flops / total_ms / 1e6
    print(f"{'all of one KB training step':46s}{total_flops / 1e6:9.0f}{total_ms:9.2f}{rate:9.0f}{rate / peak:9.0%}"
          "  <- the ceiling")
    return 0


if __name__ == "__main__":
    sys.exit(main())
