"""marktune.data.cifar100: torchvision's pickles read, split and fetched under the lock."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from marktune.data import DatasetMissingError, cifar100, load_benchmark
from tests.data.layouts import check_task_shapes, image_to_class, write_cifar100, cifar_dir


def test_cifar100_split_shapes_and_round_trip(cifar_dir):
    root, written = cifar_dir
    bench = load_benchmark("cifar100", data_dir=root, seed=0)
    assert bench.name == "cifar100" and bench.num_tasks == 20
    assert bench.channels == 3 and bench.image_size == 32
    assert bench.mean == cifar100.CIFAR100_MEAN and bench.std == cifar100.CIFAR100_STD
    train_class = image_to_class(*written["train"])
    test_class = image_to_class(*written["test"])
    all_classes = []
    for t, task in enumerate(bench.tasks):
        assert task.index == t
        check_task_shapes(task, size=32, classes=5)
        all_classes += task.classes
        assert len(task.train) + len(task.val) == 15 and len(task.val) == round(0.15 * 15)
        assert len(task.test) == 10
        # Every image comes back bit for bit, under the label of its class.
        for split, lookup in ((task.train, train_class), (task.val, train_class), (task.test, test_class)):
            for img, label in zip(split.x.numpy(), split.y.tolist()):
                assert lookup[img.tobytes()] == task.classes[label]
    assert sorted(all_classes) == list(range(100))


def test_cifar100_class_order_depends_on_seed(cifar_dir):
    root, _ = cifar_dir
    order = lambda seed: [c for task in load_benchmark("cifar100", data_dir=root, seed=seed).tasks
                          for c in task.classes]
    assert order(0) == order(0)
    assert order(0) != order(1)
    assert order(0) != list(range(100))  # permuted, not in id order


def test_cifar100_files_are_readable_by_torchvision(cifar_dir, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    root, written = cifar_dir
    # Our tiny files have other md5s than the real ones: set the checks aside.
    monkeypatch.setattr(tv_cifar.CIFAR100, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    for part in ("train", "test"):
        tv = tv_cifar.CIFAR100(root=str(root), train=part == "train", download=False)
        images, labels = written[part]
        assert np.array_equal(tv.data, images.transpose(0, 2, 3, 1))
        assert tv.targets == labels.tolist()


def test_cifar100_data_dir_may_be_the_folder_itself(cifar_dir):
    root, _ = cifar_dir
    a = load_benchmark("cifar100", data_dir=root, num_tasks=10, seed=4)
    b = load_benchmark("cifar100", data_dir=root / "cifar-100-python", num_tasks=10, seed=4)
    assert a.num_tasks == b.num_tasks == 10 and a.tasks[3].classes == b.tasks[3].classes
    assert torch.equal(a.tasks[3].train.x, b.tasks[3].train.x)


def test_cifar100_download_goes_through_the_lock(tmp_path, monkeypatch):
    fetched = []

    def fake_torchvision_fetch(class_name: str, root: Path) -> None:
        fetched.append((class_name, Path(root)))
        write_cifar100(Path(root), train_per_class=2, test_per_class=1)

    monkeypatch.setattr(cifar100, "torchvision_fetch", fake_torchvision_fetch)
    target = tmp_path / "new"
    bench = load_benchmark("cifar100", data_dir=target, download=True)
    assert fetched == [("CIFAR100", target)]
    assert bench.num_tasks == 20 and len(bench.tasks[0].test) == 5
    load_benchmark("cifar100", data_dir=target, download=True)  # present now: no second fetch
    assert len(fetched) == 1


def test_cifar100_half_written_pickle_is_a_clear_error(tmp_path):
    write_cifar100(tmp_path, train_per_class=1, test_per_class=1)
    train = tmp_path / "cifar-100-python" / "train"
    train.write_bytes(train.read_bytes()[:1000])
    with pytest.raises(DatasetMissingError, match="unreadable") as info:
        load_benchmark("cifar100", data_dir=tmp_path)
    assert "--download" in str(info.value)


def test_missing_cifar100(tmp_path):
    with pytest.raises(DatasetMissingError) as info:
        load_benchmark("cifar100", data_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "cifar-100-python") in message and "--download" in message
    assert "CIFAR-100 not found" in message
    assert isinstance(info.value, FileNotFoundError)
