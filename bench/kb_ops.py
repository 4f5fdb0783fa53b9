"""Micro-benchmark: one forward vs one SGD step of the depth-3 KB (batch 128, channels-last).

Why evaluation (forward only) cannot reach 5x the training throughput here, and whether
prepacked oneDNN convolutions (``torch.utils.mkldnn.to_mkldnn``) would help evaluation.

    .venv/bin/python bench/kb_ops.py [--threads 2] [--repeat 30]
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils import mkldnn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from marktune.mark.model import KnowledgeBase  # noqa: E402


def milliseconds(step, repeat: int) -> float:
    for _ in range(5):  # warm-up: oneDNN picks and caches its kernels
        step()
    start = time.perf_counter()
    for _ in range(repeat):
        step()
    return (time.perf_counter() - start) / repeat * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cl = torch.channels_last
    x = torch.randn(128, 3, 32, 32).contiguous(memory_format=cl)
    y = torch.randint(0, 2, (128,))
    kb = KnowledgeBase(image_size=32).to(memory_format=cl)
    masks = [torch.rand(128, c, 1, 1) for c in kb.channels]
    head = torch.nn.Linear(kb.latent_dim, 2)
    opt = torch.optim.SGD(list(kb.parameters()) + list(head.parameters()), lr=0.01, momentum=0.9)

    def train_step() -> None:
        loss = F.cross_entropy(head(kb(x, masks)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    kb.train()
    step_ms = milliseconds(train_step, args.repeat)
    kb.eval()
    with torch.inference_mode():
        forward_ms = milliseconds(lambda: kb(x, masks), args.repeat)

    # the same forward with prepacked oneDNN convolutions; masks, pooling and ReLU need dense tensors
    packed = [mkldnn.to_mkldnn(copy.deepcopy(conv)) for conv in kb.convs]

    def packed_forward() -> torch.Tensor:
        h = x
        for conv, mask in zip(packed, masks):
            h = torch.relu(F.max_pool2d(conv(h.to_mkldnn()).to_dense(), 2)) * mask
        return torch.relu(kb.fc(h.flatten(1)))

    with torch.inference_mode():
        packed_ms = milliseconds(packed_forward, args.repeat)
        diff = (packed_forward() - kb(x, masks)).abs().max().item()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 128, depth-3 KB at 32 px")
    print(f"SGD step {step_ms:.1f} ms   forward {forward_ms:.1f} ms   ratio {step_ms / forward_ms:.1f}x")
    print(f"forward with prepacked oneDNN convolutions {packed_ms:.1f} ms (max difference {diff:.1e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
