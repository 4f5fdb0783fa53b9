"""scikit-learn's digits (``digits``): 1,797 images of 10 classes, 8 x 8 grey, upsampled to 32 x 32.

Shipped with scikit-learn, so always there; a third of the images, drawn with a fixed seed,
are the test split.
"""
from __future__ import annotations

import numpy as np
import torch

from marktune.data.base import Source, grey_to_rgb, stratified_pick

# The digits test split is fixed (not the run's seed), so that, as for the other
# benchmarks, every seed of a search is scored on the same test images.
DIGITS_TEST_SEED = 0


def load() -> Source:
    from sklearn.datasets import load_digits  # local: sklearn is slow to import

    digits = load_digits()
    grey = torch.from_numpy(digits.images).to(torch.float32).mul_(255.0 / 16.0).unsqueeze(1)
    big = torch.nn.functional.interpolate(grey, size=(32, 32), mode="bilinear", align_corners=False)
    images = big.round_().clamp_(0, 255).to(torch.uint8).squeeze(1).numpy()
    labels = np.asarray(digits.target, dtype=np.int64)
    is_test = stratified_pick(labels, round(len(labels) / 3), np.random.default_rng(DIGITS_TEST_SEED))
    return Source(grey_to_rgb(images[~is_test]), labels[~is_test],
                  grey_to_rgb(images[is_test]), labels[is_test])
