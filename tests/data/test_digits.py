"""marktune.data.digits: scikit-learn's digits at 32 px, a fixed test split."""
from __future__ import annotations

from marktune.data import load_benchmark
from tests.data.layouts import check_task_shapes


def test_digits():
    bench = load_benchmark("digits", seed=3)
    assert bench.num_tasks == 5 and bench.image_size == 32
    total = 0
    for task in bench.tasks:
        check_task_shapes(task, size=32, classes=2)
        total += len(task.train) + len(task.val) + len(task.test)
        pool = len(task.train) + len(task.val)
        assert abs(len(task.test) - (pool + len(task.test)) / 3) <= 2  # 1/3 per class, +-rounding
        assert task.train.x.max() == 255  # 16 scaled to 255
    assert total == 1797
    # The test split is fixed: another seed changes the task order, not which images are test.
    other = load_benchmark("digits", seed=4)
    test_images = lambda b: sorted(img.tobytes() for t in b.tasks for img in t.test.x.numpy())
    assert test_images(bench) == test_images(other)
