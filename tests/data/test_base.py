"""marktune.data.base: the class split (the authors' order), the validation split, normalisation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from marktune.data import load_benchmark
from marktune.data.base import Source, split_into_tasks


def test_class_order_is_the_authors_for_seed_48():
    # numpy.random.seed(48); numpy.random.permutation(100), cut into 20 tasks of 5 (MARK.md)
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(100), 2)
    source = Source(rng.integers(0, 256, size=(200, 3, 4, 4), dtype=np.uint8), labels,
                          rng.integers(0, 256, size=(100, 3, 4, 4), dtype=np.uint8), np.arange(100))
    tasks = split_into_tasks(source, num_tasks=20, seed=48, val_fraction=0.5, max_train=None, max_test=None)
    expected = np.random.RandomState(48).permutation(100)
    assert [t.classes for t in tasks] == [expected[5 * t:5 * t + 5].tolist() for t in range(20)]


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
