import math

import pytest

from marktune.mark import metrics

# After task 0: 0.9; after task 1: 0.8, 0.7; after task 2: 0.6, 0.65, 0.95
R = [[0.9], [0.8, 0.7], [0.6, 0.65, 0.95]]


def test_mean_accuracy_per_task():
    assert metrics.mean_accuracy_per_task(R) == pytest.approx([0.9, 0.75, (0.6 + 0.65 + 0.95) / 3])


def test_acc_is_last_row_mean():
    assert metrics.average_accuracy(R) == pytest.approx(2.2 / 3)


def test_bwt_gem():
    # ((0.6 - 0.9) + (0.65 - 0.7)) / 2
    assert metrics.backward_transfer(R) == pytest.approx(-0.175)


def test_forgetting_max_based():
    # task 0: max(0.9, 0.8) - 0.6 = 0.3; task 1: 0.7 - 0.65 = 0.05
    assert metrics.forgetting(R) == pytest.approx(0.175)
    R2 = [[0.5], [0.9, 0.7], [0.6, 0.7, 0.9]]  # task 0 peaked after task 1
    assert metrics.forgetting(R2) == pytest.approx(((0.9 - 0.6) + 0.0) / 2)


def test_full_matrix_with_nan_upper_triangle_is_accepted():
    nan = math.nan
    full = [[0.9, nan, nan], [0.8, 0.7, nan], [0.6, 0.65, 0.95]]
    assert metrics.summary(full) == metrics.summary(R)


def test_single_task_has_no_transfer():
    assert metrics.backward_transfer([[0.8]]) == 0.0
    assert metrics.forgetting([[0.8]]) == 0.0
