"""CIFAR-100 (``cifar100``): torchvision's ``cifar-100-python`` folder, 100 classes of 32 x 32 RGB.

``--download`` fetches it with torchvision; the mean and std are the data set's published ones.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from marktune.data.base import Source
from marktune.data.files import DataProblem, load_data_pickle, locate_folder, obtain, torchvision_fetch
from marktune.data.registry import FACTS

CIFAR_FOLDER = "cifar-100-python"
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
HOW_TO_GET = ("Get it with: `python -m marktune.run --benchmark cifar100 --download` (needs "
                    f"internet) or put torchvision's {CIFAR_FOLDER} folder (files train, test) under "
                    "--data-dir / $MARKTUNE_DATA.")


def load(root: Path, *, download: bool) -> Source:
    return obtain(lambda: read(root), title=FACTS["cifar100"].title, name="cifar100", directory=root,
                  download=download, fetch=lambda: torchvision_fetch("CIFAR100", root),
                  how_to_get=HOW_TO_GET)


def locate(root: Path) -> Path:
    return locate_folder(root, CIFAR_FOLDER, ("train", "test"))


def read(root: Path) -> Source:
    folder = locate(root)
    train_x, train_y = _read_pickle(folder / "train")
    test_x, test_y = _read_pickle(folder / "test")
    return Source(train_x, train_y, test_x, test_y, stats=(CIFAR100_MEAN, CIFAR100_STD))


def _read_pickle(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            entry = load_data_pickle(f)  # the originals are Python 2 pickles
        entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry["fine_labels"], dtype=np.int64)
        images = data.reshape(-1, 3, 32, 32)
    except Exception as err:  # truncated pickle, wrong keys or shapes
        raise DataProblem([path], f"{path.name}: {type(err).__name__}: {err}") from None
    if len(images) != len(labels):
        raise DataProblem([path], f"{path.name}: {len(images)} images but {len(labels)} labels")
    return images, labels
