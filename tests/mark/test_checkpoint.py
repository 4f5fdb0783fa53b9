"""The learner's saved state (marktune.mark.checkpoint): restored, a run continues as if never stopped."""
import pytest

import marktune.mark.checkpoint as checkpoint
from conftest import tiny_config
from tests.mark.learners import assert_same, make, snapshot


def test_restore_after_task_then_continue_equals_uninterrupted(tmp_path):
    cfg = tiny_config(num_tasks=4)
    full = make(cfg)
    full.run()
    first = make(cfg)
    first.train_next_task()
    first.train_next_task()
    first.save(tmp_path / "state.pt")
    resumed = make(cfg)
    resumed.load(tmp_path / "state.pt")
    assert resumed.tasks_done == 2
    resumed.run()
    assert resumed.matrices() == full.matrices()
    assert_same(snapshot(resumed.kb), snapshot(full.kb))


def test_restore_refuses_another_config(tmp_path):
    learner = make(tiny_config())
    learner.train_next_task()
    learner.save(tmp_path / "s.pt")
    other = make(tiny_config(lr_meta=0.5))
    with pytest.raises(ValueError, match="lr_meta"):
        other.load(tmp_path / "s.pt")


def test_module_example_runs():
    import doctest

    assert doctest.testmod(checkpoint).failed == 0
