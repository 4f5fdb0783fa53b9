"""Test oracles: the plain reading of the spec and the released code's inner loop.

Neither is part of the product and no config or search space can select them. Tests (and
bench/, with the repository root on ``sys.path``) hold what marktune runs to them:

* :class:`ReferencePath`, a compute path for ``MarkLearner(..., compute=ReferencePath)``:
  tests/mark/test_fast_path.py holds :class:`marktune.mark.compute.FastPath` to it;
* :func:`released_inner_loop` and :func:`released_adapt_mini_task`, the released code's
  SGD + ``ReduceLROnPlateau`` inner loop: tests/mark/test_inner_optim.py holds
  :mod:`marktune.mark.inner_optim` to it, bench/gpu.py times against it.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from marktune.data.base import Split
from marktune.mark.compute import LearnerView
from marktune.mark.inner_optim import INNER_PLATEAU
from marktune.mark.model import KnowledgeBase, TaskHead
from marktune.mark.phase4 import InnerLoop
from marktune.mark.training import TaskData, live_features

Masks = list[torch.Tensor]


class ReferencePath:
    """TEST ORACLE ONLY: the plain reading of MARK.md, kept so that tests/mark/test_fast_path.py
    can hold the fast path to it. Autograd everywhere, nothing cached (F_t and M_t run again
    for every batch), a deep copy of the KB per mini-task, ReLU before max-pool, contiguous
    tensors. Never the faster choice."""

    pool_first = False
    memory_format = torch.contiguous_format

    def __init__(self, learner: LearnerView) -> None:
        self.learner = learner

    def no_autograd(self):
        return contextlib.nullcontext()

    def feature_source(self, task: TaskData) -> tuple[Callable[[torch.Tensor], torch.Tensor], bool]:
        return live_features(task, self.learner.runtime, train_mode=False), False

    def fixed_masks(self, task: TaskData) -> Callable[[torch.Tensor], Masks]:
        return lambda idx: [m.detach() for m in self.learner.task_masks(task, idx)]

    @contextlib.contextmanager
    def kb_frozen(self) -> Iterator[None]:
        try:
            yield  # the KB's gradients are computed and dropped: only M_t and C_t are stepped
        finally:
            for p in self.learner.kb.parameters():
                p.grad = None

    def kb_copy(self) -> KnowledgeBase:
        return copy.deepcopy(self.learner.kb)

    def split_masks(self, u: int, name: str, split: Split) -> Masks:
        return self.learner.split_masks(u, split)

    def accuracy(self, u: int, name: str, split: Split) -> float:
        return self.learner.accuracy(u, split)

    def forget_cache(self) -> None:
        pass


def released_inner_loop(kb_copy: torch.nn.Module, head: torch.nn.Module, xb: torch.Tensor, yb: torch.Tensor,
                        masks: list[torch.Tensor], *, lr: float, momentum: float, kb_decay: float,
                        head_decay: float, steps: int) -> list[float]:
    """The released code's inner loop, kept as the oracle that ``DevicePlateau`` and ``sgd_step_``
    are checked against (tests/mark/test_inner_optim.py) and timed against (bench/gpu.py): SGD and
    ``ReduceLROnPlateau`` stepped with ``loss.item()``, one host sync a step. Returns the
    learning rate after each step."""
    opt = torch.optim.SGD([{"params": list(kb_copy.parameters()), "weight_decay": kb_decay},
                           {"params": list(head.parameters())}], lr=lr, momentum=momentum, weight_decay=head_decay)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **INNER_PLATEAU)
    rates = []
    for _ in range(steps):
        loss = F.cross_entropy(head(kb_copy(xb, masks)).float(), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        plateau.step(loss.item())
        rates.append(opt.param_groups[0]["lr"])
    return rates


def released_adapt_mini_task(inner: InnerLoop, *, t: int, xb: torch.Tensor, yb: torch.Tensor, masks: list[torch.Tensor],
                             num_classes: int) -> tuple[list[torch.Tensor], float, list[float]]:
    """:func:`marktune.mark.phase4.adapt_mini_task` (fp32) with :func:`released_inner_loop` in place
    of marktune's: ``(delta_k, a_k, learning rate after each step)``. The oracle's whole mini-task."""
    s = inner.settings
    kb_copy = inner.kb_copy()
    kb_copy.requires_grad_(True)
    head = TaskHead(s.latent_dim, num_classes).to(inner.device)
    kb_copy.train()
    rates = released_inner_loop(kb_copy, head, xb, yb, masks, lr=s.lr_meta, momentum=s.momentum,
                                kb_decay=s.inner_kb_decay, head_decay=s.meta_weight_decay, steps=s.inner_steps)
    with torch.no_grad():
        acc = (head(kb_copy(xb, masks)).argmax(1) == yb).float().mean().item()
    delta = [pc.detach() - p.detach() for pc, p in zip(kb_copy.parameters(), inner.kb.parameters())]
    return delta, acc, rates
