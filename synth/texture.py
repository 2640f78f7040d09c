"""Noise and soft-edge helpers shared by the mammogram and histology drawings."""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage


def smooth_noise(shape: tuple[int, int], rng: np.random.Generator, cell: float) -> np.ndarray:
    """Roughly unit-variance noise whose blobs are about ``cell`` pixels across.

    A small random grid (4 samples per blob) is Gaussian-smoothed and bilinearly upsampled: the cost does
    not depend on the image size, unlike filtering full-size noise, and there are no grid artefacts.
    """
    height, width = shape
    step = max(1.0, cell / 4)
    grid = rng.standard_normal((round(height / step) + 8, round(width / step) + 8))
    grid = ndimage.gaussian_filter(grid, 2.0, mode="wrap")[4:-4, 4:-4]
    grid /= grid.std() or 1.0
    up = Image.fromarray(grid.astype(np.float32)).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(up)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function, used for soft edges."""
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30, 30)))
