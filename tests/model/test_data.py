"""How a tile becomes a network input, how training tiles are augmented, and which rows a reader keeps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.codec import encode_png
from core.tasks import TASKS, SplitRule
from model.data import Augmentation, TileInput, split_rows


def test_a_tile_is_scaled_normalised_and_given_three_channels() -> None:
    gray = np.full((32, 32), 153, dtype=np.uint8)  # 0.6 after scaling
    array = TileInput(32, 0.5, 0.25).array(encode_png(gray))
    assert array.shape == (3, 32, 32) and array.dtype == np.float32
    assert np.allclose(array, (0.6 - 0.5) / 0.25)
    assert TileInput(32, 0.5, 0.25).batch([]).shape == (0, 3, 32, 32)


def test_a_tile_of_another_size_than_configured_is_refused() -> None:
    with pytest.raises(ValueError, match=r"the model takes 64x64 \(tiles.size\)"):
        TileInput(64, 0.45, 0.25).array(encode_png(np.zeros((32, 32), dtype=np.uint8)))


def test_augmentation_follows_its_configured_ranges() -> None:
    tile = np.ones((3, 8, 8), dtype=np.float32)
    still = Augmentation(flip=False, rotate_degrees=0, gain=0, bias=0)
    assert np.array_equal(still(tile, np.random.default_rng(0)), tile)
    jitter = Augmentation(flip=True, rotate_degrees=0, gain=0.1, bias=0.1)
    for seed in range(20):
        out = jitter(tile, np.random.default_rng(seed))
        assert np.ptp(out) < 1e-6 and 0.8 <= out.flat[0] <= 1.2  # uniform image: gain and bias only


def test_split_rows_are_the_tasks_rows_of_one_split() -> None:
    task = TASKS["mammo_normal_vs_abnormal"]
    frame = pd.DataFrame(
        {
            "modality": ["mammography"] * 4 + ["histology"],
            "collection": ["mias", "ddsm", "mias", "cbis_ddsm", "breakhis"],
            "label": ["normal", "benign", None, "malignant", "benign"],
            "split": ["val", "val", "val", "val", "val"],
            "image_id": ["0" * 32] * 5,
        }
    )
    assert split_rows(frame, task, "val").tolist() == [True, True, False, False, False]
    assert not split_rows(frame, task, "train").any()
    # With the image-level rule the split comes from the image id, not the stored column.
    assert split_rows(frame, task, "train", SplitRule("image")).tolist() == [True, True, False, False, False]
