"""Tiles in, logits or calibrated class probabilities out, with a network in this process.

The one implementation of inference: training's per-epoch validation (:func:`tile_logits`), the
temperature and threshold fitted on the validation split, the evaluation of a freshly trained network
and the registered pyfunc model (:func:`predict_tiles`) all call it, so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from model.calibration import calibrated
from model.data import TileInput

LEGACY_INPUT = TileInput(224, 0.45, 0.25)
"""How models logged before their tile input was recorded were fed (the constants of that code)."""


def tile_logits(net: Any, pixels: Sequence[bytes], tile_input: TileInput, batch_size: int = 64) -> np.ndarray:
    """The network's logits for PNG tiles (the tiles table's encoding): (n, classes); eval mode, no grad."""
    import torch

    net.eval()
    outputs = []
    with torch.no_grad():
        for start in range(0, len(pixels), batch_size):
            batch = tile_input.batch(pixels[start : start + batch_size])
            outputs.append(net(torch.from_numpy(batch)).numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0, 0))


def predict_tiles(
    net: Any,
    pixels: Sequence[bytes],
    classes: int,
    temperature: float = 1.0,
    batch_size: int = 64,
    tile_input: TileInput | None = None,
) -> np.ndarray:
    """``softmax(logits / temperature)`` for PNG tiles: (n, classes).

    ``tile_input`` is how the network was trained to be fed; None means :data:`LEGACY_INPUT`.
    """
    logits = tile_logits(net, pixels, tile_input or LEGACY_INPUT, batch_size)
    return calibrated(logits, temperature) if len(logits) else np.zeros((0, classes))
