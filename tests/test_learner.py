"""The learner's contract: what each phase may change, phase 4's rule, determinism, resume."""
import math
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from marktune.config import MarkConfig
from marktune.data import load_benchmark_for
from marktune.learner import MarkLearner, NonFiniteLossError


REPO = Path(__file__).resolve().parent.parent


def make(cfg, **kw):
    return MarkLearner(cfg, load_benchmark_for(cfg), verbose=0, **kw)


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def assert_changed(a, b):
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_finished_task_modules_stay_bit_identical():
    learner = make(tiny_config())
    learner.train_next_task()
    frozen = [snapshot(m[0]) for m in (learner.extractors, learner.mask_generators, learner.heads)]
    kb_after_0 = snapshot(learner.kb)
    learner.train_next_task()
    learner.train_next_task()
    for before, module in zip(frozen, (learner.extractors[0], learner.mask_generators[0], learner.heads[0])):
        assert_same(before, snapshot(module))
    # ...while the KB did move (phase 4 of tasks 1 and 2), which is what task 0 shares
    assert_changed(kb_after_0, snapshot(learner.kb))


def test_kb_frozen_outside_phases_2_and_4():
    # with zero meta steps, phases 1, 3, 4 and 5 of task 1 must leave the KB untouched
    learner = make(tiny_config(meta_epochs=0))
    learner.train_next_task()
    kb = snapshot(learner.kb)
    learner.train_next_task()
    assert "consolidation" in learner.seconds[-1]
    assert_same(kb, snapshot(learner.kb))


def test_meta_update_none_never_changes_kb_after_task_0():
    learner = make(tiny_config(meta_update="none"))
    learner.train_next_task()
    kb = snapshot(learner.kb)
    learner.run()
    assert_same(kb, snapshot(learner.kb))
    assert "meta" not in learner.seconds[-1]


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
    assert len(record.deltas) == cfg.mini_tasks and len(set(record.accuracies)) >= 1
    direction = _weighted_delta(record)
    for before, after, d in zip(record.theta_before, record.theta_after, direction):
        torch.testing.assert_close(after, before + cfg.meta_step * d)
    moved = sum(float(((a - b) * d).sum()) for a, b, d in
                zip(record.theta_after, record.theta_before, direction))
    assert moved > 0


def test_seed_rule_is_sgd_on_the_weighted_delta():
    cfg = tiny_config(num_tasks=2, meta_epochs=1, meta_update="seed")
    learner = make(cfg, record_meta=True)
    learner.run()
    record = learner.meta_records[-1]
    direction = _weighted_delta(record)
    lr = 0.1 * cfg.lr_meta
    for before, after, d in zip(record.theta_before, record.theta_after, direction):
        # first SGD step (momentum buffer = gradient): p - lr * (g + wd * p), g = weighted delta / K
        expected = before - lr * (d / cfg.mini_tasks + cfg.meta_weight_decay * before)
        torch.testing.assert_close(after, expected)


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


def test_same_seed_same_matrices_other_seed_differs():
    a, b, c = make(tiny_config()), make(tiny_config()), make(tiny_config(seed=1))
    for learner in (a, b, c):
        learner.run()
    assert a.matrices() == b.matrices()
    assert_same(snapshot(a.kb), snapshot(b.kb))
    assert_same(snapshot(a.heads[-1]), snapshot(b.heads[-1]))
    # the synthetic tasks are easy enough that both seeds may score 1.0: compare weights
    assert_changed(snapshot(a.kb), snapshot(c.kb))


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


def test_matrices_and_report():
    learner = make(tiny_config())
    report = learner.run()
    val, test = learner.matrices()
    assert [len(r) for r in val] == [1, 2, 3] and [len(r) for r in test] == [1, 2, 3]
    assert report.done and report.test_row == test[-1]
    assert all(0.0 <= a <= 1.0 for row in val + test for a in row)
    assert report.mean_test_acc == pytest.approx(sum(test[-1]) / 3)
    # the synthetic tasks are easy: well above chance (0.5) after training
    assert min(test[-1]) > 0.7
    assert set(learner.seconds[0]) == {"feature", "kb", "mask", "meta", "consolidation", "eval"}
    assert "kb" not in learner.seconds[1]


def test_nan_loss_is_a_clear_error():
    learner = make(tiny_config(lr_task=1e30, grad_clip=1e30))
    with pytest.raises(NonFiniteLossError, match="phase .* of task 0.*lower"):
        learner.train_next_task()


def test_resnet_feature_extractor_learns_a_task_on_its_frozen_loaded_trunk(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(5)
    trunk = resnet18(weights=None)
    torch.save(trunk.state_dict(), tmp_path / "r18.pth")
    learner = make(tiny_config(num_tasks=1, feature_extractor="resnet18", resnet_weights=str(tmp_path / "r18.pth"),
                               epochs=1, meta_epochs=1))
    report = learner.run()
    # the synthetic classes are colour prototypes: even a random trunk's features separate them
    # (1.0 measured); chance is 0.5
    assert report.mean_test_acc >= 0.9, report.test_row
    # the trunk is the checkpoint's, untouched by training (BatchNorm statistics included)
    ours = learner.extractors[0].trunk.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in trunk.state_dict().items() if not k.startswith("fc."))


@pytest.mark.parametrize("clip,warned", [(None, True), (1.0, False)])
def test_a_kb_warm_up_that_blew_up_is_reported(clip, warned):
    """The digits trial whose KB warm-up blows up to finite, dead weights (no NaN): a warning."""
    cfg = MarkConfig.from_sources(path=REPO / "search_spaces" / "digits.yaml", overrides=[
        "seed=1000", "kb_depth=2", "kb_width=16", "mask_epochs=0", "meta_epochs=0",
        "consolidation_epochs=0", f"kb_grad_clip={'' if clip is None else clip}"])
    lines: list[str] = []
    MarkLearner(cfg, load_benchmark_for(cfg), verbose=0, log=lines.append).train_next_task()
    assert any("KB warm-up (task 1) ended at train acc" in line and "kb_grad_clip" in line
               for line in lines) == warned, lines
