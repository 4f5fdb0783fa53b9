"""Training FLOPs (marktune.mark.flops): a count of the settings and data sizes alone."""
import contextlib

import pytest
import torch

import marktune.mark.flops as flops_module
from conftest import tiny_config
from marktune.data import load_benchmark_for
from marktune.mark.learner import MarkLearner


def small(**overrides):  # two tasks: every phase runs, task 1 reuses task 0's counts
    return tiny_config(num_tasks=2, **overrides)


def run(cfg, *, threads=1, tasks=None):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        learner = MarkLearner(cfg, load_benchmark_for(cfg), verbose=0)
        reports = [learner.train_next_task() for _ in range(tasks or cfg.tasks)]
    finally:
        torch.set_num_threads(before)
    return learner, reports


@pytest.fixture(scope="module")
def counted():
    return run(small(), threads=1)


def test_the_count_depends_on_the_settings_not_on_threads_or_the_phase_4_path(counted):
    one, reports = counted
    two, _ = run(small(), threads=2)
    batched, _ = run(small(meta_vmap=True))  # phase 4 as CUDA runs it: the mini-tasks stacked
    assert one.flops.total > 0 and one.flops.total == two.flops.total == batched.flops.total
    # reported after every task, growing
    counts = [r.train_flops for r in reports]
    assert counts == sorted(counts) and counts[0] > 0 and counts[-1] == one.flops.total
    # more of the same work costs more: another epoch of the mask phase
    more, _ = run(small(mask_epochs=small().phase_epochs("mask") + 1))
    assert more.flops.total > one.flops.total


def test_counting_changes_no_result(counted, monkeypatch):
    counted, _ = counted

    class NotCounting(flops_module.TrainingFlops):
        @contextlib.contextmanager
        def step(self, kind, *, samples):
            yield

    monkeypatch.setattr("marktune.mark.learner.TrainingFlops", NotCounting)
    plain, _ = run(small())
    assert plain.flops.total == 0
    assert counted.matrices() == plain.matrices()
    for p, q in zip(counted.kb.parameters(), plain.kb.parameters()):
        assert torch.equal(p, q)


def test_a_restored_learner_continues_the_count(counted, tmp_path):
    cfg = small()
    whole, _ = counted
    first, _ = run(cfg, tasks=1)
    first.save(tmp_path / "state.pt")
    resumed = MarkLearner(cfg, load_benchmark_for(cfg), verbose=0)
    resumed.load(tmp_path / "state.pt")
    assert resumed.flops.total == first.flops.total and resumed.flops.known
    resumed.run()
    assert resumed.flops.total == whole.flops.total


def test_a_state_saved_before_counting_gives_an_unknown_count(tmp_path):
    cfg = small()
    first, _ = run(cfg, tasks=1)
    state = first.state_dict()
    for d in state["diagnostics"]:
        del d["train_flops"]
    resumed = MarkLearner(cfg, load_benchmark_for(cfg), verbose=0)
    resumed.load_state_dict(state)
    report = resumed.train_next_task()
    assert not resumed.flops.known and report.train_flops != report.train_flops  # nan: not a partial count


def test_the_free_settings_change_no_count_and_a_counted_one_does(counted):
    from marktune.mark.flops import COUNT_FREE, count_key

    one, _ = counted
    free = dict(lr_task=0.03, lr_mask=0.02, lr_meta=0.05, meta_step=0.5, weight_decay=0.001, kb_dropout=0.1,
                mask_activation="sigmoid", kb_grad_clip=1.0, grad_clip=2.0, momentum=0.5)
    assert set(free) <= COUNT_FREE
    other, _ = run(small(**free))
    assert other.flops.total == one.flops.total
    assert count_key({**free, "kb_width": 8}) == count_key({"kb_width": 8})
    wider, _ = run(small(inner_steps=small().inner_steps + 1))
    assert wider.flops.total > one.flops.total and "inner_steps" not in COUNT_FREE
