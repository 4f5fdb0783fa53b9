"""Phase 4's inner optimiser on the device (issue 9) is the released code's SGD + ReduceLROnPlateau,
without a host sync per step."""
import math

import pytest
import torch

from conftest import tiny_config
from marktune.data import load_benchmark_for
import marktune.mark.phase4 as phase4
from marktune.mark.inner_optim import INNER_PLATEAU, DevicePlateau, sgd_step_
from marktune.mark.learner import MarkLearner
from tests.oracles import released_adapt_mini_task

CPU = torch.device("cpu")


def make(cfg, **kw):
    return MarkLearner(cfg, load_benchmark_for(cfg), verbose=0, **kw)


def torch_plateau(lr, **kw):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **{**INNER_PLATEAU, **kw}), opt


def loss_sequences():
    """Losses that walk, stall, sit exactly on the threshold, and go NaN or infinite."""
    gen = torch.Generator().manual_seed(0)
    walk = (1.0 + 0.01 * torch.randn(300, generator=gen).cumsum(0)).abs().tolist()
    # 1000 * (1 - 1e-3) is 999.0 exactly, in float32 too: a loss on the threshold is not better
    exact = [1000.0] + [999.0] * 6 + [998.0]  # strictly: six bad steps, one cut
    stall = [0.5] * 40
    broken = [2.0, 1.0, math.nan, 0.9, math.inf, *[math.nan] * 7, 0.1]
    return [walk, exact + stall, broken, walk[::-1] + stall]


@pytest.mark.parametrize("lr", [0.1, 3e-3, 1e-8])  # 1e-8: a cut would be below eps, so torch skips it
def test_device_plateau_follows_reduce_lr_on_plateau_step_for_step(lr):
    sequences = loss_sequences()
    n = min(len(s) for s in sequences)
    together = DevicePlateau(lr=lr, shape=(len(sequences),), device=CPU)  # one rule per copy, as meta_vmap
    references = [torch_plateau(lr) for _ in sequences]
    alone = [DevicePlateau(lr=lr, shape=(), device=CPU) for _ in sequences]
    cuts = 0
    for step in range(n):
        losses = [s[step] for s in sequences]
        together.step(torch.tensor(losses, dtype=torch.float32))
        for (plateau, opt), single, value in zip(references, alone, losses):
            before = opt.param_groups[0]["lr"]
            plateau.step(torch.tensor(value, dtype=torch.float32).item())
            single.step(torch.tensor(value, dtype=torch.float32))
            cuts += opt.param_groups[0]["lr"] != before
        expected = [opt.param_groups[0]["lr"] for _, opt in references]
        # the rates are lr * 0.5**k in both, computed in float64: equal, not close
        assert together.lr().tolist() == expected, f"step {step}"
        assert [single.lr().item() for single in alone] == expected, f"step {step}"
    assert (cuts > 0) == (lr > 1e-7)  # the sequences do trigger cuts, except under eps


def test_device_plateau_refuses_a_factor_that_would_round():
    with pytest.raises(ValueError, match="power of two"):
        DevicePlateau(lr=0.1, shape=(), device=CPU, factor=0.3)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_step_is_torch_sgd_bit_for_bit(momentum):
    gen = torch.Generator().manual_seed(1)
    shapes = [(8, 4, 3, 3), (8,), (5, 16)]
    ours = [torch.randn(s, generator=gen) for s in shapes]
    theirs = [p.clone().requires_grad_(True) for p in ours]
    decays = [0.1, 0.1, 5e-4]
    opt = torch.optim.SGD([{"params": theirs[:2], "weight_decay": 0.1},
                           {"params": theirs[2:], "weight_decay": 5e-4}], lr=0.07, momentum=momentum)
    buffers = [None] * len(ours)
    for cuts in [0, 0, 1, 1, 3, 3, 3]:
        grads = [torch.randn(s, generator=gen) for s in shapes]
        for group in opt.param_groups:
            group["lr"] = 0.07 * 0.5 ** cuts  # what ReduceLROnPlateau writes
        for p, g in zip(theirs, grads):
            p.grad = g.clone()
        opt.step()
        sgd_step_(ours, grads, buffers, lr=0.07, scale=torch.tensor(0.5 ** cuts), momentum=momentum,
                  weight_decays=decays)
        # lr * (d * 2**-k) scales d exactly and rounds once, as p.add_(d, alpha=-lr * 2**-k): equal
        for a, b in zip(ours, theirs):
            assert torch.equal(a, b.detach())


# lr_meta 0.5 with momentum: the inner loss oscillates, so the plateau rule does cut
OSCILLATING = dict(num_tasks=2, inner_steps=15, lr_meta=0.5, momentum=0.9, kb_dropout=0.0)


@pytest.mark.parametrize("meta_vmap", [False, True])
def test_inner_loop_gives_the_released_codes_results(monkeypatch, meta_vmap):
    ours = make(tiny_config(meta_vmap=meta_vmap, **OSCILLATING), record_meta=True)
    ours.run()
    lrs_seen = []
    released = make(tiny_config(**OSCILLATING), record_meta=True)

    def released_mini_task(inner, **mini_task):
        delta, acc, rates = released_adapt_mini_task(inner, **mini_task)
        lrs_seen.extend(rates)
        return delta, acc
    monkeypatch.setattr(phase4, "adapt_mini_task", released_mini_task)
    released.run()
    assert len(set(lrs_seen)) > 1, "the oracle never cut the rate: the test would not see the plateau rule"
    assert ours.matrices() == released.matrices()
    for a, b in zip(ours.meta_records, released.meta_records):
        assert a.accuracies == b.accuracies
        for x, y in zip(a.theta_after, b.theta_after):
            # the loop runs the same kernels on the same inputs (the rate scaled exactly), and is
            # equal here; vmap's batched kernels sum in another order, a few ulps (3.7e-8 measured)
            torch.testing.assert_close(x, y)


class HostReads:
    """Counts every way a tensor's value reaches Python (each one a device sync on a GPU)."""

    NAMES = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy")

    def __init__(self, monkeypatch):
        self.count = 0
        for name in self.NAMES:
            real = getattr(torch.Tensor, name)

            def counted(tensor, *args, _real=real, **kwargs):
                self.count += 1
                return _real(tensor, *args, **kwargs)
            monkeypatch.setattr(torch.Tensor, name, counted)


@pytest.mark.parametrize("meta_vmap", [False, True])
def test_inner_loop_reads_nothing_back_per_step(monkeypatch, meta_vmap):
    # the reads of one group of mini-tasks must not grow with the number of inner steps
    reads = {}
    for steps in (2, 12):
        learner = make(tiny_config(num_tasks=1, inner_steps=steps, meta_vmap=meta_vmap))
        learner.train_next_task()
        x, y = learner.benchmark.tasks[0].train.x, learner.benchmark.tasks[0].train.y
        chosen = [torch.arange(32), torch.arange(32, 64)]
        masks = [torch.ones(len(x), c, 1, 1) for c in learner.kb.channels]
        counter = HostReads(monkeypatch)
        inner = learner.inner_loop()
        if meta_vmap:
            phase4.adapt_mini_tasks_vmap(inner, t=0, x=x, y=y, chosen=chosen,
                                         masks_for=lambda i: [m[i] for m in masks], num_classes=2)
        else:
            phase4.adapt_mini_task(inner, t=0, xb=learner.images(x[chosen[0]]), yb=y[chosen[0]],
                                   masks=[m[chosen[0]] for m in masks], num_classes=2)
        reads[steps] = counter.count
        monkeypatch.undo()
    assert reads[2] == reads[12] > 0, reads


def test_module_example_runs():
    import doctest

    import marktune.mark.inner_optim
    assert doctest.testmod(marktune.mark.inner_optim).failed == 0
