"""Shared fixtures: tiny configurations that train in well under a second per task on CPU."""
from __future__ import annotations

import pytest
import torch

from marktune.config import MarkConfig

# A synthetic sequence small enough for unit tests, but with every phase exercised.
TINY = dict(benchmark="synthetic", num_tasks=3, synthetic_classes_per_task=2,
            synthetic_images_per_class=80, epochs=2, meta_epochs=2, mini_tasks=3, inner_steps=3,
            kb_width=8, latent_dim=16, fe_channels=8, batch_size=32)


@pytest.fixture(autouse=True)
def _few_threads():
    # 2-core CI machines: oversubscribing threads makes every test slower
    torch.set_num_threads(2)


def tiny_config(**overrides) -> MarkConfig:
    return MarkConfig(**{**TINY, **overrides})
