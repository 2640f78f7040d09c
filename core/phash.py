"""The perceptual hash that links near-duplicate images (a re-released film, another decoder's output)."""

from __future__ import annotations

import imagehash
import numpy as np
from PIL import Image


def perceptual_hash(image: np.ndarray) -> int:
    """64-bit pHash of an image as a signed int64 (Spark's LongType).

    A DCT of a 32x32 grayscale thumbnail: the same picture decoded by another tool, at another resolution
    or with slightly different windowing hashes within a few bits (see :mod:`pipelines.links`).
    """
    value = int(str(imagehash.phash(Image.fromarray(image).convert("L"), hash_size=8)), 16)
    return value - (1 << 64) if value >= 1 << 63 else value


def hamming(a: int, b: int) -> int:
    """Bits in which two 64-bit hashes differ."""
    return ((a ^ b) & 0xFFFFFFFFFFFFFFFF).bit_count()
