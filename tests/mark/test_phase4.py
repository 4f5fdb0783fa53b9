"""Phase 4's rules (marktune.mark.phase4): what each does to the KB, from the outside of a learner."""
import math

import pytest
import torch

import marktune.mark.phase4 as phase4
from conftest import tiny_config
from marktune.mark.training import NonFiniteLossError
from tests.mark.learners import assert_changed, assert_same, make, snapshot


def test_meta_update_none_never_changes_kb_after_task_0_and_keeps_phase_5():
    learner = make(tiny_config(meta_update="none"))
    learner.train_next_task()
    kb = snapshot(learner.kb)
    learner.run()
    assert_same(kb, snapshot(learner.kb))
    # phase 5 still runs: with no phase 3, M_t and C_t move only there
    only_5 = make(tiny_config(num_tasks=2, meta_update="none", mask_epochs=0, mask_init="identity"))
    neither = make(tiny_config(num_tasks=2, meta_update="none", mask_epochs=0, consolidation_epochs=0,
                               mask_init="identity"))
    only_5.run()
    neither.run()
    for a, b in ((only_5.heads[1], neither.heads[1]), (only_5.mask_generators[1], neither.mask_generators[1])):
        assert_changed(snapshot(a), snapshot(b))


class _SGDSpy:
    """Records the settings of every torch.optim.SGD that holds one of ``watched``'s parameters."""

    def __init__(self, monkeypatch, watched):
        self.watched, self.made = watched, []
        real = torch.optim.SGD
        spy = self

        class Recording(real):
            def __init__(self, params, *args, **kwargs):
                super().__init__(params, *args, **kwargs)
                ids = {id(p) for p in spy.watched.parameters()}
                for group in self.param_groups:
                    if any(id(p) in ids for p in group["params"]):
                        spy.made.append({k: group[k] for k in ("lr", "momentum", "weight_decay")})
        monkeypatch.setattr(torch.optim, "SGD", Recording)


def test_finetune_changes_the_kb_on_every_task_without_momentum(monkeypatch):
    cfg = tiny_config(meta_update="finetune", mask_init="identity")
    learner = make(cfg)
    spy = _SGDSpy(monkeypatch, learner.kb)
    finetune = {"lr": 0.1 * cfg.lr_meta, "momentum": 0.0, "weight_decay": cfg.meta_weight_decay}
    learner.train_next_task()
    # task 0: the warm-up (momentum 0.9), then fine-tuned like every task
    assert spy.made == [{"lr": cfg.lr_task, "momentum": cfg.momentum, "weight_decay": cfg.weight_decay}, finetune]
    for t in range(1, cfg.tasks):
        spy.made.clear()
        kb = snapshot(learner.kb)
        learner.train_next_task()
        assert_changed(kb, snapshot(learner.kb))
        assert spy.made == [finetune]
        assert "consolidation" in learner.seconds[t]


def test_phase_four_stops_when_the_kb_goes_non_finite(monkeypatch):
    learner = make(tiny_config(num_tasks=1))
    real_move = type(learner.meta_rule).move

    def poisoned(self, kb_params, direction, **settings):
        real_move(self, kb_params, direction, **settings)
        kb_params[-1].data.view(-1)[0] = math.inf  # one weight of the last block
    monkeypatch.setattr(type(learner.meta_rule), "move", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"the KB became NaN/inf in phase meta of task 0 \(step 1\)"):
        learner.train_next_task()


def _weighted_delta(record):
    total = sum(record.accuracies)
    assert total > 0
    return [sum(a / total * d[i] for a, d in zip(record.accuracies, record.deltas))
            for i in range(len(record.theta_before))]


def test_reptile_moves_kb_towards_accuracy_weighted_adapted_copies():
    cfg = tiny_config(num_tasks=2, meta_epochs=1, meta_step=0.5)
    learner = make(cfg, record_meta=True)
    learner.run()
    record = learner.meta_records[-1]
    assert len(record.deltas) == cfg.mini_tasks
    # every mini-task adapted its copy (a delta that is not zero) and the weights are accuracies
    assert all(any(float(d.abs().sum()) > 0 for d in delta) for delta in record.deltas)
    assert all(0.0 <= a <= 1.0 for a in record.accuracies) and sum(record.accuracies) > 0
    direction = _weighted_delta(record)
    for before, after, d in zip(record.theta_before, record.theta_after, direction):
        torch.testing.assert_close(after, before + cfg.meta_step * d)
    moved = sum(float(((a - b) * d).sum()) for a, b, d in
                zip(record.theta_after, record.theta_before, direction))
    assert moved > 0


def test_seed_rule_over_three_outer_steps_is_the_released_rule():
    # the released code: a NEW momentum-free SGD(lr=0.1*lr_meta, weight_decay=0.1) every outer
    # step, .grad = accuracy-weighted delta / K, one step(); so each step depends on that step
    # alone (a momentum carried from step 1 would show at steps 2 and 3)
    cfg = tiny_config(num_tasks=2, meta_epochs=3, meta_update="seed")
    learner = make(cfg, record_meta=True)
    learner.run()
    records = learner.meta_records[-3:]
    assert len(learner.meta_records) == 6
    lr = 0.1 * cfg.lr_meta
    for step, record in enumerate(records):
        if step:  # the steps follow one another
            for a, b in zip(records[step - 1].theta_after, record.theta_before):
                assert torch.equal(a, b)
        K = len(record.deltas)
        assert K == cfg.mini_tasks
        for before, after, d in zip(record.theta_before, record.theta_after, _weighted_delta(record)):
            expected = before - lr * (d / K + cfg.meta_weight_decay * before)
            # float32 round-off of a few operations on values of order 1 (any CPU, CUDA)
            torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rule,sign", [("reptile", 1), ("seed", -1)])
def test_rules_move_in_opposite_directions(rule, sign):
    # no weight decay on the outer step, so the direction is the delta's alone
    cfg = tiny_config(num_tasks=2, meta_epochs=1, meta_update=rule, meta_weight_decay=0.0)
    learner = make(cfg, record_meta=True)
    learner.run()
    record = learner.meta_records[-1]
    moved = sum(float(((a - b) * d).sum()) for a, b, d in
                zip(record.theta_after, record.theta_before, _weighted_delta(record)))
    assert sign * moved > 0


def test_module_examples_run():
    import doctest

    assert doctest.testmod(phase4).failed == 0
