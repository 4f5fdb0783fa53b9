"""Tests of marktune.data.benchmarks: loaders on tiny files in the real layouts, the class split, the lock."""
from __future__ import annotations

import gzip
import multiprocessing as mp
import os
import pickle
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from marktune.data import benchmarks as data
from marktune.data.benchmarks import (DatasetMissingError, check_dataset, default_data_dir, ensure_dataset, load_benchmark,
                           load_benchmark_for, read_idx)

DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


# ---------------------------------------------------------------------------------------
# Helpers that write tiny data sets in the real on-disk layouts
# ---------------------------------------------------------------------------------------
def _write_cifar100(root: Path, *, train_per_class: int = 3, test_per_class: int = 2,
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


def _write_miniimagenet(root: Path, *, classes: int = 20, train_per_class: int = 4,
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


def _idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(">u1").tobytes()


def _write_fmnist_raw(folder: Path, *, per_class: int = 3, gz: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    folder.mkdir(parents=True)
    arrays = {}
    for part in ("train", "t10k"):
        labels = rng.permutation(np.repeat(np.arange(10), per_class)).astype(np.uint8)
        images = rng.integers(1, 256, size=(len(labels), 28, 28), dtype=np.uint8)  # no zeros inside
        for kind, array, magic in (("images-idx3", images, 2051), ("labels-idx1", labels, 2049)):
            raw = _idx_bytes(array, magic)
            name = f"{part}-{kind}-ubyte"
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
            else:
                (folder / name).write_bytes(raw)
        arrays[part] = (images, labels)
    return arrays


def _image_to_class(images: np.ndarray, labels: np.ndarray) -> dict[bytes, int]:
    return {img.tobytes(): int(c) for img, c in zip(images, labels)}


def _check_task_shapes(task, *, size: int, classes: int) -> None:
    for split in (task.train, task.val, task.test):
        assert split.x.dtype == torch.uint8 and split.y.dtype == torch.int64
        assert split.x.ndim == 4 and tuple(split.x.shape[1:]) == (3, size, size)
        assert split.x.is_contiguous()
        assert split.x.shape[0] == split.y.shape[0]
        assert set(split.y.tolist()) <= set(range(classes))
    for split in (task.train, task.test):  # val may be too small to hold every class
        assert set(split.y.tolist()) == set(range(classes))
    assert task.num_classes == classes and len(task.classes) == classes


# ---------------------------------------------------------------------------------------
# CIFAR-100
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("cifar")
    return root, _write_cifar100(root)


def test_cifar100_split_shapes_and_round_trip(cifar_dir):
    root, written = cifar_dir
    bench = load_benchmark("cifar100", data_dir=root, seed=0)
    assert bench.name == "cifar100" and bench.num_tasks == 20
    assert bench.channels == 3 and bench.image_size == 32
    assert bench.mean == data.CIFAR100_MEAN and bench.std == data.CIFAR100_STD
    train_class = _image_to_class(*written["train"])
    test_class = _image_to_class(*written["test"])
    all_classes = []
    for t, task in enumerate(bench.tasks):
        assert task.index == t
        _check_task_shapes(task, size=32, classes=5)
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


def test_num_tasks_must_divide_classes(cifar_dir):
    root, _ = cifar_dir
    with pytest.raises(ValueError, match="100 classes cannot be cut into 7 tasks"):
        load_benchmark("cifar100", data_dir=root, num_tasks=7)


def test_max_test_per_task_caps_test_set(cifar_dir):
    root, _ = cifar_dir
    bench = load_benchmark("cifar100", data_dir=root, max_test_per_task=5, max_train_per_task=10)
    for task in bench.tasks:
        assert len(task.test) == 5 and set(task.test.y.tolist()) == set(range(5))  # stratified
        assert len(task.train) + len(task.val) == 10 and len(task.val) == 2


def test_cifar100_download_goes_through_the_lock(tmp_path, monkeypatch):
    fetched = []

    def fake_torchvision_fetch(class_name: str, root: Path) -> None:
        fetched.append((class_name, Path(root)))
        _write_cifar100(Path(root), train_per_class=2, test_per_class=1)

    monkeypatch.setattr(data, "_torchvision_fetch", fake_torchvision_fetch)
    target = tmp_path / "new"
    bench = load_benchmark("cifar100", data_dir=target, download=True)
    assert fetched == [("CIFAR100", target)]
    assert bench.num_tasks == 20 and len(bench.tasks[0].test) == 5
    load_benchmark("cifar100", data_dir=target, download=True)  # present now: no second fetch
    assert len(fetched) == 1


def test_cifar100_half_written_pickle_is_a_clear_error(tmp_path):
    _write_cifar100(tmp_path, train_per_class=1, test_per_class=1)
    train = tmp_path / "cifar-100-python" / "train"
    train.write_bytes(train.read_bytes()[:1000])
    with pytest.raises(DatasetMissingError, match="unreadable") as info:
        load_benchmark("cifar100", data_dir=tmp_path)
    assert "--download" in str(info.value)


# ---------------------------------------------------------------------------------------
# MiniImageNet
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("chw", [False, True], ids=["HWC", "CHW"])
def test_miniimagenet_tiny_pickles(tmp_path, chw):
    written = _write_miniimagenet(tmp_path, chw=chw)
    bench = load_benchmark("miniimagenet", data_dir=tmp_path, num_tasks=4, seed=2)
    assert bench.num_tasks == 4 and bench.image_size == 84 and bench.channels == 3
    assert len(bench.mean) == 3 and all(0.3 < m < 0.7 for m in bench.mean)  # uniform noise: ~0.5
    train_class = _image_to_class(*written["train"])
    test_class = _image_to_class(*written["test"])
    seen = []
    for task in bench.tasks:
        _check_task_shapes(task, size=84, classes=5)
        seen += task.classes
        assert len(task.train) + len(task.val) == 20 and len(task.test) == 10
        for split, lookup in ((task.train, train_class), (task.val, train_class), (task.test, test_class)):
            for img, label in zip(split.x.numpy(), split.y.tolist()):
                assert lookup[img.tobytes()] == task.classes[label]
    assert sorted(seen) == list(range(64, 84))


@pytest.mark.parametrize("chw", [False, True], ids=["HWC", "CHW"])
def test_miniimagenet_64px_pickles_are_resized_to_84(tmp_path, chw):
    from torchvision.transforms.v2 import functional as TF

    written = _write_miniimagenet(tmp_path, classes=10, train_per_class=3, test_per_class=2, chw=chw, size=64)
    bench = load_benchmark("miniimagenet", data_dir=tmp_path, num_tasks=2, seed=3)
    assert bench.image_size == 84
    images, labels = written["test"]
    for task in bench.tasks:
        _check_task_shapes(task, size=84, classes=5)
        assert task.test.x.dtype == torch.uint8
        # each test image is its 64 px original, resized (bilinear, antialiased) to 84 x 84
        for img, label in zip(task.test.x, task.test.y.tolist()):
            candidates = [TF.resize(torch.from_numpy(images[i].copy()), [84, 84], antialias=True)
                          for i in np.flatnonzero(labels == task.classes[label])]
            assert any(torch.equal(img, c) for c in candidates)


def test_resize_square_keeps_images_of_the_right_size():
    images = np.random.default_rng(0).integers(0, 256, size=(3, 3, 84, 84), dtype=np.uint8)
    assert data.resize_square(images, 84) is images
    assert data.resize_square(images, 32).shape == (3, 3, 32, 32)


def test_class_order_is_the_authors_for_seed_48():
    # numpy.random.seed(48); numpy.random.permutation(100), cut into 20 tasks of 5 (MARK.md)
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(100), 2)
    source = data._Source(rng.integers(0, 256, size=(200, 3, 4, 4), dtype=np.uint8), labels,
                          rng.integers(0, 256, size=(100, 3, 4, 4), dtype=np.uint8), np.arange(100))
    tasks = data._split_into_tasks(source, num_tasks=20, seed=48, val_fraction=0.5, max_train=None, max_test=None)
    expected = np.random.RandomState(48).permutation(100)
    assert [t.classes for t in tasks] == [expected[5 * t:5 * t + 5].tolist() for t in range(20)]


def _digits(**kw):
    from marktune.mark.config import MarkConfig

    return MarkConfig(benchmark="digits", kb_width=8, latent_dim=16, fe_channels=8, **kw)


def _same_tasks(a, b) -> bool:
    return all(ta.classes == tb.classes and all(torch.equal(getattr(ta, s).x, getattr(tb, s).x)
                                                for s in ("train", "val", "test"))
               for ta, tb in zip(a.tasks, b.tasks))


def test_data_seed_sets_class_order_and_validation_split_and_nothing_else():
    from marktune.data.benchmarks import load_benchmark_for
    from marktune.mark.learner import MarkLearner

    base = load_benchmark_for(_digits(seed=0, data_seed=1))
    other_data = load_benchmark_for(_digits(seed=0, data_seed=2))
    other_seed = load_benchmark_for(_digits(seed=7, data_seed=1))
    assert [t.classes for t in base.tasks] != [t.classes for t in other_data.tasks]
    assert [t.classes for t in base.tasks] == [t.classes for t in other_seed.tasks]
    assert _same_tasks(base, other_seed)  # seed changes neither order nor split
    # with the classes held in place, data_seed still moves the validation split
    order = list(range(10))
    a = load_benchmark_for(_digits(seed=0, data_seed=1, class_order=order))
    b = load_benchmark_for(_digits(seed=0, data_seed=2, class_order=order))
    assert [t.classes for t in a.tasks] == [t.classes for t in b.tasks]
    assert not torch.equal(a.tasks[0].val.x, b.tasks[0].val.x)
    # ...and nothing else: the learner's initialisation follows seed alone
    kb = lambda cfg, bench: MarkLearner(cfg, bench, verbose=0).kb.state_dict()  # noqa: E731
    k1, k2 = kb(_digits(seed=0, data_seed=1), base), kb(_digits(seed=0, data_seed=2), other_data)
    assert all(torch.equal(k1[n], k2[n]) for n in k1)
    k3 = kb(_digits(seed=7, data_seed=1), other_seed)
    assert not all(torch.equal(k1[n], k3[n]) for n in k1)
    # data_seed left empty is seed (today's configs keep their meaning)
    assert _same_tasks(load_benchmark_for(_digits(seed=1)), load_benchmark_for(_digits(seed=5, data_seed=1)))


def test_miniimagenet_default_is_20_tasks(tmp_path):
    _write_miniimagenet(tmp_path, classes=40, train_per_class=2, test_per_class=1)
    bench = load_benchmark("miniimagenet", data_dir=tmp_path)
    assert bench.num_tasks == 20 and all(task.num_classes == 2 for task in bench.tasks)


# ---------------------------------------------------------------------------------------
# Fashion-MNIST and IDX
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "plain"])
def test_read_idx(tmp_path, gz):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = _idx_bytes(images, 2051)
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
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    written = _write_fmnist_raw(tmp_path / "FashionMNIST" / "raw", gz=False)
    bench = load_benchmark("fmnist", data_dir=tmp_path, seed=5)
    assert bench.num_tasks == 5 and bench.image_size == 32
    lookup = _image_to_class(*written["train"])
    for task in bench.tasks:
        _check_task_shapes(task, size=32, classes=2)
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
        _check_task_shapes(task, size=32, classes=2)
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


# ---------------------------------------------------------------------------------------
# digits and synthetic
# ---------------------------------------------------------------------------------------
def test_digits():
    bench = load_benchmark("digits", seed=3)
    assert bench.num_tasks == 5 and bench.image_size == 32
    total = 0
    for task in bench.tasks:
        _check_task_shapes(task, size=32, classes=2)
        total += len(task.train) + len(task.val) + len(task.test)
        pool = len(task.train) + len(task.val)
        assert abs(len(task.test) - (pool + len(task.test)) / 3) <= 2  # 1/3 per class, +-rounding
        assert task.train.x.max() == 255  # 16 scaled to 255
    assert total == 1797
    # The test split is fixed: another seed changes the task order, not which images are test.
    other = load_benchmark("digits", seed=4)
    test_images = lambda b: sorted(img.tobytes() for t in b.tasks for img in t.test.x.numpy())
    assert test_images(bench) == test_images(other)


def test_synthetic_is_deterministic_in_seed():
    kwargs = dict(num_tasks=2, synthetic_classes_per_task=3, synthetic_images_per_class=12,
                  synthetic_image_size=16)
    a, b = load_benchmark("synthetic", seed=7, **kwargs), load_benchmark("synthetic", seed=7, **kwargs)
    c = load_benchmark("synthetic", seed=8, **kwargs)
    assert a.num_tasks == 2 and a.image_size == 16
    for ta, tb, tc in zip(a.tasks, b.tasks, c.tasks):
        _check_task_shapes(ta, size=16, classes=3)
        assert len(ta.train) + len(ta.val) == 36 and len(ta.test) == 3 * 10
        assert ta.classes == tb.classes
        for name in ("train", "val", "test"):
            assert torch.equal(getattr(ta, name).x, getattr(tb, name).x)
            assert torch.equal(getattr(ta, name).y, getattr(tb, name).y)
            assert not torch.equal(getattr(ta, name).x, getattr(tc, name).x)


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread, as the thread pool's overhead dominates on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_synthetic_is_learnable_by_a_small_cnn(one_thread):
    torch.manual_seed(0)
    bench = load_benchmark("synthetic", seed=0, num_tasks=1, synthetic_classes_per_task=4)
    task = bench.tasks[0]
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 8, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.LazyLinear(task.num_classes))
    x, y = bench.normalize(task.train.x), task.train.y
    net(x[:1])
    # lr 0.01: at 0.05 two of five initialisations died (all ReLUs off, chance), a property
    # of the optimiser, not of the data
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    for _ in range(5):
        for i in range(0, len(y), 32):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x[i:i + 32]), y[i:i + 32]).backward()
            opt.step()
    with torch.no_grad():
        acc = (net(bench.normalize(task.test.x)).argmax(1) == task.test.y).float().mean()
    assert acc > 0.8  # chance is 0.25


# ---------------------------------------------------------------------------------------
# Validation split, normalisation, config
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("val_fraction", [0.15, 0.3])
def test_val_split_disjoint_sized_and_test_untouched(val_fraction):
    kwargs = dict(seed=1, synthetic_classes_per_task=2, synthetic_images_per_class=40)
    bench = load_benchmark("synthetic", val_fraction=val_fraction, **kwargs)
    reference = load_benchmark("synthetic", val_fraction=0.5, max_train_per_task=20, **kwargs)
    for task, ref in zip(bench.tasks, reference.tasks):
        train = {img.tobytes() for img in task.train.x.numpy()}
        val = {img.tobytes() for img in task.val.x.numpy()}
        assert len(train) == len(task.train) and len(val) == len(task.val)  # noise: all distinct
        assert not train & val
        assert len(task.val) == round(val_fraction * 80) and len(task.train) == 80 - len(task.val)
        counts = torch.bincount(task.val.y, minlength=2)
        assert abs(int(counts[0]) - int(counts[1])) <= 1  # stratified
        # The test set does not depend on val_fraction or the training cap.
        assert torch.equal(task.test.x, ref.test.x) and torch.equal(task.test.y, ref.test.y)
        # The training cap picks from the same pool.
        ref_pool = {img.tobytes() for img in torch.cat([ref.train.x, ref.val.x]).numpy()}
        assert len(ref_pool) == 20 and ref_pool <= train | val and len(ref.val) == 10


def test_val_is_at_least_one_image():
    bench = load_benchmark("synthetic", val_fraction=0.01, synthetic_images_per_class=5)
    assert all(len(t.val) == 1 and len(t.train) == 9 for t in bench.tasks)


def test_normalize():
    bench = load_benchmark("synthetic", synthetic_images_per_class=4)
    x = bench.tasks[0].train.x
    out = bench.normalize(x)
    assert out.dtype == torch.float32 and out.shape == x.shape and out.device == x.device
    mean = torch.tensor(bench.mean).view(1, 3, 1, 1)
    std = torch.tensor(bench.std).view(1, 3, 1, 1)
    assert torch.allclose(out, (x.float() / 255 - mean) / std, atol=1e-6)
    assert torch.allclose(bench.normalize(x[0]), out[0])  # a single image works too
    # The stats are those of the training data: normalised train data is ~N(0, 1).
    all_train = torch.cat([bench.normalize(t.train.x) for t in bench.tasks])
    assert all_train.mean().abs() < 0.2 and 0.8 < all_train.std() < 1.2


def test_load_benchmark_for_reads_config_fields():
    config = SimpleNamespace(benchmark="synthetic", num_tasks=None, seed=3, val_fraction=0.25,
                             max_train_per_task=None, max_test_per_task=7,
                             synthetic_classes_per_task=2, synthetic_images_per_class=8,
                             synthetic_image_size=12)
    bench = load_benchmark_for(config)
    assert bench.num_tasks == 3 and bench.image_size == 12
    assert all(len(t.val) == 4 and len(t.test) == 7 for t in bench.tasks)
    same = load_benchmark("synthetic", seed=3, val_fraction=0.25, max_test_per_task=7,
                          synthetic_images_per_class=8, synthetic_image_size=12)
    assert torch.equal(bench.tasks[2].train.x, same.tasks[2].train.x)


def test_bad_arguments():
    with pytest.raises(ValueError, match="cifar100, miniimagenet, fmnist, digits, synthetic"):
        load_benchmark("imagenet")
    with pytest.raises(ValueError, match="val_fraction"):
        load_benchmark("synthetic", val_fraction=0.0)
    with pytest.raises(ValueError, match="at least two"):
        load_benchmark("digits", num_tasks=10)


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MARKTUNE_DATA", str(tmp_path / "d"))
    assert default_data_dir() == tmp_path / "d"
    monkeypatch.delenv("MARKTUNE_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_data_dir() == tmp_path / "cache" / "marktune"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_dir() == tmp_path / "home" / ".cache" / "marktune"


# ---------------------------------------------------------------------------------------
# Missing data
# ---------------------------------------------------------------------------------------
def test_missing_cifar100(tmp_path):
    with pytest.raises(DatasetMissingError) as info:
        load_benchmark("cifar100", data_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "cifar-100-python") in message and "--download" in message
    assert "CIFAR-100 not found" in message
    assert isinstance(info.value, FileNotFoundError)


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


def test_missing_fmnist(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    with pytest.raises(DatasetMissingError) as info:
        load_benchmark("fmnist", data_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and str(tmp_path / "no-debian") in message
    assert "apt-get install dataset-fashion-mnist" in message and "--download" in message


def test_missing_data_env_default(tmp_path, monkeypatch):
    monkeypatch.setenv("MARKTUNE_DATA", str(tmp_path / "env"))
    with pytest.raises(DatasetMissingError, match=str(tmp_path / "env")):
        load_benchmark("cifar100")


def test_check_dataset_looks_without_loading(cifar_dir, tmp_path, monkeypatch):
    """The cheap check a search runs before Ray: same places and message as the loaders."""
    root, _ = cifar_dir
    check_dataset("cifar100", data_dir=root)  # present: passes
    with pytest.raises(DatasetMissingError, match="CIFAR-100 not found") as info:
        check_dataset("cifar100", data_dir=tmp_path)
    assert str(tmp_path / "cifar-100-python") in str(info.value)
    check_dataset("cifar100", data_dir=tmp_path, download=True)  # the run will fetch it
    with pytest.raises(DatasetMissingError, match="train.pkl"):
        check_dataset("miniimagenet", data_dir=tmp_path, download=True)  # nothing to fetch it from
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    with pytest.raises(DatasetMissingError, match="apt-get install dataset-fashion-mnist"):
        check_dataset("fmnist", data_dir=tmp_path)
    check_dataset("digits")
    check_dataset("synthetic")
    with pytest.raises(ValueError, match="unknown benchmark"):
        check_dataset("mnist")


# ---------------------------------------------------------------------------------------
# ensure_dataset: the file lock
# ---------------------------------------------------------------------------------------
def _slow_fetch_worker(directory: str, barrier) -> None:
    """Runs in a spawned process: fetch a fake data set that takes a second to write."""
    folder = Path(directory)

    def fetch() -> None:
        with open(folder / "fetch_log", "a") as f:
            f.write(f"{os.getpid()}\n")
        (folder / "part1").write_text("half")
        time.sleep(1.0)
        (folder / "done").write_text("whole")

    barrier.wait()  # both processes reach ensure_dataset together
    ensure_dataset(folder, "fake", is_complete=lambda: (folder / "done").is_file(), fetch=fetch)
    assert (folder / "done").read_text() == "whole"


def test_two_processes_fetch_once(tmp_path):
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    folder = tmp_path / "shared"
    procs = [ctx.Process(target=_slow_fetch_worker, args=(str(folder), barrier)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert len((folder / "fetch_log").read_text().split()) == 1
    assert (folder / "done").read_text() == "whole"


def test_half_written_data_set_is_redone(tmp_path):
    (tmp_path / "part1").write_text("left by a killed run")
    calls = []

    def fetch() -> None:
        calls.append(1)
        # The first fetch is torn as well; the second one completes.
        if len(calls) == 2:
            (tmp_path / "done").write_text("whole")

    ensure_dataset(tmp_path, "fake", is_complete=lambda: (tmp_path / "done").is_file(), fetch=fetch)
    assert len(calls) == 2
    ensure_dataset(tmp_path, "fake", is_complete=lambda: (tmp_path / "done").is_file(), fetch=fetch)
    assert len(calls) == 2  # complete: not fetched again


def test_fetch_that_never_completes_is_an_error(tmp_path):
    calls = []
    with pytest.raises(DatasetMissingError, match="fetched 2 times"):
        ensure_dataset(tmp_path, "fake", is_complete=lambda: False, fetch=lambda: calls.append(1))
    assert len(calls) == 2
