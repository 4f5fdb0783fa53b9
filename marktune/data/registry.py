"""The benchmarks marktune knows, and their facts: torch-free, the one definition of the list.

Known without reading any data (and without importing torch), so that a config naming a
benchmark, or a split it cannot take, is refused in a blink (:mod:`marktune.mark.config`).
Each benchmark's loader is its own module, :mod:`marktune.data.<name>`.

Example:
    >>> BENCHMARKS
    ('cifar100', 'miniimagenet', 'fmnist', 'digits', 'synthetic')
    >>> FACTS["fmnist"].num_tasks, FACTS["fmnist"].classes, FACTS["synthetic"].classes
    (5, 10, None)
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BenchmarkFacts:
    """What is known of a benchmark before its files are read."""

    name: str
    title: str  # as messages name it
    num_tasks: int  # the default split (the paper's)
    image_size: int | None  # after loading; None: a setting (synthetic_image_size)
    classes: int | None  # None: num_tasks x synthetic_classes_per_task
    files: bool  # read from files under the data directory (else made or shipped in a package)
    downloadable: bool  # ``--download`` fetches the files (torchvision)


FACTS: dict[str, BenchmarkFacts] = {facts.name: facts for facts in (
    BenchmarkFacts("cifar100", "CIFAR-100", num_tasks=20, image_size=32, classes=100, files=True, downloadable=True),
    BenchmarkFacts("miniimagenet", "MiniImageNet", num_tasks=20, image_size=84, classes=100, files=True,
                   downloadable=False),
    BenchmarkFacts("fmnist", "Fashion-MNIST", num_tasks=5, image_size=32, classes=10, files=True, downloadable=True),
    BenchmarkFacts("digits", "scikit-learn digits", num_tasks=5, image_size=32, classes=10, files=False,
                   downloadable=False),
    BenchmarkFacts("synthetic", "synthetic", num_tasks=3, image_size=None, classes=None, files=False,
                   downloadable=False),
)}
BENCHMARKS: tuple[str, ...] = tuple(FACTS)
