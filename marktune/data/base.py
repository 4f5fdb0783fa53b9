"""What every benchmark shares: the containers, the class split into tasks, and small helpers.

A benchmark module (:mod:`marktune.data.cifar100`, ...) reads its files into a :class:`Source`
(the whole data set as uint8 arrays); :func:`split_into_tasks` permutes its classes with the
run's seed and cuts them into equal tasks, labels remapped to ``0..n-1`` within a task
(``docs/method.md``, "Benchmarks"). Normalisation is left to the learner
(:meth:`Benchmark.normalize`, on the device, per batch), so nothing here runs per image.

Example:
    >>> rng = np.random.default_rng(0)
    >>> source = Source(rng.integers(0, 256, (8, 3, 2, 2), dtype=np.uint8), np.arange(8) % 4,
    ...                 rng.integers(0, 256, (4, 3, 2, 2), dtype=np.uint8), np.arange(4))
    >>> tasks = split_into_tasks(source, num_tasks=2, seed=0, val_fraction=0.5, max_train=None, max_test=None)
    >>> [task.num_classes for task in tasks], [len(task.test) for task in tasks]
    ([2, 2], [2, 2])
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

# Mean/std are estimated on at most this many training images (evenly strided): exact
# enough, and cheap on MiniImageNet.
STATS_MAX_IMAGES = 10_000


class DatasetMissingError(FileNotFoundError):
    """A data set is not on disk (or is unreadable); the message says where we looked and how to get it."""


# eq=False: the fields are tensors, whose == is elementwise.
@dataclass(eq=False)
class Split:
    x: torch.Tensor  # uint8 [N, C, H, W], contiguous
    y: torch.Tensor  # int64 [N], 0..num_classes-1 within the task

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(eq=False)
class Task:
    index: int
    classes: list[int]  # original class ids, in label order: label i is classes[i]
    train: Split
    val: Split  # held out from the task's training images
    test: Split  # from the benchmark's test set

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass(eq=False)
class Benchmark:
    name: str
    tasks: list[Task]
    channels: int
    image_size: int
    mean: tuple[float, float, float]  # per channel, of pixel/255
    std: tuple[float, float, float]
    _stats_on: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, init=False, repr=False)

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    def normalize(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """``(x / 255 - mean) / std`` as float32 on ``x``'s device; ``x`` is [C,H,W] or [N,C,H,W]."""
        device = x_uint8.device
        key = str(device)
        if key not in self._stats_on:  # cached: no host-to-device copy per batch
            mean = torch.tensor(self.mean, dtype=torch.float32, device=device).view(-1, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32, device=device).view(-1, 1, 1)
            self._stats_on[key] = (mean, std)
        mean, std = self._stats_on[key]
        return (x_uint8.to(torch.float32) / 255.0 - mean) / std


@dataclass(eq=False)
class Source:
    """A whole benchmark: uint8 [N, 3, H, W] arrays (possibly non-contiguous views) and original labels.

    numpy rather than torch: gathering a task's images with torch's indexing wakes its thread
    pool, which costs milliseconds per call on a busy machine.
    """
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    stats: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None


def check_arguments(*, num_tasks: int, seed: int, val_fraction: float,
                    max_train_per_task: int | None, max_test_per_task: int | None) -> None:
    if not isinstance(num_tasks, int) or num_tasks < 1:
        raise ValueError(f"num_tasks must be a whole number >= 1 (got {num_tasks!r})")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a whole number >= 0 (got {seed!r})")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1) (got {val_fraction!r})")
    if max_train_per_task is not None and max_train_per_task < 2:
        raise ValueError(f"max_train_per_task must be >= 2, one training and one validation "
                         f"image (got {max_train_per_task})")
    if max_test_per_task is not None and max_test_per_task < 1:
        raise ValueError(f"max_test_per_task must be >= 1 (got {max_test_per_task})")


def split_into_tasks(source: Source, *, num_tasks: int, seed: int, val_fraction: float,
                     class_order: Sequence[int] | None = None, max_train: int | None, max_test: int | None) -> list[Task]:
    classes = np.unique(source.train_y)
    missing_in_test = np.setdiff1d(classes, source.test_y)
    if missing_in_test.size:
        raise ValueError(f"the test set has no images of class(es) {missing_in_test.tolist()}")
    if len(classes) % num_tasks:
        raise ValueError(f"{len(classes)} classes cannot be cut into {num_tasks} tasks of equal "
                         f"size; choose num_tasks dividing {len(classes)}")
    per_task = len(classes) // num_tasks
    if per_task < 2:
        raise ValueError(f"{len(classes)} classes in {num_tasks} tasks leaves {per_task} class "
                         "per task; a task needs at least two")
    if class_order is not None:
        if sorted(class_order) != classes.tolist():
            raise ValueError(f"class_order must be a permutation of the class ids {classes.tolist()}")
        order = np.asarray(class_order)
    else:  # the authors' rule (numpy.random.seed(seed); numpy.random.permutation(C))
        order = classes[np.random.RandomState(seed).permutation(len(classes))]
    tasks = []
    for t in range(num_tasks):
        task_classes = order[t * per_task:(t + 1) * per_task]
        # One generator per task: a task's images do not depend on the other tasks.
        rng = np.random.default_rng([seed, t])
        pool = np.flatnonzero(np.isin(source.train_y, task_classes))
        if max_train is not None and len(pool) > max_train:
            pool = pool[stratified_pick(source.train_y[pool], max_train, rng)]
        if len(pool) < 2:
            raise ValueError(f"task {t} has {len(pool)} training image(s); it needs two "
                             "(one to train on, one to validate)")
        n_val = min(max(1, round(val_fraction * len(pool))), len(pool) - 1)
        is_val = stratified_pick(source.train_y[pool], n_val, rng)
        test = np.flatnonzero(np.isin(source.test_y, task_classes))
        if max_test is not None and len(test) > max_test:
            test = test[stratified_pick(source.test_y[test], max_test, rng)]
        tasks.append(Task(
            index=t, classes=[int(c) for c in task_classes],
            train=_gather(source.train_x, source.train_y, pool[~is_val], task_classes),
            val=_gather(source.train_x, source.train_y, pool[is_val], task_classes),
            test=_gather(source.test_x, source.test_y, test, task_classes)))
    return tasks


def stratified_pick(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of ``k`` items: each class in proportion to its size (within one), random within a class."""
    n = len(labels)
    shuffled = rng.permutation(n)
    grouped = shuffled[np.argsort(labels[shuffled], kind="stable")]  # by class, random within
    _, starts, counts = np.unique(labels[grouped], return_index=True, return_counts=True)
    rank = np.arange(n) - np.repeat(starts, counts)
    # Item r of a class of size c sits at quantile (r + 0.5) / c; the k lowest quantiles
    # give every class its share. Ties (equal-sized classes) are broken at random.
    quantile = np.empty(n)
    quantile[grouped] = (rank + 0.5) / np.repeat(counts, counts)
    chosen = np.lexsort((rng.random(n), quantile))[:k]
    mask = np.zeros(n, dtype=bool)
    mask[chosen] = True
    return mask


def _gather(x: np.ndarray, y: np.ndarray, index: np.ndarray, task_classes: np.ndarray) -> Split:
    index = np.sort(index)  # dataset order: deterministic, the learner shuffles
    by_id = np.argsort(task_classes)
    labels = by_id[np.searchsorted(task_classes[by_id], y[index])]  # label i <=> task_classes[i]
    images = np.ascontiguousarray(x[index])  # a copy: the task owns its images
    return Split(x=torch.from_numpy(images), y=torch.from_numpy(labels.astype(np.int64)))


def channel_stats(x: np.ndarray) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean/std of ``x/255`` from a histogram of an evenly strided subset (no float copy)."""
    step = max(1, -(-x.shape[0] // STATS_MAX_IMAGES))
    subset = x[::step]
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(x.shape[1]):
        channel = torch.from_numpy(np.array(subset[:, c])).reshape(-1)  # a writable copy
        hist = torch.bincount(channel, minlength=256).to(torch.float64)
        p = hist / hist.sum()
        mean = float((p * levels).sum())
        var = float((p * (levels - mean) ** 2).sum())
        means.append(round(mean, 4))
        stds.append(round(max(var, 1e-12) ** 0.5, 4))
    return tuple(means), tuple(stds)  # type: ignore[return-value]


def grey_to_rgb(images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W] -> [N, 3, H, W] view (channels materialised per task by ``_gather``)."""
    return np.broadcast_to(images[:, None], (images.shape[0], 3, *images.shape[1:]))
