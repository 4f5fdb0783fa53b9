"""Tiny data sets written in the real on-disk layouts, shared by the tests of tests/data."""
from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def write_cifar100(root: Path, *, train_per_class: int = 3, test_per_class: int = 2,
                    seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """torchvision's cifar-100-python/{train,test,meta}: Python pickles of dicts, data [N, 3072] uint8."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    written = {}
    for part, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(100), per_class))  # shuffled, as in the real file
        images = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
        entry = {
            "filenames": [f"img_{i}.png" for i in range(len(labels))],
            "batch_label": f"{part}ing batch 1 of 1",
            "fine_labels": labels.tolist(),
            "coarse_labels": (labels // 5).tolist(),
            "data": images,
        }
        with open(folder / part, "wb") as f:
            pickle.dump(entry, f)
        written[part] = (images.reshape(-1, 3, 32, 32), labels)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"fine{i}" for i in range(100)],
                     "coarse_label_names": [f"coarse{i}" for i in range(20)]}, f)
    return written


def write_miniimagenet(root: Path, *, classes: int = 20, train_per_class: int = 4,
                        test_per_class: int = 2, chw: bool = False,
                        size: int = 84) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(1)
    folder = root / "miniimagenet"
    folder.mkdir(parents=True)
    written = {}
    for part, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(classes) + 64, per_class))  # ids need not start at 0
        images = rng.integers(0, 256, size=(len(labels), size, size, 3), dtype=np.uint8)
        stored = images.transpose(0, 3, 1, 2).copy() if chw else images
        with open(folder / f"{part}.pkl", "wb") as f:
            pickle.dump({"images": stored, "labels": labels.tolist()}, f)
        written[part] = (images.transpose(0, 3, 1, 2), labels)
    return written


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(">u1").tobytes()


def write_fmnist_raw(folder: Path, *, per_class: int = 3, gz: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    folder.mkdir(parents=True)
    arrays = {}
    for part in ("train", "t10k"):
        labels = rng.permutation(np.repeat(np.arange(10), per_class)).astype(np.uint8)
        images = rng.integers(1, 256, size=(len(labels), 28, 28), dtype=np.uint8)  # no zeros inside
        for kind, array, magic in (("images-idx3", images, 2051), ("labels-idx1", labels, 2049)):
            raw = idx_bytes(array, magic)
            name = f"{part}-{kind}-ubyte"
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
            else:
                (folder / name).write_bytes(raw)
        arrays[part] = (images, labels)
    return arrays


def image_to_class(images: np.ndarray, labels: np.ndarray) -> dict[bytes, int]:
    return {img.tobytes(): int(c) for img, c in zip(images, labels)}


def check_task_shapes(task, *, size: int, classes: int) -> None:
    for split in (task.train, task.val, task.test):
        assert split.x.dtype == torch.uint8 and split.y.dtype == torch.int64
        assert split.x.ndim == 4 and tuple(split.x.shape[1:]) == (3, size, size)
        assert split.x.is_contiguous()
        assert split.x.shape[0] == split.y.shape[0]
        assert set(split.y.tolist()) <= set(range(classes))
    for split in (task.train, task.test):  # val may be too small to hold every class
        assert set(split.y.tolist()) == set(range(classes))
    assert task.num_classes == classes and len(task.classes) == classes


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("cifar")
    return root, write_cifar100(root)
