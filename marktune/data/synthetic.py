"""Synthetic colour prototypes (``synthetic``): any number of classes, made from the seed, no files.

For tests and smoke runs: learnable by a small CNN in a few epochs.
"""
from __future__ import annotations

import numpy as np
import torch

from marktune.data.base import Source


def load(*, num_classes: int, images_per_class: int, image_size: int,
                    seed: int) -> Source:
    """Per class a smooth random colour prototype; images are it plus pixel noise and a brightness shift.

    Prototypes are drawn at low resolution and upsampled, so they differ in coarse structure
    that a small CNN with pooling picks up in a few epochs.
    """
    if images_per_class < 2:
        raise ValueError(f"synthetic_images_per_class must be >= 2 (got {images_per_class})")
    if image_size < 1:
        raise ValueError(f"synthetic_image_size must be >= 1 (got {image_size})")
    gen = torch.Generator().manual_seed(seed)
    coarse = min(8, image_size)
    protos = torch.rand(num_classes, 3, coarse, coarse, generator=gen) * 200 + 28
    protos = torch.nn.functional.interpolate(protos, size=(image_size, image_size), mode="bilinear",
                                             align_corners=False)
    n_test = max(10, images_per_class // 3)

    def sample(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        labels = torch.arange(num_classes).repeat_interleave(per_class)
        noise = torch.randn(len(labels), 3, image_size, image_size, generator=gen) * 30
        shift = torch.randn(len(labels), 1, 1, 1, generator=gen) * 15
        x = (protos[labels] + noise + shift).round_().clamp_(0, 255).to(torch.uint8)
        return x.numpy(), labels.numpy().astype(np.int64)

    train_x, train_y = sample(images_per_class)
    test_x, test_y = sample(n_test)
    return Source(train_x, train_y, test_x, test_y)
