"""Training FLOPs: a compute measure counted from shapes, not read from a clock.

Seconds move with the machine, its threads and its load; FLOPs of the same settings on the same
data do not. Every training step of a sequence (phases 1-5: forward, backward, and phase 4's
inner steps and its accuracy pass) adds its FLOPs. Torch's own counter
(``torch.utils.flop_counter.FlopCounterMode``: convolutions and matrix products, forward and
backward, from their shapes) counts the first step of each phase; every step of that phase, in
every task, then adds that count scaled by its samples, since each of these operations costs in
proportion to the batch, and a task's modules have the same shapes in every task with as many
classes (the key is the phase and the task's classes). Counting so costs one instrumented step
per phase in a sequence, and the total depends on the settings and the data sizes alone.

Not counted: evaluation (it trains nothing), the forward passes of frozen modules that the fast
path computes once per task outside the steps (F_t's features and M_t's masks, when cached),
and element-wise work (activations, pooling, optimiser updates), which the counter leaves out.
``bench/flops.py`` compares the count with the counter run over the whole sequence.

Example:
    >>> import torch
    >>> flops = TrainingFlops()
    >>> layer = torch.nn.Linear(8, 4)
    >>> for batch in (16, 16, 5):  # a last, smaller batch
    ...     with flops.step(("probe", 2), samples=batch):
    ...         _ = layer(torch.randn(batch, 8)).sum()
    >>> flops.total  # 2 x 8 x 4 multiply-adds a sample
    2368
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Hashable, Iterator, Mapping

# Settings that change no counted step's shapes or number: rates, decays, clips, dropout, the
# activation (element-wise, uncounted) and numerics switches (meta_vmap counts as the loop does).
# A sequence's count depends on the others and the data sizes alone, so the count of one setting
# of the rest stands for all (bench/flops_table.py records it so for a space). Not the seed: with
# no data_seed it also draws the class order, and so the tasks' sizes.
COUNT_FREE = frozenset({
    "lr_task", "lr_mask", "lr_meta", "meta_step", "momentum", "weight_decay", "meta_weight_decay",
    "grad_clip", "kb_grad_clip", "kb_dropout", "mask_activation", "mask_init", "meta_decay_head_only",
    "meta_vmap", "channels_last", "flush_denormals", "deterministic", "nan_check",
})


def count_key(settings: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """The settings that decide a sequence's count, as a key: ``settings`` less :data:`COUNT_FREE`."""
    return tuple(sorted((name, repr(value)) for name, value in settings.items() if name not in COUNT_FREE))


class TrainingFlops:
    """The running FLOP count of one learner's training steps."""

    def __init__(self, total: int = 0, *, known: bool = True) -> None:
        self.total = int(total)
        self.known = known  # False: continued from a checkpoint that kept no count (the total is partial)
        self._per_sample: dict[Hashable, int] = {}  # (phase, classes) -> FLOPs a sample, from its first step

    def knows(self, kind: Hashable) -> bool:
        return kind in self._per_sample

    def measure(self, kind: Hashable, *, samples: int, fn: Callable[[], object]) -> None:
        """Count ``fn()`` (a step of ``samples`` samples run for counting only) as the cost of the
        steps of ``kind``, which then add it scaled and run uncounted. For a path whose own steps
        the counter would count otherwise: phase 4's batched mini-tasks (``torch.func.vmap``)
        count as the mini-tasks one at a time, so a CUDA run (batched) and a CPU run (one at a
        time) of the same settings count the same."""
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            fn()
        self._per_sample[kind] = round(counter.get_total_flops() / max(samples, 1))

    @contextlib.contextmanager
    def step(self, kind: Hashable, *, samples: int) -> Iterator[None]:
        """One training step of ``samples`` samples, of the phase ``kind``: counted by torch's
        counter when it is the first of its kind, else scaled from that one. A step that raises
        adds nothing."""
        per_sample = self._per_sample.get(kind)
        if per_sample is None:
            from torch.utils.flop_counter import FlopCounterMode

            with FlopCounterMode(display=False) as counter:
                yield
            per_sample = self._per_sample[kind] = round(counter.get_total_flops() / max(samples, 1))
        else:
            yield
        self.total += per_sample * samples
