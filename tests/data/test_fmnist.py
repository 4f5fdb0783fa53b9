"""marktune.data.fmnist: IDX files in torchvision's and Debian's layouts, padded to 32 px."""
from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from marktune.data import DatasetMissingError, fmnist, load_benchmark, read_idx
from tests.data.layouts import DEBIAN_FMNIST, check_task_shapes, image_to_class, idx_bytes, write_fmnist_raw


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "plain"])
def test_read_idx(tmp_path, gz):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = idx_bytes(images, 2051)
    path = tmp_path / ("x.gz" if gz else "x")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    out = read_idx(path, expect_magic=2051)
    assert out.dtype == np.uint8 and np.array_equal(out, images)
    with pytest.raises(ValueError, match="expected 2049"):
        read_idx(path, expect_magic=2049)
    truncated = tmp_path / "short"
    truncated.write_bytes(raw[:-3])
    with pytest.raises(ValueError, match="expected"):
        read_idx(truncated)


def test_fmnist_from_torchvision_layout(tmp_path, monkeypatch):
    monkeypatch.setattr(fmnist, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    written = write_fmnist_raw(tmp_path / "FashionMNIST" / "raw", gz=False)
    bench = load_benchmark("fmnist", data_dir=tmp_path, seed=5)
    assert bench.num_tasks == 5 and bench.image_size == 32
    lookup = image_to_class(*written["train"])
    for task in bench.tasks:
        check_task_shapes(task, size=32, classes=2)
        x = task.train.x
        assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])  # grey repeated
        assert x[:, :, :2].eq(0).all() and x[:, :, -2:].eq(0).all()  # 2-pixel zero border
        assert x[:, :, :, :2].eq(0).all() and x[:, :, :, -2:].eq(0).all()
        for img, label in zip(x[:, 0, 2:30, 2:30].numpy(), task.train.y.tolist()):
            assert lookup[img.tobytes()] == task.classes[label]


@pytest.mark.skipif(not DEBIAN_FMNIST.is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
def test_fmnist_real_debian_files(tmp_path):
    bench = load_benchmark("fmnist", data_dir=tmp_path, max_train_per_task=200, seed=0)  # empty dir: Debian's
    assert bench.num_tasks == 5 and bench.channels == 3 and bench.image_size == 32
    classes = []
    for task in bench.tasks:
        check_task_shapes(task, size=32, classes=2)
        classes += task.classes
        assert len(task.train) + len(task.val) == 200 and len(task.val) == 30
        assert len(task.test) == 2000  # 1000 test images per class, uncapped
        for split in (task.train, task.test):
            x = split.x
            assert x[:, :, :2].eq(0).all() and x[:, :, -2:].eq(0).all()
            assert x[:, :, :, :2].eq(0).all() and x[:, :, :, -2:].eq(0).all()
        assert task.train.x.float().mean() > 10  # real pictures, not blank
    assert sorted(classes) == list(range(10))
    assert 0.2 < bench.mean[0] < 0.3 and bench.mean[0] == bench.mean[1] == bench.mean[2]


def test_missing_fmnist(tmp_path, monkeypatch):
    monkeypatch.setattr(fmnist, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    with pytest.raises(DatasetMissingError) as info:
        load_benchmark("fmnist", data_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and str(tmp_path / "no-debian") in message
    assert "apt-get install dataset-fashion-mnist" in message and "--download" in message
