"""The PNG codec of every pixel column (images, tiles, landed images, masks)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encode_png(array: np.ndarray) -> bytes:
    """uint8 (H, W) as 8-bit grayscale or (H, W, 3) as RGB PNG, lightly compressed.

    Tiles are written once and decoded every epoch: level 1 is several times faster than the default and
    only a few percent larger on noisy medical images.
    """
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(f"expected uint8 (H, W) or (H, W, 3), got {array.dtype} {array.shape}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """The inverse of :func:`encode_png`, as a writable array (torch warns on read-only buffers).

    imagecodecs (libpng, the GIL released) measured faster than Pillow and ``torchvision.io.decode_png``
    on tiles (``benchmarks/train.py`` prints the three); Pillow reads what imagecodecs refuses.
    """
    import imagecodecs

    try:
        return imagecodecs.png_decode(data)
    except (ValueError, imagecodecs.PngError):
        with Image.open(io.BytesIO(data)) as image:
            return np.array(image)
