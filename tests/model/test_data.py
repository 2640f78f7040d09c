"""How a tile becomes a network input, how training tiles are augmented, and which rows a reader keeps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from core.codec import encode_png
from core.tasks import TASKS, SplitRule
from model.data import IGNORE, Augmentation, ReaderSpec, TileInput, make_transform, split_rows


def test_a_tile_travels_as_uint8_and_is_normalised_on_the_torch_side() -> None:
    gray = np.full((32, 32), 153, dtype=np.uint8)  # 0.6 after scaling
    tile_input = TileInput(32, 0.5, 0.25)
    pixels = tile_input.pixels(encode_png(gray))
    assert pixels.shape == (3, 32, 32) and pixels.dtype == np.uint8 and (pixels == 153).all()
    rgb = np.stack([gray, gray // 3, 255 - gray], axis=2)
    assert np.array_equal(tile_input.pixels(encode_png(rgb)), rgb.transpose(2, 0, 1))
    normalised = tile_input.normalise(torch.from_numpy(tile_input.pixel_batch([encode_png(gray)])))
    assert normalised.dtype == torch.float32 and torch.allclose(normalised, torch.tensor((0.6 - 0.5) / 0.25))
    assert np.allclose(tile_input.batch([encode_png(gray)]), (0.6 - 0.5) / 0.25)
    assert tile_input.batch([]).shape == (0, 3, 32, 32)


def test_a_tile_of_another_size_than_configured_is_refused() -> None:
    with pytest.raises(ValueError, match=r"the model takes 64x64 \(tiles.size\)"):
        TileInput(64, 0.45, 0.25).pixels(encode_png(np.zeros((32, 32), dtype=np.uint8)))


def _dihedral(tile: torch.Tensor) -> list[torch.Tensor]:
    """The 8 flips and quarter turns of a (c, h, w) tile."""
    turns = [torch.rot90(tile, k, dims=(1, 2)) for k in range(4)]
    return turns + [torch.flip(t, dims=(2,)) for t in turns]


def test_batched_augmentation_follows_its_configured_ranges() -> None:
    tiles = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    still = Augmentation(flip=False, rotate90=False, rotate_degrees=0, gain=0, bias=0)
    assert torch.equal(still.batch(tiles.clone(), torch.Generator().manual_seed(0)), tiles)
    # Flips and quarter turns only: every tile becomes one of its 8 exact flips and turns, and over a
    # batch more than one of them is drawn.
    turned = Augmentation(flip=True, rotate90=True, rotate_degrees=0, gain=0, bias=0)
    out = turned.batch(tiles.clone(), torch.Generator().manual_seed(0))
    chosen = set()
    for before, after in zip(tiles, out, strict=True):
        matches = [i for i, t in enumerate(_dihedral(before)) if torch.allclose(t, after, atol=1e-5)]
        assert matches, "an augmented tile is not a flip or turn of its tile"
        chosen.add(matches[0])
    assert len(chosen) > 2
    # Jitter: a uniform tile stays uniform, within x [0.9, 1.1] + [-0.1, 0.1]; a small rotation keeps it.
    uniform = torch.ones(32, 3, 8, 8)
    jitter = Augmentation(flip=True, rotate90=True, rotate_degrees=10, gain=0.1, bias=0.1)
    out = jitter.batch(uniform.clone(), torch.Generator().manual_seed(2))
    per_tile = out.flatten(1)
    assert (per_tile.amax(1) - per_tile.amin(1)).max() < 1e-5
    assert per_tile.min() >= 0.8 - 1e-6 and per_tile.max() <= 1.2 + 1e-6 and per_tile[:, 0].std() > 0.01
    # The same generator seed gives the same batch (workers are reproducible).
    again = jitter.batch(uniform.clone(), torch.Generator().manual_seed(2))
    assert torch.equal(out, again)


def test_the_reader_transform_keeps_uint8_and_blanks_other_rows() -> None:
    task = TASKS["mammo_normal_vs_abnormal"]
    gray = np.full((16, 16), 200, dtype=np.uint8)
    frame = pd.DataFrame(
        {
            "modality": ["mammography", "mammography"],
            "collection": ["mias", "mias"],
            "label": ["normal", "normal"],
            "split": ["train", "val"],
            "image_id": ["0" * 32] * 2,
            "pixels": [encode_png(gray), b"not decoded"],
        }
    )
    spec = make_transform(ReaderSpec("train", task, TileInput(16, 0.45, 0.25)))
    out = spec.func(frame)
    assert out["target"].tolist() == [task.label_map["normal"], IGNORE]
    assert out["image"][0].dtype == np.uint8 and (out["image"][0] == 200).all()
    assert (out["image"][1] == 0).all()
    assert spec.edit_fields[0][1] == np.uint8


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
