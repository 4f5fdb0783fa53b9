"""Loading a benchmark: its files (or generator) read once, then cut into class-split tasks.

Every benchmark is loaded once into ``uint8`` tensors ``[N, 3, H, W]`` by its own module
(:mod:`marktune.data.cifar100`, ``miniimagenet``, ``fmnist``, ``digits``, ``synthetic``),
then cut into tasks by :func:`marktune.data.base.split_into_tasks`. The list of benchmarks
and what is known of each before loading is :mod:`marktune.data.registry`.

Example:
    >>> bench = load_benchmark("synthetic", num_tasks=2, seed=1)
    >>> bench.num_tasks, bench.tasks[0].num_classes, tuple(bench.tasks[0].train.x.shape[1:])
    (2, 2, (3, 32, 32))
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence

from marktune.data import cifar100, digits, fmnist, miniimagenet, synthetic
from marktune.data.base import Benchmark, DatasetMissingError, Split, Task, channel_stats, check_arguments, \
    split_into_tasks
from marktune.data.files import DataProblem, default_data_dir, ensure_dataset, problem_message
from marktune.data.fmnist import DEBIAN_FASHION_MNIST_DIR, read_idx
from marktune.data.miniimagenet import resize_square
from marktune.data.registry import BENCHMARKS, FACTS

# the benchmarks read from files, by name: each module has load(root, download=) and locate(root)
FILE_BENCHMARKS = {"cifar100": cifar100, "miniimagenet": miniimagenet, "fmnist": fmnist}


class DataSettings(Protocol):
    """The data settings of a run, as :class:`marktune.mark.config.MarkConfig` holds them."""

    benchmark: str
    num_tasks: int | None
    class_order: Sequence[int] | None
    val_fraction: float
    max_train_per_task: int | None
    max_test_per_task: int | None
    synthetic_classes_per_task: int
    synthetic_images_per_class: int
    synthetic_image_size: int

    @property
    def split_seed(self) -> int: ...  # the class order's and the validation split's seed


def load_benchmark(name: str, *, num_tasks: int | None = None, seed: int = 0,
                   class_order: Sequence[int] | None = None, data_dir: str | Path | None = None, download: bool = False,
                   val_fraction: float = 0.15, max_train_per_task: int | None = None,
                   max_test_per_task: int | None = None,
                   synthetic_classes_per_task: int = 2, synthetic_images_per_class: int = 60,
                   synthetic_image_size: int = 32) -> Benchmark:
    """Load benchmark ``name`` and cut it into ``num_tasks`` class-split tasks.

    ``seed`` is the data seed: it sets the class order (the authors' rule,
    ``numpy.random.RandomState(seed).permutation(classes)``, unless ``class_order`` is
    given) and the validation split.

    Raises :class:`DatasetMissingError` when the files are not found (``download=True``
    fetches cifar100/fmnist with torchvision), ``ValueError`` for bad arguments.
    """
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    num_tasks = FACTS[name].num_tasks if num_tasks is None else num_tasks
    check_arguments(num_tasks=num_tasks, seed=seed, val_fraction=val_fraction,
                    max_train_per_task=max_train_per_task, max_test_per_task=max_test_per_task)
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()

    if name in FILE_BENCHMARKS:
        source = FILE_BENCHMARKS[name].load(root, download=download)
    elif name == "digits":
        source = digits.load()
    else:
        source = synthetic.load(num_classes=num_tasks * synthetic_classes_per_task,
                                images_per_class=synthetic_images_per_class, image_size=synthetic_image_size,
                                seed=seed)

    tasks = split_into_tasks(source, num_tasks=num_tasks, seed=seed, class_order=class_order,
                             val_fraction=val_fraction, max_train=max_train_per_task, max_test=max_test_per_task)
    mean, std = source.stats if source.stats is not None else channel_stats(source.train_x)
    return Benchmark(name=name, tasks=tasks, channels=int(source.train_x.shape[1]),
                     image_size=int(source.train_x.shape[-1]), mean=mean, std=std)


def load_benchmark_for(config: DataSettings, *, data_dir: str | Path | None = None,
                       download: bool = False) -> Benchmark:
    """:func:`load_benchmark` with the data settings of a run (a ``MarkConfig``)."""
    return load_benchmark(
        config.benchmark, num_tasks=config.num_tasks, seed=config.split_seed, class_order=config.class_order,
        data_dir=data_dir, download=download, val_fraction=config.val_fraction,
        max_train_per_task=config.max_train_per_task, max_test_per_task=config.max_test_per_task,
        synthetic_classes_per_task=config.synthetic_classes_per_task,
        synthetic_images_per_class=config.synthetic_images_per_class,
        synthetic_image_size=config.synthetic_image_size,
    )


def check_dataset(name: str, *, data_dir: str | Path | None = None, download: bool = False) -> None:
    """Raise :class:`DatasetMissingError` now if ``name``'s files are not where a run would look.

    Cheap (it looks for the files, it does not read them), so a search can say so before it
    starts Ray and its trials. With ``download`` a fetchable data set (cifar100, fmnist) passes:
    the run fetches it.
    """
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    module, facts = FILE_BENCHMARKS.get(name), FACTS[name]
    if module is None or (download and facts.downloadable):  # digits and synthetic are always there
        return
    try:
        module.locate(root)
    except DataProblem as problem:
        raise DatasetMissingError(problem_message(facts.title, problem, module.HOW_TO_GET)) from None


__all__ = [
    "BENCHMARKS", "DEBIAN_FASHION_MNIST_DIR", "Benchmark", "DataSettings", "DatasetMissingError", "Split", "Task",
    "check_dataset", "default_data_dir", "ensure_dataset", "load_benchmark", "load_benchmark_for", "read_idx",
    "resize_square",
]
