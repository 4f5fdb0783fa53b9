"""MiniImageNet (``miniimagenet``): two pickles, 100 classes of RGB images resized to 84 x 84.

There is no download (no canonical copy to fetch); the pickles' layout is in ``HOW_TO_GET``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from marktune.data.base import Source
from marktune.data.files import DataProblem, load_data_pickle, locate_folder, obtain, require_keys
from marktune.data.registry import FACTS

MINIIMAGENET_FOLDER = "miniimagenet"
MINIIMAGENET_HOLDS = ("Each of train.pkl and test.pkl must be a dict with 'images' (uint8 array "
                      "[N, H, W, 3] or [N, 3, H, W]) and 'labels' (N class ids, the same ids in both files).")
HOW_TO_GET = (
    "There is no download: put two pickles, train.pkl and test.pkl, in "
    f"<data-dir>/{MINIIMAGENET_FOLDER}/ (--data-dir or $MARKTUNE_DATA). Each is a dict with "
    "'images' (uint8 array [N, 84, 84, 3], or [N, 3, 84, 84]) and 'labels' (N class ids, the "
    "same ids in both files).")


def load(root: Path, *, download: bool = False) -> Source:
    """There is no download: ``download`` is accepted for a uniform interface and ignored."""
    return obtain(lambda: read(root), title=FACTS["miniimagenet"].title, name="miniimagenet",
                  directory=root, download=False, fetch=None, how_to_get=HOW_TO_GET)


def locate(root: Path) -> Path:
    return locate_folder(root, MINIIMAGENET_FOLDER, ("train.pkl", "test.pkl"))


def read(root: Path) -> Source:
    folder = locate(root)
    train_x, train_y = _read_pickle(folder / "train.pkl")
    test_x, test_y = _read_pickle(folder / "test.pkl")
    return Source(resize_square(train_x, MINIIMAGENET_SIZE), train_y,
                  resize_square(test_x, MINIIMAGENET_SIZE), test_y)


# docs/method.md: MiniImageNet images are 84 x 84 whatever size the pickles hold (some copies are 64 x 64).
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


def _read_pickle(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            entry = load_data_pickle(f)
    except Exception as err:  # truncated or not a pickle
        raise DataProblem([path], f"{path.name}: {type(err).__name__}: {err}") from None
    entry = require_keys(path, entry, ("images", "labels"), MINIIMAGENET_HOLDS)
    try:
        images = np.asarray(entry["images"])
        labels = np.asarray(entry["labels"], dtype=np.int64).reshape(-1)
    except Exception as err:
        raise DataProblem([path], f"{path.name}: {type(err).__name__}: {err}") from None
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(labels):
        raise DataProblem([path], f"{path.name}: expected uint8 images [N, H, W, 3] and N labels, "
                                   f"got {images.dtype} {list(images.shape)} and {len(labels)} labels. "
                                   + MINIIMAGENET_HOLDS, wrong_format=True)
    x = images
    if images.shape[-1] == 3 and images.shape[1] != 3:
        x = images.transpose(0, 3, 1, 2)  # HWC -> CHW as a view; made contiguous per task
    if x.shape[1] != 3 or x.shape[2] != x.shape[3]:
        raise DataProblem([path], f"{path.name}: images of shape {list(images.shape[1:])} are not "
                                   "square RGB. " + MINIIMAGENET_HOLDS, wrong_format=True)
    return x, labels
