"""How the learner computes what does not train: the fast path, the one the product runs.

A compute path decides what MARK's phases may cache or skip, never what they compute:
F_t's features and M_t's phase-4 masks are computed once per task (both are frozen then),
evaluation reuses each finished task's masks, nothing that is not trained gets gradients,
phase 4 refills one copy of the KB, each KB block pools before its ReLU (they commute),
conv tensors are channels-last (``channels_last``). The results are those of the plain
reading of the spec up to float round-off; that reading is a test oracle
(``tests/oracles.py``: ``ReferencePath``), injected with ``MarkLearner(..., compute=...)``,
and tests/mark/test_fast_path.py holds this path to it.

A compute path (:class:`ComputePath`) is a class built with the learner (:class:`LearnerView`,
the public part of it that a path may use).
"""
from __future__ import annotations

import contextlib
import copy
from typing import Callable, ContextManager, Iterator, Protocol

import torch
from torch import nn

from marktune.data.base import Split
from marktune.mark import evaluation
from marktune.mark.config import MarkConfig
from marktune.mark.model import KnowledgeBase
from marktune.mark.runtime import Runtime
from marktune.mark.training import TaskData

Masks = list[torch.Tensor]


class LearnerView(Protocol):
    """What a compute path may use of the learner."""

    config: MarkConfig
    kb: KnowledgeBase
    heads: nn.ModuleList
    runtime: Runtime

    def task_masks(self, task: TaskData, idx: torch.Tensor) -> Masks: ...

    def split_masks(self, u: int, split: Split) -> Masks: ...


class ComputePath(Protocol):
    """What the learner asks of a compute path (:class:`FastPath` is the product's)."""

    pool_first: bool  # each KB block max-pools before its ReLU
    memory_format: torch.memory_format

    def no_autograd(self) -> ContextManager: ...

    def feature_source(self, task: TaskData) -> tuple[Callable[[torch.Tensor], torch.Tensor], bool]: ...

    def fixed_masks(self, task: TaskData) -> Callable[[torch.Tensor], Masks]: ...

    def kb_frozen(self) -> ContextManager: ...

    def kb_copy(self) -> KnowledgeBase: ...

    def split_masks(self, u: int, name: str, split: Split) -> Masks: ...

    def accuracy(self, u: int, name: str, split: Split) -> float: ...

    def forget_cache(self) -> None: ...


class FastPath:
    """What runs: the same results as the reference path up to float round-off, faster."""

    pool_first = True

    def __init__(self, learner: LearnerView) -> None:
        self.learner = learner
        self.memory_format = (torch.channels_last if learner.config.channels_last
                              else torch.contiguous_format)
        self._kb_work: KnowledgeBase | None = None
        # masks M_u(F_u(x)) of each finished task's val/test images: both are frozen, so only
        # the KB part of evaluation has to run again after later tasks
        self._eval_masks: dict[tuple[int, str], Masks] = {}

    def no_autograd(self):
        return torch.inference_mode()

    def feature_source(self, task: TaskData) -> tuple[Callable[[torch.Tensor], torch.Tensor], bool]:
        """F_t(x) for the whole task, once (F_t frozen, eval mode): ``features(idx)`` indexes it."""
        runtime = self.learner.runtime
        chunks = []
        with torch.inference_mode():
            n = runtime.eval_chunk
            for start in range(0, len(task.x), n):
                with runtime.autocast():
                    chunks.append(task.extractor(runtime.images(task.x[start:start + n])).float())
        features = torch.cat(chunks).clone()  # outside inference mode: usable in autograd later
        return (lambda idx: features[idx]), True

    def fixed_masks(self, task: TaskData) -> Callable[[torch.Tensor], Masks]:
        if not task.features_cached:  # F_t in train mode: masks depend on the batch
            def live(idx: torch.Tensor) -> Masks:
                with torch.no_grad():
                    return [m.detach() for m in self.learner.task_masks(task, idx)]
            return live
        with torch.inference_mode():
            every = torch.arange(len(task.y), device=self.learner.runtime.device)
            masks_all = self.learner.task_masks(task, every)
        masks_all = [m.clone() for m in masks_all]
        return lambda idx: [m[idx] for m in masks_all]

    @contextlib.contextmanager
    def kb_frozen(self) -> Iterator[None]:
        kb = self.learner.kb
        kb.requires_grad_(False)
        try:
            yield
        finally:
            kb.requires_grad_(True)

    def kb_copy(self) -> KnowledgeBase:
        kb = self.learner.kb
        if self._kb_work is None:
            self._kb_work = copy.deepcopy(kb)
        with torch.no_grad():
            for pc, p in zip(self._kb_work.parameters(), kb.parameters()):
                pc.copy_(p)
                pc.grad = None
        return self._kb_work

    def split_masks(self, u: int, name: str, split: Split) -> Masks:
        if (u, name) not in self._eval_masks:
            self._eval_masks[(u, name)] = self.learner.split_masks(u, split)
        return self._eval_masks[(u, name)]

    def accuracy(self, u: int, name: str, split: Split) -> float:
        learner = self.learner
        masks, n = self.split_masks(u, name, split), learner.runtime.eval_chunk
        return evaluation.accuracy(split, kb=learner.kb, head=learner.heads[u], runtime=learner.runtime,
                                   masks_for=lambda start, xb: [m[start:start + n] for m in masks])

    def forget_cache(self) -> None:
        self._eval_masks.clear()
