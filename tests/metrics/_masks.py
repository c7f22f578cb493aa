"""Small synthetic masks for the metric tests: smooth random blobs and a multi-label volume."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def blob(shape: tuple[int, ...], seed: int, fraction: float = 0.3) -> np.ndarray:
    """A smooth random mask covering about ``fraction`` of the image (several lumps, irregular surface)."""
    noise = np.random.default_rng(seed).random(shape)
    smooth = ndimage.gaussian_filter(noise, 2.0)
    return smooth > np.quantile(smooth, 1.0 - fraction)


def label_volume(shape: tuple[int, ...], num_labels: int, seed: int) -> np.ndarray:
    """An integer label map with labels 1..num_labels as smooth regions (argmax of smoothed noise), 0 elsewhere."""
    rng = np.random.default_rng(seed)
    fields = np.stack([ndimage.gaussian_filter(rng.random(shape), 2.0) for _ in range(num_labels + 1)])
    return np.argmax(fields, axis=0).astype(np.uint8)
