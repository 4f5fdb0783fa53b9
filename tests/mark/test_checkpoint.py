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


class _Payload:
    """What a crafted checkpoint carries: unpickling it would call ``touch(path)``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def test_a_crafted_checkpoint_is_refused_and_its_payload_never_runs(tmp_path):
    import torch

    ran = tmp_path / "payload-ran"
    crafted = tmp_path / "checkpoint.pt"
    torch.save({"format": checkpoint.STATE_FORMAT, "config": _Payload(ran)}, crafted)
    learner = make(tiny_config())
    with pytest.raises(checkpoint.CheckpointError, match="not a checkpoint marktune wrote"):
        learner.load(crafted)
    assert not ran.exists()


@pytest.mark.parametrize("content", [b"", b"junk", b"not a torch file at all", b"\x80\x04K\x01."])
def test_a_damaged_or_foreign_file_is_refused_in_words(tmp_path, content):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(content)
    with pytest.raises(checkpoint.CheckpointError, match=str(path)):
        checkpoint.load(path)


def test_a_real_checkpoint_loads_with_weights_only(tmp_path):
    learner = make(tiny_config())
    learner.train_next_task()
    learner.save(tmp_path / "s.pt")
    state = checkpoint.load(tmp_path / "s.pt")
    assert state["format"] == checkpoint.STATE_FORMAT and state["tasks_done"] == 1
