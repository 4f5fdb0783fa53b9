"""Class-split continual-learning benchmarks for MARK, as uint8 tensors in memory.

Every benchmark is loaded once into ``uint8`` tensors ``[N, 3, H, W]``; its classes are
permuted with the run's seed and cut into equal tasks, labels remapped to ``0..n-1`` within
a task (``../shared/MARK.md``, "Benchmarks"). Normalisation is left to the learner
(:meth:`Benchmark.normalize`, on the device, per batch), so nothing here runs per image.

Example:
    >>> bench = load_benchmark("synthetic", num_tasks=2, seed=1)
    >>> bench.num_tasks, bench.tasks[0].num_classes, tuple(bench.tasks[0].train.x.shape[1:])
    (2, 2, (3, 32, 32))
"""
from __future__ import annotations

import gzip
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

BENCHMARK_NAMES = ("cifar100", "miniimagenet", "fmnist", "digits", "synthetic")
DEFAULT_NUM_TASKS = {"cifar100": 20, "miniimagenet": 20, "fmnist": 5, "digits": 5, "synthetic": 3}

# Where Debian's dataset-fashion-mnist puts the four gzipped IDX files (a constant so tests
# can point it elsewhere).
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

CIFAR_FOLDER = "cifar-100-python"
MINIIMAGENET_FOLDER = "miniimagenet"
FMNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

# The digits test split is fixed (not the run's seed), so that, as for the other
# benchmarks, every seed of a search is scored on the same test images.
DIGITS_TEST_SEED = 0
# Mean/std are estimated on at most this many training images (evenly strided): exact
# enough, and cheap on MiniImageNet.
STATS_MAX_IMAGES = 10_000


class DatasetMissingError(FileNotFoundError):
    """A data set is not on disk (or is unreadable); the message says where we looked and how to get it."""


# ---------------------------------------------------------------------------------------
# Public containers
# ---------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------
def default_data_dir() -> Path:
    """``$MARKTUNE_DATA``, else ``$XDG_CACHE_HOME/marktune``, else ``~/.cache/marktune``."""
    if os.environ.get("MARKTUNE_DATA"):
        return Path(os.environ["MARKTUNE_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "marktune"


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
    if name not in BENCHMARK_NAMES:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARK_NAMES)}")
    num_tasks = DEFAULT_NUM_TASKS[name] if num_tasks is None else num_tasks
    _check_arguments(num_tasks=num_tasks, seed=seed, val_fraction=val_fraction,
                     max_train_per_task=max_train_per_task, max_test_per_task=max_test_per_task)
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()

    if name == "cifar100":
        source = _load_cifar100(root, download=download)
    elif name == "miniimagenet":
        source = _load_miniimagenet(root)
    elif name == "fmnist":
        source = _load_fmnist(root, download=download)
    elif name == "digits":
        source = _load_digits()
    else:
        source = _make_synthetic(num_classes=num_tasks * synthetic_classes_per_task,
                                 images_per_class=synthetic_images_per_class,
                                 image_size=synthetic_image_size, seed=seed)

    tasks = _split_into_tasks(source, num_tasks=num_tasks, seed=seed, class_order=class_order,
                              val_fraction=val_fraction, max_train=max_train_per_task, max_test=max_test_per_task)
    mean, std = source.stats if source.stats is not None else _channel_stats(source.train_x)
    return Benchmark(name=name, tasks=tasks, channels=int(source.train_x.shape[1]),
                     image_size=int(source.train_x.shape[-1]), mean=mean, std=std)


def load_benchmark_for(config: Any, *, data_dir: str | Path | None = None,
                       download: bool = False) -> Benchmark:
    """:func:`load_benchmark` with the data fields of a ``marktune.mark.config.MarkConfig``."""
    return load_benchmark(
        getattr(config, "benchmark"),
        num_tasks=getattr(config, "num_tasks", None),
        seed=config.split_seed if hasattr(config, "split_seed") else getattr(config, "seed", 0),
        class_order=getattr(config, "class_order", None),
        data_dir=data_dir,
        download=download,
        val_fraction=getattr(config, "val_fraction", 0.15),
        max_train_per_task=getattr(config, "max_train_per_task", None),
        max_test_per_task=getattr(config, "max_test_per_task", None),
        synthetic_classes_per_task=getattr(config, "synthetic_classes_per_task", 2),
        synthetic_images_per_class=getattr(config, "synthetic_images_per_class", 60),
        synthetic_image_size=getattr(config, "synthetic_image_size", 32),
    )


def check_dataset(name: str, *, data_dir: str | Path | None = None, download: bool = False) -> None:
    """Raise :class:`DatasetMissingError` now if ``name``'s files are not where a run would look.

    Cheap (it looks for the files, it does not read them), so a search can say so before it
    starts Ray and its trials. With ``download`` a fetchable data set (cifar100, fmnist) passes:
    the run fetches it.
    """
    if name not in BENCHMARK_NAMES:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARK_NAMES)}")
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    locate = {"cifar100": (_locate_cifar100, "CIFAR-100", CIFAR_HOW_TO_GET, True),
              "miniimagenet": (_locate_miniimagenet, "MiniImageNet", MINIIMAGENET_HOW_TO_GET, False),
              "fmnist": (_locate_fmnist, "Fashion-MNIST", FMNIST_HOW_TO_GET, True)}.get(name)
    if locate is None:  # digits and synthetic are always there
        return
    find, title, how_to_get, fetchable = locate
    if download and fetchable:
        return
    try:
        find(root)
    except _DataProblem as problem:
        raise DatasetMissingError(_problem_message(title, problem, how_to_get)) from None


def ensure_dataset(directory: str | Path, name: str, *, is_complete: Callable[[], bool],
                   fetch: Callable[[], None], attempts: int = 2) -> None:
    """Make the data set ``name`` in ``directory`` complete, fetching under a file lock.

    The lock (``directory/.<name>.lock``) lets processes that share a directory (a cluster's
    workers) fetch it once: the others wait, then find it complete. A fetch that leaves it
    incomplete (half-written files of a killed run, a torn download) is redone, at most
    ``attempts`` times in all.
    """
    from filelock import FileLock  # local: only needed when fetching

    if is_complete():
        return
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with FileLock(str(directory / f".{name}.lock")):
        for _ in range(attempts):
            if is_complete():  # another process may have fetched it while we waited
                return
            fetch()
        if is_complete():
            return
    raise DatasetMissingError(f"{name}: fetched {attempts} times into {directory}, but the files "
                              "are still incomplete or unreadable; delete them and try again")


def read_idx(path: str | Path, *, expect_magic: int | None = None) -> np.ndarray:
    """Read an IDX file (gzipped or plain, told apart by content), e.g. MNIST's ``*-ubyte``."""
    path = Path(path)
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    raw = gzip.decompress(path.read_bytes()) if gzipped else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file")
    magic = int.from_bytes(raw[:4], "big")
    if expect_magic is not None and magic != expect_magic:
        raise ValueError(f"{path}: IDX magic {magic}, expected {expect_magic}")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise ValueError(f"{path}: unknown IDX element type 0x{raw[2]:02x}")
    dtype, ndim = np.dtype(dtypes[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:  # a truncated download, typically
        raise ValueError(f"{path}: {len(raw)} bytes, expected {expected} for shape {shape}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


# ---------------------------------------------------------------------------------------
# Class split
# ---------------------------------------------------------------------------------------
@dataclass(eq=False)
class _Source:
    """A whole benchmark: uint8 [N, 3, H, W] arrays (possibly non-contiguous views) and original labels.

    numpy rather than torch: gathering a task's images with torch's indexing wakes its thread
    pool, which costs milliseconds per call on a busy machine.
    """
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    stats: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None


def _check_arguments(*, num_tasks: int, seed: int, val_fraction: float,
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


def _split_into_tasks(source: _Source, *, num_tasks: int, seed: int, val_fraction: float,
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
            pool = pool[_stratified_pick(source.train_y[pool], max_train, rng)]
        if len(pool) < 2:
            raise ValueError(f"task {t} has {len(pool)} training image(s); it needs two "
                             "(one to train on, one to validate)")
        n_val = min(max(1, round(val_fraction * len(pool))), len(pool) - 1)
        is_val = _stratified_pick(source.train_y[pool], n_val, rng)
        test = np.flatnonzero(np.isin(source.test_y, task_classes))
        if max_test is not None and len(test) > max_test:
            test = test[_stratified_pick(source.test_y[test], max_test, rng)]
        tasks.append(Task(
            index=t, classes=[int(c) for c in task_classes],
            train=_gather(source.train_x, source.train_y, pool[~is_val], task_classes),
            val=_gather(source.train_x, source.train_y, pool[is_val], task_classes),
            test=_gather(source.test_x, source.test_y, test, task_classes)))
    return tasks


def _stratified_pick(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
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


def _channel_stats(x: np.ndarray) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
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


def _grey_to_rgb(images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W] -> [N, 3, H, W] view (channels materialised per task by ``_gather``)."""
    return np.broadcast_to(images[:, None], (images.shape[0], 3, *images.shape[1:]))


# ---------------------------------------------------------------------------------------
# Fetching and "not found" messages
# ---------------------------------------------------------------------------------------
class _DataProblem(Exception):
    """Raised by a reader: files not found (``places`` looked in) or unreadable (``reason``)."""

    def __init__(self, places: Sequence[Path], reason: str | None = None, *, wrong_format: bool = False):
        super().__init__(reason or "not found")
        self.places = list(places)
        self.reason = reason
        # complete files that hold something else (a missing key): re-fetching would not help
        self.wrong_format = wrong_format


def _require_keys(path: Path, entry: Any, keys: Sequence[str], holds: str) -> dict:
    """The unpickled ``entry`` as a dict with str keys; a missing key says what the file should hold."""
    if not isinstance(entry, dict):
        raise _DataProblem([path], f"{path.name} holds a {type(entry).__name__}, not a dict. {holds}",
                           wrong_format=True)
    entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
    missing = [k for k in keys if k not in entry]
    if missing:
        raise _DataProblem([path], f"{path.name} has no {' or '.join(repr(k) for k in missing)} key (its keys: "
                                   f"{', '.join(map(repr, sorted(map(str, entry)))) or 'none'}). {holds}",
                           wrong_format=True)
    return entry


def _obtain(read: Callable[[], _Source], *, title: str, name: str, directory: Path,
            download: bool, fetch: Callable[[], None] | None, how_to_get: str) -> _Source:
    """``read()``; if that fails, fetch under a lock (``download``) or raise :class:`DatasetMissingError`."""
    try:
        return read()
    except _DataProblem as problem:
        if not (download and fetch is not None):
            raise DatasetMissingError(_problem_message(title, problem, how_to_get)) from None

    loaded: dict[str, _Source] = {}

    def is_complete() -> bool:
        # The validation after a fetch is the real load, kept so the files are read once.
        try:
            loaded["source"] = read()
            return True
        except _DataProblem:
            return False

    try:
        ensure_dataset(directory, name, is_complete=is_complete, fetch=fetch)
    except DatasetMissingError:
        raise
    except Exception as err:  # no network, disk full, a torchvision error: say so plainly
        raise DatasetMissingError(f"{title}: downloading into {directory} failed ({type(err).__name__}: "
                                  f"{err}). {how_to_get}") from None
    return loaded["source"]


def _problem_message(title: str, problem: _DataProblem, how_to_get: str) -> str:
    places = ", ".join(str(p) for p in problem.places)
    if problem.reason is None:
        return f"{title} not found. Looked in: {places}. {how_to_get}"
    if problem.wrong_format:
        return f"{title} files in {places} are not in the expected format: {problem.reason}"
    return (f"{title} files in {places} are unreadable ({problem.reason}); they may be half-written. "
            f"Delete them and get them again. {how_to_get}")


def _torchvision_fetch(dataset_class_name: str, root: Path) -> None:
    import torchvision.datasets  # local: importing torchvision costs a second

    getattr(torchvision.datasets, dataset_class_name)(root=str(root), download=True)


# ---------------------------------------------------------------------------------------
# CIFAR-100
# ---------------------------------------------------------------------------------------
CIFAR_HOW_TO_GET = ("Get it with: `python -m marktune.run --benchmark cifar100 --download` (needs "
                    f"internet) or put torchvision's {CIFAR_FOLDER} folder (files train, test) under "
                    "--data-dir / $MARKTUNE_DATA.")


def _load_cifar100(root: Path, *, download: bool) -> _Source:
    return _obtain(lambda: _read_cifar100(root), title="CIFAR-100", name="cifar100", directory=root,
                   download=download, fetch=lambda: _torchvision_fetch("CIFAR100", root),
                   how_to_get=CIFAR_HOW_TO_GET)


def _locate_folder(root: Path, folder_name: str, files: tuple[str, ...]) -> Path:
    """The folder holding all ``files``: ``root/folder_name``, or ``root`` (which may be that folder)."""
    places = [root] if root.name == folder_name else [root / folder_name, root]
    folder = next((p for p in places if all((p / f).is_file() for f in files)), None)
    if folder is None:
        raise _DataProblem(places)
    return folder


def _locate_cifar100(root: Path) -> Path:
    return _locate_folder(root, CIFAR_FOLDER, ("train", "test"))


def _read_cifar100(root: Path) -> _Source:
    folder = _locate_cifar100(root)
    train_x, train_y = _read_cifar_pickle(folder / "train")
    test_x, test_y = _read_cifar_pickle(folder / "test")
    return _Source(train_x, train_y, test_x, test_y, stats=(CIFAR100_MEAN, CIFAR100_STD))


def _read_cifar_pickle(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")  # the originals are Python 2 pickles
        entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry["fine_labels"], dtype=np.int64)
        images = data.reshape(-1, 3, 32, 32)
    except Exception as err:  # truncated pickle, wrong keys or shapes
        raise _DataProblem([path], f"{path.name}: {type(err).__name__}: {err}") from None
    if len(images) != len(labels):
        raise _DataProblem([path], f"{path.name}: {len(images)} images but {len(labels)} labels")
    return images, labels


# ---------------------------------------------------------------------------------------
# MiniImageNet
# ---------------------------------------------------------------------------------------
MINIIMAGENET_HOLDS = ("Each of train.pkl and test.pkl must be a dict with 'images' (uint8 array "
                      "[N, H, W, 3] or [N, 3, H, W]) and 'labels' (N class ids, the same ids in both files).")
MINIIMAGENET_HOW_TO_GET = (
    "There is no download: put two pickles, train.pkl and test.pkl, in "
    f"<data-dir>/{MINIIMAGENET_FOLDER}/ (--data-dir or $MARKTUNE_DATA). Each is a dict with "
    "'images' (uint8 array [N, 84, 84, 3], or [N, 3, 84, 84]) and 'labels' (N class ids, the "
    "same ids in both files).")


def _load_miniimagenet(root: Path) -> _Source:
    return _obtain(lambda: _read_miniimagenet(root), title="MiniImageNet", name="miniimagenet",
                   directory=root, download=False, fetch=None, how_to_get=MINIIMAGENET_HOW_TO_GET)


def _locate_miniimagenet(root: Path) -> Path:
    return _locate_folder(root, MINIIMAGENET_FOLDER, ("train.pkl", "test.pkl"))


def _read_miniimagenet(root: Path) -> _Source:
    folder = _locate_miniimagenet(root)
    train_x, train_y = _read_miniimagenet_pickle(folder / "train.pkl")
    test_x, test_y = _read_miniimagenet_pickle(folder / "test.pkl")
    return _Source(resize_square(train_x, MINIIMAGENET_SIZE), train_y,
                   resize_square(test_x, MINIIMAGENET_SIZE), test_y)


# MARK.md: MiniImageNet images are 84 x 84 whatever size the pickles hold (some copies are 64 x 64).
MINIIMAGENET_SIZE = 84
RESIZE_CHUNK = 2048  # images per resize call: bounds the float copy torchvision makes


def resize_square(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``[N, C, H, W]`` images resized to ``size x size`` (bilinear, antialiased, with
    torchvision); returned as they are when they already have that size."""
    if images.shape[-2:] == (size, size):
        return images
    from torchvision.transforms.v2 import functional as TF

    out = np.empty((len(images), images.shape[1], size, size), dtype=np.uint8)
    for start in range(0, len(images), RESIZE_CHUNK):
        chunk = torch.from_numpy(np.ascontiguousarray(images[start:start + RESIZE_CHUNK]))
        out[start:start + RESIZE_CHUNK] = TF.resize(chunk, [size, size], antialias=True).numpy()
    return out


def _read_miniimagenet_pickle(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except Exception as err:  # truncated or not a pickle
        raise _DataProblem([path], f"{path.name}: {type(err).__name__}: {err}") from None
    entry = _require_keys(path, entry, ("images", "labels"), MINIIMAGENET_HOLDS)
    try:
        images = np.asarray(entry["images"])
        labels = np.asarray(entry["labels"], dtype=np.int64).reshape(-1)
    except Exception as err:
        raise _DataProblem([path], f"{path.name}: {type(err).__name__}: {err}") from None
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(labels):
        raise _DataProblem([path], f"{path.name}: expected uint8 images [N, H, W, 3] and N labels, "
                                   f"got {images.dtype} {list(images.shape)} and {len(labels)} labels. "
                                   + MINIIMAGENET_HOLDS, wrong_format=True)
    x = images
    if images.shape[-1] == 3 and images.shape[1] != 3:
        x = images.transpose(0, 3, 1, 2)  # HWC -> CHW as a view; made contiguous per task
    if x.shape[1] != 3 or x.shape[2] != x.shape[3]:
        raise _DataProblem([path], f"{path.name}: images of shape {list(images.shape[1:])} are not "
                                   "square RGB. " + MINIIMAGENET_HOLDS, wrong_format=True)
    return x, labels


# ---------------------------------------------------------------------------------------
# Fashion-MNIST
# ---------------------------------------------------------------------------------------
FMNIST_HOW_TO_GET = (
    "Get it with `sudo apt-get install dataset-fashion-mnist` (offline, Debian/Ubuntu), or "
    "`python -m marktune.run --benchmark fmnist --download` (needs internet), or put torchvision's "
    "FashionMNIST/raw folder under --data-dir / $MARKTUNE_DATA.")


def _load_fmnist(root: Path, *, download: bool) -> _Source:
    return _obtain(lambda: _read_fmnist(root), title="Fashion-MNIST", name="fmnist", directory=root,
                   download=download, fetch=lambda: _fetch_fmnist(root), how_to_get=FMNIST_HOW_TO_GET)


def _fmnist_places(root: Path) -> list[Path]:
    return [root / "FashionMNIST" / "raw", root / "fashion-mnist", root, DEBIAN_FASHION_MNIST_DIR]


def _fmnist_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _locate_fmnist(root: Path) -> tuple[Path, dict[str, Path]]:
    places = _fmnist_places(root)
    for folder in places:  # data_dir first, then Debian's
        files = {key: _fmnist_file(folder, stem) for key, stem in FMNIST_FILES.items()}
        if all(files.values()):
            return folder, files  # type: ignore[return-value]
    raise _DataProblem(places)


def _read_fmnist(root: Path) -> _Source:
    folder, files = _locate_fmnist(root)
    arrays = {}
    for key, path in files.items():
        magic = IDX_IMAGES_MAGIC if key.endswith("images") else IDX_LABELS_MAGIC
        try:
            arrays[key] = read_idx(path, expect_magic=magic)
        except (OSError, ValueError, EOFError, gzip.BadGzipFile) as err:
            raise _DataProblem([folder], f"{path.name}: {err}") from None
    for part in ("train", "test"):
        if len(arrays[f"{part}_images"]) != len(arrays[f"{part}_labels"]):
            raise _DataProblem([folder], f"{part}: {len(arrays[f'{part}_images'])} images but "
                                         f"{len(arrays[f'{part}_labels'])} labels")
    return _Source(_pad_to_32(arrays["train_images"]), arrays["train_labels"].astype(np.int64),
                   _pad_to_32(arrays["test_images"]), arrays["test_labels"].astype(np.int64))


def _pad_to_32(images: np.ndarray) -> np.ndarray:
    """uint8 [N, 28, 28] -> [N, 3, 32, 32], zero border of 2 (the 32 px geometry of the KB)."""
    return _grey_to_rgb(np.pad(images, ((0, 0), (2, 2), (2, 2))))


def _fetch_fmnist(root: Path) -> None:
    # torchvision skips the download when the unpacked files merely exist; remove any that
    # do not parse (a torn unpack) so it unpacks them again from its md5-checked archives.
    raw = root / "FashionMNIST" / "raw"
    for stem in FMNIST_FILES.values():
        path = raw / stem
        if path.is_file():
            try:
                read_idx(path)
            except (OSError, ValueError):
                path.unlink()
    _torchvision_fetch("FashionMNIST", root)


# ---------------------------------------------------------------------------------------
# scikit-learn digits and synthetic
# ---------------------------------------------------------------------------------------
def _load_digits() -> _Source:
    from sklearn.datasets import load_digits  # local: sklearn is slow to import

    digits = load_digits()
    grey = torch.from_numpy(digits.images).to(torch.float32).mul_(255.0 / 16.0).unsqueeze(1)
    big = torch.nn.functional.interpolate(grey, size=(32, 32), mode="bilinear", align_corners=False)
    images = big.round_().clamp_(0, 255).to(torch.uint8).squeeze(1).numpy()
    labels = np.asarray(digits.target, dtype=np.int64)
    is_test = _stratified_pick(labels, round(len(labels) / 3), np.random.default_rng(DIGITS_TEST_SEED))
    return _Source(_grey_to_rgb(images[~is_test]), labels[~is_test],
                   _grey_to_rgb(images[is_test]), labels[is_test])


def _make_synthetic(*, num_classes: int, images_per_class: int, image_size: int,
                    seed: int) -> _Source:
    """Per class a smooth random colour prototype; images are it plus pixel noise and a brightness shift.

    Prototypes are drawn at low resolution and upsampled, so they differ in coarse structure
    that a small CNN with pooling picks up in a few epochs.
    """
    if images_per_class < 2:
        raise ValueError(f"synthetic_images_per_class must be >= 2 (got {images_per_class})")
    if image_size < 1:
        raise ValueError(f"synthetic_image_size must be >= 1 (got {image_size})")
    gen = torch.Generator().manual_seed(seed)
    coarse = min(8, image_size)
    protos = torch.rand(num_classes, 3, coarse, coarse, generator=gen) * 200 + 28
    protos = torch.nn.functional.interpolate(protos, size=(image_size, image_size), mode="bilinear",
                                             align_corners=False)
    n_test = max(10, images_per_class // 3)

    def sample(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        labels = torch.arange(num_classes).repeat_interleave(per_class)
        noise = torch.randn(len(labels), 3, image_size, image_size, generator=gen) * 30
        shift = torch.randn(len(labels), 1, 1, 1, generator=gen) * 15
        x = (protos[labels] + noise + shift).round_().clamp_(0, 255).to(torch.uint8)
        return x.numpy(), labels.numpy().astype(np.int64)

    train_x, train_y = sample(images_per_class)
    test_x, test_y = sample(n_test)
    return _Source(train_x, train_y, test_x, test_y)


__all__ = [
    "BENCHMARK_NAMES", "DEFAULT_NUM_TASKS", "DEBIAN_FASHION_MNIST_DIR", "Benchmark",
    "DatasetMissingError", "Split", "Task", "default_data_dir", "ensure_dataset", "load_benchmark",
    "load_benchmark_for", "read_idx",
]
