"""Tiles from a pinned Delta snapshot into PyTorch batches, through Petastorm.

Training reads the Parquet files of one version of the tiles table directly with Petastorm's
``make_batch_reader`` (sharded by Horovod rank). That is sound because the tiles table has deletion
vectors off (a snapshot's files hold exactly its rows), is not partitioned (partition values would not be
inside the files), and is written in many row groups (each worker needs at least one). Rows of other
splits or outside the task (:func:`split_rows`: the task's row predicate and the split rule, both from
:mod:`core.tasks`) are ignored in the reader's transform, where the PNG pixels are also decoded,
augmented and normalised, so the torch side only sees float tensors and integer labels.

How a tile becomes a network input (:class:`TileInput`: size, pixel mean and spread) and how training
tiles are augmented (:class:`Augmentation`) come from configuration (``tiles.size``,
``train.pixel_mean``/``pixel_std``, ``train.augment``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from core.tasks import BY_PATIENT, SplitRule, Task

IGNORE = -1  # target of rows that belong to another split or task


@dataclass(frozen=True)
class TileInput:
    """What the network is fed: ``size`` x ``size`` tiles, scaled to 0-1, then ``(x - mean) / std``."""

    size: int
    mean: float
    std: float

    @classmethod
    def from_settings(cls, settings: Any) -> TileInput:
        return cls(settings.tiles.size, settings.train.pixel_mean, settings.train.pixel_std)

    def spec(self) -> dict[str, Any]:
        """As plain values (recorded with a logged model, so it normalises as training did)."""
        return asdict(self)

    def array(self, png: bytes) -> np.ndarray:
        """A tile's PNG as float32 (3, size, size), normalised; grayscale is replicated to three channels."""
        from core.codec import decode_png

        pixels = decode_png(png).astype(np.float32) / 255.0
        if pixels.shape[:2] != (self.size, self.size):
            raise ValueError(
                f"a tile is {pixels.shape[1]}x{pixels.shape[0]} pixels, the model takes {self.size}x"
                f"{self.size} (tiles.size): tile the images again or set tiles.size to the table's"
            )
        if pixels.ndim == 2:
            pixels = np.repeat(pixels[:, :, None], 3, axis=2)
        return np.ascontiguousarray((pixels.transpose(2, 0, 1) - self.mean) / self.std, dtype=np.float32)

    def batch(self, pixels: Sequence[bytes]) -> np.ndarray:
        """PNG tiles as one float32 array (n, 3, size, size)."""
        if not len(pixels):
            return np.zeros((0, 3, self.size, self.size), dtype=np.float32)
        return np.stack([self.array(bytes(png)) for png in pixels])


@dataclass(frozen=True)
class Augmentation:
    """Flips, a small rotation and intensity jitter: the variations a tile could have had anyway."""

    flip: bool
    rotate_degrees: float
    gain: float
    bias: float

    @classmethod
    def from_settings(cls, settings: Any) -> Augmentation:
        return cls(**settings.train.augment.model_dump())

    def __call__(self, tile: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Each flip with probability 1/2, a rotation uniform in +-``rotate_degrees``, then
        ``tile * uniform(1 - gain, 1 + gain) + uniform(-bias, bias)``."""
        from scipy.ndimage import rotate

        if self.flip:
            if rng.random() < 0.5:
                tile = tile[:, :, ::-1]
            if rng.random() < 0.5:
                tile = tile[:, ::-1, :]
        if self.rotate_degrees:
            angle = rng.uniform(-self.rotate_degrees, self.rotate_degrees)
            tile = rotate(tile, angle, axes=(1, 2), reshape=False, order=1, mode="reflect")
        gain, bias = rng.uniform(1 - self.gain, 1 + self.gain), rng.uniform(-self.bias, self.bias)
        return np.ascontiguousarray(tile * gain + bias, dtype=np.float32)


def split_rows(frame: pd.DataFrame, task: Task, split: str, rule: SplitRule = BY_PATIENT) -> np.ndarray:
    """The rows of ``frame`` that are ``split``'s rows of ``task``, as a boolean mask.

    ``frame`` needs the columns the task's predicate and the rule read (``modality``, ``collection``,
    ``label``, ``split``, ``image_id``).
    """
    return task.rows_of(frame) & (rule.of(frame) == split).to_numpy()


READ_COLUMNS = ["split", "image_id", "modality", "collection", "label", "pixels"]


def read_split(files: Sequence[str], task: Task, split: str, rule: SplitRule = BY_PATIENT) -> pd.DataFrame:
    """``split``'s rows of ``task`` in the Parquet ``files`` (columns :data:`READ_COLUMNS`), with pyarrow.

    Inside a worker that already runs the (endless) Petastorm training reader, a second, one-epoch
    Petastorm reader intermittently ended without yielding anything; validation must see every
    validation tile, every epoch, so it reads this way.
    """
    import pyarrow.parquet as pq

    paths = [f.removeprefix("file:") for f in files]
    frame = pq.ParquetDataset(paths).read(columns=READ_COLUMNS).to_pandas()
    return frame[split_rows(frame, task, split, rule)]


@dataclass(frozen=True)
class ReaderSpec:
    """What a worker's transform needs: which split and task, how tiles are fed, augmentation, a seed."""

    split: str
    task: Task
    tile_input: TileInput
    augmentation: Augmentation | None
    seed: int = 0
    rule: SplitRule = BY_PATIENT


def make_transform(spec: ReaderSpec) -> Any:
    """The Petastorm ``TransformSpec`` for a split and task: decode, augment and label the task's rows.

    Rows outside the split or task keep their place with ``target`` :data:`IGNORE` and a blank image
    (never decoded): Petastorm ends a read early when a row group's transform returns no rows at all
    (uber/petastorm#507), which silently dropped the rest of a split. Consumers drop ignored rows.
    """
    from petastorm import TransformSpec

    rng = np.random.default_rng(spec.seed)
    size = spec.tile_input.size
    blank = np.zeros((3, size, size), dtype=np.float32)

    def transform(frame: pd.DataFrame) -> pd.DataFrame:
        keep = split_rows(frame, spec.task, spec.split, spec.rule)
        images = []
        for wanted, png in zip(keep, frame["pixels"], strict=True):
            image = spec.tile_input.array(png) if wanted else blank
            images.append(spec.augmentation(image, rng) if wanted and spec.augmentation else image)
        targets = frame["label"].map(spec.task.label_map).where(keep, IGNORE).astype(np.int64).to_numpy()
        return pd.DataFrame({"image": images, "target": targets})

    return TransformSpec(
        transform,
        edit_fields=[
            ("image", np.float32, (3, size, size), False),
            ("target", np.int64, (), False),
        ],
        selected_fields=["image", "target"],
    )
