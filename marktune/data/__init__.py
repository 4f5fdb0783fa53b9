"""The benchmarks: one module each over a shared base, one registry of their facts.

:mod:`marktune.data.registry` (torch-free) lists the benchmarks and what is known of each;
:mod:`marktune.data.benchmarks` loads one and cuts it into tasks
(:mod:`marktune.data.base`); ``cifar100``, ``miniimagenet``, ``fmnist``, ``digits`` and
``synthetic`` read (or make) each.

The names below are imported on first use, so that importing the torch-free registry
(as :mod:`marktune.mark.config` does) does not import torch.
"""
from __future__ import annotations

from typing import Any

__all__ = [
    "BENCHMARKS", "DEBIAN_FASHION_MNIST_DIR", "Benchmark", "DataSettings", "DatasetMissingError", "Split", "Task",
    "check_dataset", "default_data_dir", "ensure_dataset", "load_benchmark", "load_benchmark_for", "read_idx",
    "resize_square",
]


def __getattr__(name: str) -> Any:
    if name == "BENCHMARKS":
        from marktune.data.registry import BENCHMARKS
        return BENCHMARKS
    if name in __all__:
        from marktune.data import benchmarks
        return getattr(benchmarks, name)
    raise AttributeError(f"module 'marktune.data' has no attribute {name!r}")
