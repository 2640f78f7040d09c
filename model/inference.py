"""Tiles in, calibrated class probabilities out, with a network in this process.

The one implementation of inference: the registered pyfunc model, the threshold fit on the validation
split and the evaluation of a freshly trained network all call it, so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from model.calibration import calibrated
from model.data import tile_to_array


def predict_tiles(
    net: Any, pixels: Sequence[bytes], classes: int, temperature: float = 1.0, batch_size: int = 64
) -> np.ndarray:
    """``softmax(logits / temperature)`` for PNG tiles (the tiles table's encoding): (n, classes)."""
    import torch

    net.eval()
    outputs = []
    with torch.no_grad():
        for start in range(0, len(pixels), batch_size):
            batch = np.stack([tile_to_array(bytes(p)) for p in pixels[start : start + batch_size]])
            outputs.append(calibrated(net(torch.from_numpy(batch)).numpy(), temperature))
    return np.concatenate(outputs) if outputs else np.zeros((0, classes))
