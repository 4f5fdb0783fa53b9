"""The epoch loop every epoch-based phase of MARK shares, and what the phases of a task share.

Phases 1, 2, 3 and 5 (and phase 4 of the ``finetune`` ablation) are the same loop,
:meth:`EpochLoop.train`: ``phase_epochs(phase)`` epochs of SGD over shuffled batches of
the task's images, each phase with its own parameters, rates and forward pass.

Example:
    >>> stats = EpochStats()
    >>> stats.add(torch.tensor(0.5), torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
    >>> stats.result()
    (0.5, 0.5)
"""
from __future__ import annotations

import contextlib
import itertools
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from marktune.mark.config import MarkConfig
from marktune.mark.flops import TrainingFlops
from marktune.mark.model import MaskGenerator, TaskHead
from marktune.mark.runtime import Runtime

# what to lower when a phase's loss is not finite
LOWER_WHAT = {"feature": "lr_task", "kb": "lr_task or set kb_grad_clip (e.g. 1.0)",
              "mask": "lr_mask (or lr_task)", "consolidation": "lr_mask (or lr_task)", "finetune": "lr_meta"}


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; the message names the phase and what to lower."""


@dataclass
class TaskData:
    """What the phases of task ``t`` share: its training images and its F_t, M_t, C_t."""

    t: int
    x: torch.Tensor  # uint8 training images, on the device
    y: torch.Tensor
    num_classes: int
    extractor: nn.Module
    mask_gen: MaskGenerator
    head: TaskHead
    generator: torch.Generator  # this task's batch order
    # F_t(x[idx]) once phase 1 is done; ``features_cached``: computed once for the whole task
    features: Callable[[torch.Tensor], torch.Tensor] | None = None
    features_cached: bool = False


class Progress:
    """Progress lines by level: 0 always (warnings), 1 one line per phase, 2 one line per epoch."""

    def __init__(self, verbose: int, log: Callable[[str], None]) -> None:
        self.verbose, self.log = verbose, log

    def __call__(self, level: int, message: str) -> None:
        if self.verbose >= level:
            self.log(message)


class EpochStats:
    """Running loss/accuracy of an epoch, kept on the device (one sync per epoch)."""

    def __init__(self) -> None:
        self.loss = 0.0
        self.correct = 0.0
        self.count = 0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        n = len(y)
        self.loss = self.loss + loss.detach() * n
        self.correct = self.correct + (logits.detach().argmax(1) == y).sum()
        self.count += n

    def result(self) -> tuple[float, float]:
        if self.count == 0:
            return 0.0, 0.0
        return float(self.loss) / self.count, float(self.correct) / self.count


class EpochLoop:
    """The shared epoch loop of one learner: its config, runtime and progress lines."""

    def __init__(self, config: MarkConfig, runtime: Runtime, progress: Progress,
                 flops: TrainingFlops | None = None) -> None:
        self.config, self.runtime, self.progress = config, runtime, progress
        self.flops = flops if flops is not None else TrainingFlops()  # every step's FLOPs (marktune.mark.flops)

    def batches(self, task: TaskData) -> Iterator[torch.Tensor]:
        """One shuffled pass over task t's training images, in batches of ``batch_size``."""
        order = torch.randperm(len(task.y), generator=task.generator).to(self.runtime.device)
        for start in range(0, len(task.y), self.config.batch_size):
            yield order[start:start + self.config.batch_size]

    def first_batches(self, task: TaskData, k: int) -> list[torch.Tensor]:
        """Phase 4's mini-task batches: a fresh shuffled pass, its first ``k`` batches (as the
        released code; fewer when one pass has fewer)."""
        return list(itertools.islice(self.batches(task), k))

    def train(self, task: TaskData, phase: str, *, params: list[nn.Parameter], lr: float, weight_decay: float,
              forward: Callable[[torch.Tensor], torch.Tensor], momentum: float | None = None,
              clip: Sequence[tuple[list[nn.Parameter], float]] = ()) -> EpochStats | None:
        """``phase_epochs(phase)`` epochs of SGD over shuffled batches of task t's images.

        ``forward(idx)`` gives the logits of the batch ``task.x[idx]``; each ``(params,
        max_norm)`` of ``clip`` is clipped on its own. Returns the last epoch's statistics
        (None when there were no epochs).
        """
        epochs = self.config.phase_epochs(phase)
        opt = torch.optim.SGD(params, lr=lr, weight_decay=weight_decay,
                              momentum=self.config.momentum if momentum is None else momentum)
        stats = None
        for epoch in range(epochs):
            stats = EpochStats()
            for idx in self.batches(task):
                with self.flops.step((phase, task.num_classes), samples=len(idx)):
                    with self.runtime.autocast():
                        logits = forward(idx)
                        loss = F.cross_entropy(logits.float(), task.y[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                for group, max_norm in clip:
                    torch.nn.utils.clip_grad_norm_(group, max_norm)
                opt.step()
                stats.add(loss, logits, task.y[idx])
            self._end_epoch(task.t, phase, epoch, epochs, stats)
        return stats

    def _end_epoch(self, t: int, phase: str, epoch: int, epochs: int, stats: EpochStats) -> None:
        loss, acc = stats.result()
        if self.config.nan_check and not math.isfinite(loss):
            raise NonFiniteLossError(f"the loss became {loss} in phase {phase} of task {t} "
                                     f"(epoch {epoch + 1}); lower {LOWER_WHAT[phase]}")
        level = 1 if epoch + 1 == epochs else 2
        self.progress(level, f"task {t + 1}/{self.config.tasks} {phase:<13} epoch {epoch + 1}/{epochs} "
                             f"loss {loss:.4f} train acc {acc:.3f}")


def live_features(task: TaskData, runtime: Runtime, *, train_mode: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """``features(idx)`` computed on every call (F_t frozen; its BatchNorm in train or eval mode)."""
    def compute(idx: torch.Tensor) -> torch.Tensor:
        task.extractor.train(train_mode)
        with torch.no_grad(), runtime.autocast():
            return task.extractor(runtime.images(task.x[idx])).float()
    return compute


# the keys of MarkLearner.seconds (one dict per task), in the order the phases run
PHASES = ("feature", "kb", "mask", "meta", "consolidation", "eval")


def phase_totals(seconds: Iterable[dict[str, float]]) -> dict[str, float]:
    """Seconds of each phase in :data:`PHASES`, summed over the tasks' ``seconds`` dicts."""
    seconds = list(seconds)
    return {p: sum(s.get(p, 0.0) for s in seconds) for p in PHASES}


@contextlib.contextmanager
def timed(seconds: dict[str, float], key: str) -> Iterator[None]:
    """Add the block's wall seconds to ``seconds[key]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - start
