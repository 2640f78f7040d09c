"""Tiles from a pinned Delta snapshot into PyTorch batches, through Petastorm.

Training reads the Parquet files of one version of the tiles table directly with Petastorm's
``make_batch_reader`` (sharded by Horovod rank). That is sound because the tiles table has deletion
vectors off (a snapshot's files hold exactly its rows), is not partitioned (partition values would not be
inside the files), and is written in many row groups (each worker needs at least one). Rows of other
splits or labels outside the task are dropped in the reader's transform, where the PNG pixels are also
decoded, augmented and normalised, so the torch side only sees float tensors and integer labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from core.tasks import BY_PATIENT, SplitRule, Task

TILE_SIZE = 224
IGNORE = -1  # target of rows that belong to another split or task
# Mean and spread of normalised 8-bit tiles: inputs become roughly zero-centred with unit variance.
PIXEL_MEAN, PIXEL_STD = 0.45, 0.25


@dataclass(frozen=True)
class ReaderSpec:
    """What a worker's transform needs: which split and task, whether to augment, and a seed."""

    split: str
    task: Task
    augment: bool
    seed: int = 0
    rule: SplitRule = BY_PATIENT


def tile_to_array(png: bytes, size: int = TILE_SIZE) -> np.ndarray:
    """A tile's PNG as float32 (3, size, size), normalised; grayscale is replicated to three channels."""
    from core.codec import decode_png

    pixels = decode_png(png).astype(np.float32) / 255.0
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    return np.ascontiguousarray((pixels.transpose(2, 0, 1) - PIXEL_MEAN) / PIXEL_STD, dtype=np.float32)


def augment(tile: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flips, a small rotation and intensity jitter: the variations a tile could have had anyway."""
    from scipy.ndimage import rotate

    if rng.random() < 0.5:
        tile = tile[:, :, ::-1]
    if rng.random() < 0.5:
        tile = tile[:, ::-1, :]
    angle = rng.uniform(-10, 10)
    tile = rotate(tile, angle, axes=(1, 2), reshape=False, order=1, mode="reflect")
    gain, bias = rng.uniform(0.9, 1.1), rng.uniform(-0.1, 0.1)
    return np.ascontiguousarray(tile * gain + bias, dtype=np.float32)


def make_transform(spec: ReaderSpec):
    """The Petastorm ``TransformSpec`` for a split and task: decode, augment and label the task's rows.

    Rows outside the split or task keep their place with ``target`` :data:`IGNORE` and a blank image
    (never decoded): Petastorm ends a read early when a row group's transform returns no rows at all
    (uber/petastorm#507), which silently dropped the rest of a split. Consumers drop ignored rows.
    """
    from petastorm import TransformSpec

    rng = np.random.default_rng(spec.seed)
    blank = np.zeros((3, TILE_SIZE, TILE_SIZE), dtype=np.float32)

    def transform(frame: pd.DataFrame) -> pd.DataFrame:
        keep = (
            (spec.rule.of(frame) == spec.split)
            & frame["collection"].isin(list(spec.task.collections))
            & frame["label"].isin(list(spec.task.label_map))
        ).to_numpy()
        images = []
        for wanted, png in zip(keep, frame["pixels"], strict=True):
            image = tile_to_array(png) if wanted else blank
            images.append(augment(image, rng) if wanted and spec.augment else image)
        targets = frame["label"].map(spec.task.label_map).where(keep, IGNORE).astype(np.int64).to_numpy()
        return pd.DataFrame({"image": images, "target": targets})

    return TransformSpec(
        transform,
        edit_fields=[
            ("image", np.float32, (3, TILE_SIZE, TILE_SIZE), False),
            ("target", np.int64, (), False),
        ],
        selected_fields=["image", "target"],
    )
