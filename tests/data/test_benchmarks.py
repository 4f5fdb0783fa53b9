"""marktune.data.benchmarks: load_benchmark's arguments, load_benchmark_for, check_dataset."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from marktune.data import DatasetMissingError, check_dataset, fmnist, load_benchmark, load_benchmark_for
from tests.data.layouts import cifar_dir


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


def _digits(**kw):
    from marktune.mark.config import MarkConfig

    return MarkConfig(benchmark="digits", kb_width=8, latent_dim=16, fe_channels=8, **kw)


def _same_tasks(a, b) -> bool:
    return all(ta.classes == tb.classes and all(torch.equal(getattr(ta, s).x, getattr(tb, s).x)
                                                for s in ("train", "val", "test"))
               for ta, tb in zip(a.tasks, b.tasks))


def test_data_seed_sets_class_order_and_validation_split_and_nothing_else():
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


def test_load_benchmark_for_reads_config_fields():
    config = SimpleNamespace(benchmark="synthetic", num_tasks=None, split_seed=3, class_order=None, val_fraction=0.25,
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
    monkeypatch.setattr(fmnist, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    with pytest.raises(DatasetMissingError, match="apt-get install dataset-fashion-mnist"):
        check_dataset("fmnist", data_dir=tmp_path)
    check_dataset("digits")
    check_dataset("synthetic")
    with pytest.raises(ValueError, match="unknown benchmark"):
        check_dataset("mnist")
