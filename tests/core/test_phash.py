"""The perceptual hash: stable under resizing and small intensity changes, apart for other pictures."""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from core.phash import hamming, perceptual_hash


def _picture(seed: int, shape: tuple[int, int] = (400, 260)) -> np.ndarray:
    field = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), 12)
    return ((field - field.min()) / np.ptp(field) * 255).astype(np.uint8)


def test_perceptual_hash_survives_resizing_and_small_intensity_changes() -> None:
    picture = _picture(0)
    reference = perceptual_hash(picture)
    assert -(1 << 63) <= reference < 1 << 63
    smaller = np.asarray(Image.fromarray(picture).resize((130, 200), Image.Resampling.LANCZOS))
    brighter = np.clip(picture.astype(int) + 6, 0, 255).astype(np.uint8)
    assert hamming(reference, perceptual_hash(smaller)) <= 6
    assert hamming(reference, perceptual_hash(brighter)) <= 6
    assert hamming(reference, perceptual_hash(np.repeat(picture[:, :, None], 3, axis=2))) == 0
    for seed in (1, 2, 3):
        assert hamming(reference, perceptual_hash(_picture(seed))) > 10


def test_hamming() -> None:
    assert hamming(0, 0) == 0
    assert hamming(-1, 0) == 64  # signed int64 hashes: all 64 bits set
    assert hamming(0b1011, 0b0001) == 2
