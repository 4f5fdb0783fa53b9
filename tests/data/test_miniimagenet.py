"""marktune.data.miniimagenet: the two pickles, HWC or CHW, resized to 84 px; wrong formats named."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from marktune.data import DatasetMissingError, load_benchmark, resize_square
from tests.data.layouts import check_task_shapes, image_to_class, write_miniimagenet


@pytest.mark.parametrize("chw", [False, True], ids=["HWC", "CHW"])
def test_miniimagenet_tiny_pickles(tmp_path, chw):
    written = write_miniimagenet(tmp_path, chw=chw)
    bench = load_benchmark("miniimagenet", data_dir=tmp_path, num_tasks=4, seed=2)
    assert bench.num_tasks == 4 and bench.image_size == 84 and bench.channels == 3
    assert len(bench.mean) == 3 and all(0.3 < m < 0.7 for m in bench.mean)  # uniform noise: ~0.5
    train_class = image_to_class(*written["train"])
    test_class = image_to_class(*written["test"])
    seen = []
    for task in bench.tasks:
        check_task_shapes(task, size=84, classes=5)
        seen += task.classes
        assert len(task.train) + len(task.val) == 20 and len(task.test) == 10
        for split, lookup in ((task.train, train_class), (task.val, train_class), (task.test, test_class)):
            for img, label in zip(split.x.numpy(), split.y.tolist()):
                assert lookup[img.tobytes()] == task.classes[label]
    assert sorted(seen) == list(range(64, 84))


@pytest.mark.parametrize("chw", [False, True], ids=["HWC", "CHW"])
def test_miniimagenet_64px_pickles_are_resized_to_84(tmp_path, chw):
    from torchvision.transforms.v2 import functional as TF

    written = write_miniimagenet(tmp_path, classes=10, train_per_class=3, test_per_class=2, chw=chw, size=64)
    bench = load_benchmark("miniimagenet", data_dir=tmp_path, num_tasks=2, seed=3)
    assert bench.image_size == 84
    images, labels = written["test"]
    for task in bench.tasks:
        check_task_shapes(task, size=84, classes=5)
        assert task.test.x.dtype == torch.uint8
        # each test image is its 64 px original, resized (bilinear, antialiased) to 84 x 84
        for img, label in zip(task.test.x, task.test.y.tolist()):
            candidates = [TF.resize(torch.from_numpy(images[i].copy()), [84, 84], antialias=True)
                          for i in np.flatnonzero(labels == task.classes[label])]
            assert any(torch.equal(img, c) for c in candidates)


def test_resize_square_keeps_images_of_the_right_size():
    images = np.random.default_rng(0).integers(0, 256, size=(3, 3, 84, 84), dtype=np.uint8)
    assert resize_square(images, 84) is images
    assert resize_square(images, 32).shape == (3, 3, 32, 32)


def test_miniimagenet_default_is_20_tasks(tmp_path):
    write_miniimagenet(tmp_path, classes=40, train_per_class=2, test_per_class=1)
    bench = load_benchmark("miniimagenet", data_dir=tmp_path)
    assert bench.num_tasks == 20 and all(task.num_classes == 2 for task in bench.tasks)


@pytest.mark.parametrize("content,says", [
    ({"images": np.zeros((2, 84, 84, 3), np.uint8)}, "has no 'labels' key (its keys: 'images')"),
    ({"data": np.zeros((2, 84, 84, 3), np.uint8), "targets": [0, 1]}, "has no 'images' or 'labels' key"),
    ([1, 2, 3], "holds a list, not a dict"),
    ({"images": np.zeros((2, 84, 84), np.uint8), "labels": [0, 1]}, "expected uint8 images [N, H, W, 3]"),
])
def test_miniimagenet_pickle_of_the_wrong_format_says_what_it_should_hold(tmp_path, content, says):
    folder = tmp_path / "miniimagenet"
    folder.mkdir()
    for part in ("train", "test"):
        with open(folder / f"{part}.pkl", "wb") as f:
            pickle.dump(content, f)
    with pytest.raises(DatasetMissingError) as info:
        load_benchmark("miniimagenet", data_dir=tmp_path)
    message = str(info.value)
    assert says in message and "train.pkl" in message
    assert "'images' (uint8 array" in message and "'labels' (N class ids" in message  # what it should hold
    assert "half-written" not in message and "Delete them" not in message  # re-fetching would not help


def test_missing_miniimagenet(tmp_path):
    with pytest.raises(DatasetMissingError) as info:
        load_benchmark("miniimagenet", data_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "miniimagenet") in message
    assert "train.pkl" in message and "'images'" in message and "'labels'" in message
