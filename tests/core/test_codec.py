"""The PNG codec: exact round trips, and a refusal of what it cannot store exactly."""

from __future__ import annotations

import numpy as np
import pytest

from core.codec import decode_png, encode_png


@pytest.mark.parametrize("shape", [(67, 45), (67, 45, 3)])
def test_png_round_trip_is_exact(shape: tuple[int, ...]) -> None:
    array = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    data = encode_png(array)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    decoded = decode_png(data)
    assert decoded.dtype == np.uint8 and np.array_equal(decoded, array)
    decoded[0, 0] = 0  # writable


def test_png_refuses_what_it_cannot_store_exactly() -> None:
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((4, 4, 4), np.uint8))
