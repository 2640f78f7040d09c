"""Tiles from a pinned Delta snapshot into PyTorch batches, through Petastorm.

Training reads the Parquet files of one version of the tiles table directly with Petastorm's
``make_batch_reader`` (sharded by Horovod rank). That is sound because the tiles table has deletion
vectors off (a snapshot's files hold exactly its rows), is not partitioned (partition values would not be
inside the files), and is written in many row groups (each worker needs at least one). Rows of other
splits or outside the task (:func:`split_rows`: the task's row predicate and the split rule, both from
:mod:`core.tasks`) are ignored in the reader's transform, where the PNG pixels are also decoded; they
stay ``uint8`` until the torch side normalises and augments whole batches.

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
    """What the network is fed: ``size`` x ``size`` tiles, scaled to 0-1, then ``(x - mean) / std``.

    Tiles travel as ``uint8`` (3, size, size) (:meth:`pixels`: grayscale replicated to three channels)
    and become float only on the torch side, a whole batch at once (:meth:`normalise`).
    """

    size: int
    mean: float
    std: float

    @classmethod
    def from_settings(cls, settings: Any) -> TileInput:
        return cls(settings.tiles.size, settings.train.pixel_mean, settings.train.pixel_std)

    def spec(self) -> dict[str, Any]:
        """As plain values (recorded with a logged model, so it normalises as training did)."""
        return asdict(self)

    def pixels(self, png: bytes) -> np.ndarray:
        """A tile's PNG as uint8 (3, size, size); grayscale is replicated to three channels."""
        from core.codec import decode_png

        pixels = decode_png(png)
        if pixels.shape[:2] != (self.size, self.size):
            raise ValueError(
                f"a tile is {pixels.shape[1]}x{pixels.shape[0]} pixels, the model takes {self.size}x"
                f"{self.size} (tiles.size): tile the images again or set tiles.size to the table's"
            )
        if pixels.ndim == 2:
            return np.ascontiguousarray(np.broadcast_to(pixels, (3, self.size, self.size)))
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))

    def pixel_batch(self, pixels: Sequence[bytes]) -> np.ndarray:
        """PNG tiles as one uint8 array (n, 3, size, size)."""
        out = np.empty((len(pixels), 3, self.size, self.size), dtype=np.uint8)
        for i, png in enumerate(pixels):
            out[i] = self.pixels(bytes(png))
        return out

    def normalise(self, batch: Any) -> Any:
        """A uint8 torch batch (n, 3, size, size) as the network's float32 input."""
        return batch.float().mul_(1.0 / (255.0 * self.std)).sub_(self.mean / self.std)

    def batch(self, pixels: Sequence[bytes]) -> np.ndarray:
        """PNG tiles as one normalised float32 array (n, 3, size, size) (inference and validation)."""
        import torch

        return self.normalise(torch.from_numpy(self.pixel_batch(pixels))).numpy()


@dataclass(frozen=True)
class Augmentation:
    """Flips, 90-degree turns, a small rotation and intensity jitter: variations a tile could have had.

    Applied on the torch side to whole normalised batches (:meth:`batch`): the flips, turns and rotation
    of each tile compose into one affine map, sampled in one ``grid_sample`` call (bilinear, reflected
    at the border); the jitter is one multiply-add.
    """

    flip: bool
    rotate90: bool
    rotate_degrees: float
    gain: float
    bias: float

    @classmethod
    def from_settings(cls, settings: Any) -> Augmentation:
        return cls(**settings.train.augment.model_dump())

    def batch(self, images: Any, generator: Any) -> Any:
        """Each tile of the float batch (n, c, h, w): each flip with probability 1/2, a quarter turn
        0-3 times (``rotate90``), a rotation uniform in +-``rotate_degrees``, then
        ``x * uniform(1 - gain, 1 + gain) + uniform(-bias, bias)``; ``generator`` draws the values."""
        import torch
        import torch.nn.functional as F

        n = images.shape[0]

        def uniform(low: float, high: float) -> Any:
            return torch.rand(n, generator=generator) * (high - low) + low

        matrix = torch.eye(2).repeat(n, 1, 1)
        if self.flip:
            signs = torch.where(torch.rand(n, 2, generator=generator) < 0.5, -1.0, 1.0)
            matrix = matrix * signs[:, None, :]
        angle = torch.zeros(n)
        if self.rotate90:
            angle += torch.randint(0, 4, (n,), generator=generator).float() * (torch.pi / 2)
        if self.rotate_degrees:
            angle += uniform(-self.rotate_degrees, self.rotate_degrees) * (torch.pi / 180)
        if bool((angle != 0).any()) or self.flip:
            cos, sin = torch.cos(angle), torch.sin(angle)
            rotation = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
            theta = torch.cat([rotation @ matrix, torch.zeros(n, 2, 1)], 2)
            grid = F.affine_grid(theta, list(images.shape), align_corners=False)
            images = F.grid_sample(
                images, grid, mode="bilinear", padding_mode="reflection", align_corners=False
            )
        gain, bias = uniform(1 - self.gain, 1 + self.gain), uniform(-self.bias, self.bias)
        return images.mul_(gain[:, None, None, None]).add_(bias[:, None, None, None])


def split_rows(frame: pd.DataFrame, task: Task, split: str, rule: SplitRule = BY_PATIENT) -> np.ndarray:
    """The rows of ``frame`` that are ``split``'s rows of ``task``, as a boolean mask.

    ``frame`` needs the columns the task's predicate and the rule read (``modality``, ``collection``,
    ``label``, ``label_source``, ``split``, ``image_id``).
    """
    return task.rows_of(frame) & (rule.of(frame) == split).to_numpy()


READ_COLUMNS = [
    "split",
    "image_id",
    "modality",
    "collection",
    "label",
    "label_source",
    "label_origin",
    "pixels",
]


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
    """What a worker's transform needs: which split and task, and how tiles are fed."""

    split: str
    task: Task
    tile_input: TileInput
    rule: SplitRule = BY_PATIENT


def make_transform(spec: ReaderSpec) -> Any:
    """The Petastorm ``TransformSpec`` for a split and task: decode and label the task's rows.

    Pixels stay ``uint8`` (3, size, size): normalisation and augmentation happen on the torch side, on
    whole batches. Rows outside the split or task keep their place with ``target`` :data:`IGNORE` and a
    blank image (never decoded): Petastorm ends a read early when a row group's transform returns no rows
    at all (uber/petastorm#507), which silently dropped the rest of a split. Consumers drop ignored rows.
    """
    from petastorm import TransformSpec

    size = spec.tile_input.size

    def transform(frame: pd.DataFrame) -> pd.DataFrame:
        keep = split_rows(frame, spec.task, spec.split, spec.rule)
        images = np.zeros((len(frame), 3, size, size), dtype=np.uint8)
        for i in np.flatnonzero(keep):
            images[i] = spec.tile_input.pixels(frame["pixels"].iat[i])
        targets = frame["label"].map(spec.task.label_map).where(keep, IGNORE).astype(np.int64).to_numpy()
        return pd.DataFrame({"image": list(images), "target": targets})

    return TransformSpec(
        transform,
        edit_fields=[
            ("image", np.uint8, (3, size, size), False),
            ("target", np.int64, (), False),
        ],
        selected_fields=["image", "target"],
    )
