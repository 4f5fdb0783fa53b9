"""The fast path gives the reference path's results (issue 5): speed never silently changes them.

Timing lives in ``bench/sequence.py``; these tests assert behaviour only.
"""
import pytest
import torch

import copy

import marktune.mark.phase4 as phase4
from conftest import tiny_config
from marktune.data import load_benchmark_for
from marktune.mark.compute import FastPath
from marktune.mark.hardware import cpu_has_native_bf16
from marktune.mark.learner import MarkLearner
from marktune.mark.model import KnowledgeBase
from tests.oracles import ReferencePath


def make(cfg, **kw):
    return MarkLearner(cfg, load_benchmark_for(cfg), verbose=0, **kw)


def assert_modules_close(a, b):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), msg=name)


BF16_U = 2.0 ** -8  # bfloat16's unit round-off (8 significand bits): the relative error of one rounding


@pytest.mark.parametrize("extra", [
    {}, pytest.param({"precision": "bf16"}, marks=pytest.mark.skipif(
        not cpu_has_native_bf16(), reason="this CPU has no native bfloat16 (avx512_bf16/amx_bf16): "
        "marktune refuses precision=bf16 here, so there is no bf16 path to test"))], ids=["fp32", "bf16"])
def test_fast_path_equals_reference_path(extra):
    # the reference: autograd everywhere, no caching, ReLU before max-pool, deep copies in
    # phase 4, contiguous tensors; the fast path must agree up to float round-off
    fast = make(tiny_config(**extra))
    reference = make(tiny_config(**extra), compute=ReferencePath)
    assert isinstance(fast.compute, FastPath)
    assert isinstance(reference.compute, ReferencePath)
    kb_start = [p.detach().clone() for p in reference.kb.parameters()]
    fast.run()
    reference.run()
    if extra:
        # bf16: both paths round every product to 8 bits, in a different order. What bf16
        # promises is the same model up to that: the KB's change over the run, which is a sum
        # of gradients each carrying a few units of round-off, agrees within 8u of its size
        # (measured 1.2u on an AMD EPYC with avx512_bf16)...
        for p, q, q0 in zip(fast.kb.parameters(), reference.kb.parameters(), kb_start):
            change = (q.detach() - q0).norm()
            assert (p.detach() - q.detach()).norm() <= 8 * BF16_U * change
        # ...and the same predictions, but for images whose top two logits lie within that
        # round-off: at most one validation image (1/24) or two test images (2/52) per entry
        for fast_rows, ref_rows in zip(fast.matrices(), reference.matrices()):
            for a, b in zip(fast_rows, ref_rows):
                assert a == pytest.approx(b, abs=0.05)
        return
    # fp32 (u = 6e-8): the paths differ only in summation order (channels-last, pooling before
    # ReLU, masks computed in one batch); measured <= 4e-7 of each tensor's change after the whole
    # run, so assert_close's float32 default (rtol 1.3e-6, atol 1e-5) has ample margin, and an
    # image's prediction flips only on an exact tie, so the matrices are equal
    assert fast.matrices() == reference.matrices()
    for a, b in [(fast.kb, reference.kb), *zip(fast.mask_generators, reference.mask_generators),
                 *zip(fast.heads, reference.heads)]:
        assert_modules_close(a, b)


def test_channels_last_is_round_off_only():
    a = make(tiny_config(num_tasks=2, channels_last=True))
    b = make(tiny_config(num_tasks=2, channels_last=False))
    assert a.kb.convs[0].weight.is_contiguous(memory_format=torch.channels_last)
    a.run()
    b.run()
    assert a.matrices() == b.matrices()
    assert_modules_close(a.kb, b.kb)


def test_meta_vmap_equals_loop_without_dropout():
    # with dropout the two draw from different random streams; without it they must agree
    loop = make(tiny_config(num_tasks=2, kb_dropout=0.0), record_meta=True)
    vmapped = make(tiny_config(num_tasks=2, kb_dropout=0.0, meta_vmap=True), record_meta=True)
    loop.run()
    vmapped.run()
    assert len(loop.meta_records) == len(vmapped.meta_records) > 0
    for a, b in zip(loop.meta_records, vmapped.meta_records):
        assert a.accuracies == b.accuracies
        for da, db in zip(a.deltas, b.deltas):
            for x, y in zip(da, db):
                torch.testing.assert_close(x, y)
        for x, y in zip(a.theta_after, b.theta_after):
            torch.testing.assert_close(x, y)
    assert loop.matrices() == vmapped.matrices()
    assert_modules_close(loop.kb, vmapped.kb)


def test_meta_vmap_handles_uneven_batches_and_momentum():
    # 100 training images in batches of 32: the fourth mini-task gets the short last batch
    cfg = dict(num_tasks=2, kb_dropout=0.0, synthetic_images_per_class=60, mini_tasks=4, inner_steps=4,
               momentum=0.5)
    loop = make(tiny_config(**cfg), record_meta=True)
    vmapped = make(tiny_config(meta_vmap=True, **cfg), record_meta=True)
    loop.run()
    vmapped.run()
    for x, y in zip(loop.meta_records[-1].theta_after, vmapped.meta_records[-1].theta_after):
        torch.testing.assert_close(x, y)


def _identical_heads(monkeypatch):
    real = phase4.TaskHead

    def same_init(latent_dim, num_classes):
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return real(latent_dim, num_classes)
    monkeypatch.setattr(phase4, "TaskHead", same_init)


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_meta_vmap_copies_draw_their_own_dropout(monkeypatch, dropout):
    # two copies, same batch, same head: they end equal exactly when there is no dropout
    learner = make(tiny_config(num_tasks=1, kb_dropout=dropout, meta_vmap=True))
    learner.train_next_task()
    _identical_heads(monkeypatch)
    task = learner.benchmark.tasks[0]
    x, y = task.train.x, task.train.y
    idx = torch.arange(32)
    masks = [torch.ones(len(x), c, 1, 1) for c in learner.kb.channels]
    (d0, _), (d1, _) = phase4.adapt_mini_tasks_vmap(learner.inner_loop(), t=0, x=x, y=y, chosen=[idx, idx],
                                                    masks_for=lambda i: [m[i] for m in masks], num_classes=2)
    same = all(torch.equal(a, b) for a, b in zip(d0, d1))
    assert same == (dropout == 0.0)


def test_evaluation_reuses_frozen_masks_and_matches_uncached_accuracy():
    learner = make(tiny_config())
    learner.train_next_task()
    # task 0's F_0 is frozen: later evaluations must not run it again
    calls = []
    learner.extractors[0].register_forward_hook(lambda *a: calls.append(1))
    learner.run()
    assert calls == []
    # ...and the cached masks give what evaluating from scratch gives, with the KB as it is now
    for u, task in enumerate(learner.benchmark.tasks[: learner.num_tasks]):
        assert learner.accuracy(u, task.test) == learner.test_matrix[-1][u]
        assert learner.accuracy(u, task.val) == learner.val_matrix[-1][u]


def test_phase_4_reuses_one_copy_of_the_kb(monkeypatch):
    learner = make(tiny_config(num_tasks=2))
    deep_copies = []
    real = copy.deepcopy
    monkeypatch.setattr(copy, "deepcopy", lambda obj, *a: (deep_copies.append(type(obj)), real(obj, *a))[1])
    learner.run()
    assert deep_copies == [KnowledgeBase]


def test_restored_learner_evaluates_like_the_uninterrupted_one(tmp_path):
    cfg = tiny_config()
    full = make(cfg)
    full.run()
    part = make(cfg)
    part.train_next_task()
    part.save(tmp_path / "s.pt")
    resumed = make(cfg)
    resumed.load(tmp_path / "s.pt")
    resumed.run()
    assert resumed.matrices() == full.matrices()


def test_flush_denormals_is_round_off_only():
    # FTZ/DAZ changes only values below 1.2e-38 (float32's smallest normal), far inside
    # assert_close's atol of 1e-5; each learner sets the process's mode when it is built,
    # so each runs before the next is built
    a = make(tiny_config(num_tasks=2, flush_denormals=True))
    a.run()
    b = make(tiny_config(num_tasks=2, flush_denormals=False))
    b.run()
    assert a.matrices() == b.matrices()
    assert_modules_close(a.kb, b.kb)
