"""Cutting a normalised image into tiles and labelling each one from the findings' geometry.

Runs in the executors. The rules (documented for users in docs/tables.md) are applied in order:
background tiles (too little tissue) are dropped; histology tiles take the image label (a BreaKHis image
*is* the lesion); tiles of a normal mammogram are normal; on an abnormal mammogram a tile takes the most
severe label of the findings it overlaps enough, is left unlabelled when a finding has no geometry or
when it only grazes a finding, and is normal tissue otherwise.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import imagehash
import numpy as np
from PIL import Image, ImageDraw

from pipelines.sources.base import SEVERITY, Geometry

# A grayscale pixel is tissue above this value (0-255) after normalisation; dark film is background.
MAMMOGRAPHY_TISSUE_LEVEL = 16
# An RGB pixel is background (empty slide) when every channel is above this value.
HISTOLOGY_WHITE_LEVEL = 220


@dataclass(frozen=True)
class TileLabel:
    y: int
    x: int
    label: str | None
    label_source: str
    overlap: float
    tissue: float


def rasterise(geometry: Geometry, height: int, width: int, mask: np.ndarray | None = None) -> np.ndarray:
    """The region of a finding in normalised pixels: a filled circle, a filled polygon, or the mask."""
    if geometry.kind == "mask":
        if mask is None:
            raise ValueError("a mask geometry needs its mask")
        return np.asarray(mask, dtype=bool)[:height, :width]
    canvas = Image.new("1", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    if geometry.kind == "circle":
        x, y, r = float(geometry.x or 0), float(geometry.y or 0), max(float(geometry.radius or 0), 1.0)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=1)
    elif len(geometry.points) >= 3:
        draw.polygon([tuple(p) for p in geometry.points], fill=1)
    return np.asarray(canvas, dtype=bool)


def tile_origins(height: int, width: int, size: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners of a grid covering every pixel; the last row and column align to the edges."""

    def axis(length: int) -> list[int]:
        if length <= size:
            return [0]
        starts = list(range(0, length - size + 1, stride))
        if starts[-1] != length - size:
            starts.append(length - size)
        return starts

    return [(y, x) for y in axis(height) for x in axis(width)]


def cut_tile(image: np.ndarray, y: int, x: int, size: int) -> np.ndarray:
    """The tile at (y, x), padded to size x size (black for mammograms, white for histology)."""
    tile = image[y : y + size, x : x + size]
    if tile.shape[0] == size and tile.shape[1] == size:
        return np.ascontiguousarray(tile)
    fill = 255 if image.ndim == 3 else 0
    padded = np.full((size, size, *image.shape[2:]), fill, dtype=image.dtype)
    padded[: tile.shape[0], : tile.shape[1]] = tile
    return padded


def tissue_fraction(tile: np.ndarray) -> float:
    """Fraction of tissue pixels: bright enough on a mammogram, not empty-slide white on histology."""
    if tile.ndim == 2:
        return float(np.mean(tile > MAMMOGRAPHY_TISSUE_LEVEL))
    return float(np.mean(tile.min(axis=2) < HISTOLOGY_WHITE_LEVEL))


def label_tiles(
    image: np.ndarray,
    modality: str,
    image_label: str,
    findings: list[tuple[str, np.ndarray | None]],
    size: int,
    stride: int,
    min_tissue: float,
    overlap_threshold: float,
) -> list[TileLabel]:
    """Label every non-background tile of a normalised image (see the module docstring for the rules).

    Args:
        image: the normalised image.
        modality: ``mammography`` or ``histology``.
        image_label: the image's label.
        findings: (label, region at the normalised size or ``None`` when the finding has no geometry).
        size, stride: the grid.
        min_tissue: tiles with a smaller tissue fraction are dropped.
        overlap_threshold: |tile ∩ region| / min(|tile|, |region|) needed to take a finding's label.

    Returns:
        One :class:`TileLabel` per kept tile.
    """
    height, width = image.shape[:2]
    areas = [(label, region, int(region.sum()) if region is not None else 0) for label, region in findings]
    any_without_geometry = any(region is None for _, region, _ in areas)
    labels = []
    for y, x in tile_origins(height, width, size, stride):
        tissue = tissue_fraction(cut_tile(image, y, x, size))
        if tissue < min_tissue:
            continue
        overlaps = [
            (label, float(region[y : y + size, x : x + size].sum()) / max(1, min(size * size, area)))
            for label, region, area in areas
            if region is not None and area > 0
        ]
        best = max((o for _, o in overlaps), default=0.0)
        if modality == "histology":
            label, source = image_label, "whole_image"
        elif image_label == "normal":
            label, source = "normal", "normal_image"
        else:
            hits = [label for label, o in overlaps if o >= overlap_threshold]
            if hits:
                label, source = max(hits, key=SEVERITY.__getitem__), "finding"
            elif any_without_geometry:
                label, source = None, "no_geometry"
            elif best > 0:
                label, source = None, "ambiguous"
            else:
                label, source = "normal", "normal_tissue"
        labels.append(TileLabel(y, x, label, source, best, tissue))
    return labels


def encode_png(array: np.ndarray) -> bytes:
    """8-bit grayscale or RGB PNG, lightly compressed: tiles are written once and read many times."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(buffer, format="PNG", compress_level=2)
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """The inverse of :func:`encode_png`."""
    return np.asarray(Image.open(io.BytesIO(data)))


def perceptual_hash(image: np.ndarray) -> int:
    """64-bit pHash of an image as a signed int64 (Spark's LongType); robust to resizing and small shifts."""
    gray = Image.fromarray(image).convert("L")
    value = int(str(imagehash.phash(gray, hash_size=8)), 16)
    return value - (1 << 64) if value >= 1 << 63 else value
