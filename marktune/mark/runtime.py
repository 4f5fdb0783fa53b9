"""How the learner runs tensors: its device, memory layout, arithmetic and evaluation chunks.

One :class:`Runtime` per learner, shared by the epoch loop (:mod:`marktune.mark.training`),
evaluation (:mod:`marktune.mark.evaluation`) and phase 4 (:mod:`marktune.mark.phase4`), so
none of them needs the learner to turn a uint8 batch into the network's input.

Example:
    >>> import torch
    >>> runtime = Runtime(device=torch.device("cpu"), memory_format=torch.contiguous_format,
    ...                   precision="fp32", normalize=lambda x: x.float() / 255)
    >>> runtime.eval_chunk, runtime.images(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)).max().item()
    (128, 1.0)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

# Images per forward pass when nothing is trained (F_t features, masks, evaluation).
# Small chunks are faster per image on CPU (the conv activations stay in cache) and
# keep peak memory low; measured with bench/sequence.py.
EVAL_CHUNK = 128
# On a GPU, bigger chunks: its memory is not a cache to stay inside, and fewer launches pay
EVAL_CHUNK_CUDA = 2048


@dataclass(frozen=True)
class Runtime:
    """The device, layout (``memory_format``), ``precision`` (fp32 | bf16) and normalisation."""

    device: torch.device
    memory_format: torch.memory_format
    precision: str
    normalize: Callable[[torch.Tensor], torch.Tensor]  # uint8 -> float32 input (the benchmark's)
    eval_chunk: int = field(default=0)

    def __post_init__(self) -> None:
        if not self.eval_chunk:
            object.__setattr__(self, "eval_chunk", EVAL_CHUNK_CUDA if self.device.type == "cuda" else EVAL_CHUNK)

    def images(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """A uint8 batch as the network's input (layout, then normalisation)."""
        return self.normalize(x_uint8.contiguous(memory_format=self.memory_format))

    def autocast(self):
        """bfloat16 autocast with ``precision: bf16``; a no-op context with fp32."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")
