"""Canonical images: one orientation, cropped to the tissue, one intensity range, one resolution.

Runs in the executors, once per image (pure numpy, no Spark). Mammograms are flipped so the breast lies
against the left edge, cropped to the breast (film labels and markers outside it are blacked out),
intensity-stretched within the breast and resized to a configured number of rows; histology is only
resized. The :class:`Transform` records each step so that finding geometry (circles, outlines, masks)
follows the pixels exactly.

Coordinates are pixel centres throughout (pixel ``(i, j)`` is the point ``x=j, y=i``), as in the
collections' own annotations and in PIL's drawing functions, so a mirrored column ``x`` is
``width - 1 - x`` and a resize maps ``x`` to ``(x + 0.5) * scale - 0.5``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from pipelines.sources.base import Decoded, Geometry

# Breast detection runs on a strided copy about this many rows high: a 4,700-row DDSM film costs what a
# 256-row thumbnail does, and a coarse pixel (~0.4% of the height) is still far finer than the margin.
_COARSE_ROWS = 256
# Openings of this many coarse pixels remove noise and detach thin bridges (film edges, tape) from the
# breast; the kept region is then grown by _GROW coarse pixels so the skin line and a small margin survive.
_OPEN = 2
_GROW = 3
# Intensity is stretched between these percentiles of the breast's pixels: a few saturated calcifications
# or a dark air gap must not set the whole range.
_LOW_PERCENTILE, _HIGH_PERCENTILE = 0.5, 99.5
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class Transform:
    """How a decoded image became its normalised version: flip, then crop, then scale."""

    flipped: bool  # mirrored left-right so the chest wall / breast base is on the left
    top: int  # crop box in (flipped) decoded pixels, bottom/right exclusive
    left: int
    bottom: int
    right: int
    scale: float  # normalised rows per decoded row (columns differ only by the rounding of the width)
    height: int  # normalised size
    width: int

    def to_dict(self) -> dict[str, float | int | bool]:
        """Plain Python values, for a struct column or JSON in the images table."""
        return dataclasses.asdict(self)


def _otsu(values: np.ndarray) -> float:
    """Otsu's threshold of values in [0, 1] (128-bin histogram: fast, and precise enough for a mask)."""
    histogram, edges = np.histogram(values, bins=128, range=(0.0, 1.0))
    weights = histogram.astype(np.float64)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(weights)
    w1 = w0[-1] - w0
    s0 = np.cumsum(weights * centers)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    return float(centers[np.argmax(w0 * w1 * (m0 - m1) ** 2)])


def _breast_mask(coarse: np.ndarray) -> np.ndarray:
    """The breast on a coarse grayscale image: the largest bright connected component, holes filled.

    The threshold sits halfway between the film background (1st percentile) and Otsu's threshold: low
    enough to keep fatty tissue near the skin line, which is much darker than the glandular tissue that
    pulls Otsu's threshold up. Labels and markers are separate blobs and lose to the breast on size.
    """
    background = float(np.percentile(coarse, 1))
    bright = coarse > background + 0.5 * (_otsu(coarse) - background)
    bright = ndimage.binary_opening(bright, iterations=_OPEN)
    labels, count = ndimage.label(bright)
    if count == 0:  # a blank or uniform image: keep everything rather than invent a breast
        return np.ones(coarse.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())[1:]
    return ndimage.binary_fill_holes(labels == int(np.argmax(sizes)) + 1)


def _resize(pixels: np.ndarray, height: int, width: int, resample: Image.Resampling) -> np.ndarray:
    """PIL resize of a uint8 array; PIL widens its kernel when shrinking, so this is antialiased."""
    image = Image.fromarray(np.ascontiguousarray(pixels))
    return np.asarray(image.resize((width, height), resample, reducing_gap=3.0))


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    return (pixels * 255.0 + 0.5).astype(np.uint8)


def _mammogram(pixels: np.ndarray) -> tuple[np.ndarray, bool, tuple[int, int, int, int]]:
    """Flip, crop and stretch a mammogram; returns uint8 pixels, whether flipped and the crop box."""
    gray = pixels if pixels.ndim == 2 else pixels[..., :3] @ _LUMA
    rows, cols = gray.shape
    factor = max(1, rows // _COARSE_ROWS)
    coarse = gray[::factor, ::factor]
    breast = _breast_mask(coarse)
    # The chest wall side holds the breast's base (and, on MLO views, the pectoral muscle): more breast.
    half = coarse.shape[1] // 2
    flipped = bool(breast[:, coarse.shape[1] - half :].sum() > breast[:, :half].sum())
    keep = ndimage.binary_dilation(breast, iterations=_GROW)
    row_hits, col_hits = np.flatnonzero(keep.any(axis=1)), np.flatnonzero(keep.any(axis=0))
    r0, r1, c0, c1 = row_hits[0], row_hits[-1] + 1, col_hits[0], col_hits[-1] + 1
    top, bottom, left, right = r0 * factor, min(rows, r1 * factor), c0 * factor, min(cols, c1 * factor)
    crop = gray[top:bottom, left:right]
    # Everything outside the grown breast (labels, markers, film edges inside the box) becomes background.
    inside = np.repeat(np.repeat(keep[r0:r1, c0:c1], factor, axis=0), factor, axis=1)
    inside = inside[: crop.shape[0], : crop.shape[1]]
    low, high = np.percentile(coarse[breast], [_LOW_PERCENTILE, _HIGH_PERCENTILE])
    stretched = np.clip((crop - low) / max(float(high - low), 1e-6), 0.0, 1.0) * inside
    out = _to_uint8(stretched)
    if flipped:
        out = out[:, ::-1]
        left, right = cols - right, cols - left
    return out, flipped, (int(top), int(left), int(bottom), int(right))


def normalise(decoded: Decoded, modality: str, height: int) -> tuple[np.ndarray, Transform]:
    """The normalised image and the transform that produced it.

    Mammography (uint8 (H, W)): flipped so the breast is against the left edge, cropped to the breast
    with a small margin, blacked out outside it, stretched to the full range within it. Histology (uint8
    (H, W, 3)): BreaKHis images are the lesion itself, so nothing is cropped; only clipped and resized.
    Both keep their aspect ratio and get exactly ``height`` rows. RGB mammograms are converted to
    luminance and grayscale histology is replicated to three channels rather than rejected.

    Raises:
        ValueError: an unknown modality or a non-positive height (the ingest job quarantines the image).
    """
    if height < 1:
        raise ValueError(f"normalised height must be positive, got {height}")
    pixels = np.clip(np.asarray(decoded.pixels, dtype=np.float32), 0.0, 1.0)
    rows, cols = pixels.shape[:2]
    if modality == "mammography":
        out, flipped, (top, left, bottom, right) = _mammogram(pixels)
    elif modality == "histology":
        rgb = np.repeat(pixels[:, :, None], 3, axis=2) if pixels.ndim == 2 else pixels[..., :3]
        out, flipped, (top, left, bottom, right) = _to_uint8(rgb), False, (0, 0, rows, cols)
    else:
        raise ValueError(f"unknown modality {modality!r}")
    scale = height / out.shape[0]
    width = max(1, round(out.shape[1] * scale))
    resized = _resize(out, height, width, Image.Resampling.LANCZOS)
    return resized, Transform(flipped, top, left, bottom, right, float(scale), height, width)


def _map_point(x: float, y: float, t: Transform, decoded_width: int) -> tuple[float, float]:
    """A decoded pixel-centre coordinate in normalised pixels (each axis with its exact resize factor)."""
    if t.flipped:
        x = decoded_width - 1 - x
    scale_x = t.width / (t.right - t.left)
    scale_y = t.height / (t.bottom - t.top)
    return (x - t.left + 0.5) * scale_x - 0.5, (y - t.top + 0.5) * scale_y - 0.5


def transform_geometry(geometry: Geometry, t: Transform, decoded_width: int) -> Geometry:
    """A finding's geometry in normalised pixels; masks are returned as is (see :func:`transform_mask`).

    ``decoded_width`` is the decoded image's width, needed to mirror x when the image was flipped.
    """
    if geometry.kind == "circle" and geometry.x is not None and geometry.y is not None:
        x, y = _map_point(geometry.x, geometry.y, t, decoded_width)
        radius = None if geometry.radius is None else geometry.radius * t.scale
        return dataclasses.replace(geometry, x=x, y=y, radius=radius)
    if geometry.kind == "outline":
        points = tuple(_map_point(px, py, t, decoded_width) for px, py in geometry.points)
        return dataclasses.replace(geometry, points=points)
    return geometry


def transform_mask(mask: np.ndarray, t: Transform, decoded_shape: tuple[int, int]) -> np.ndarray:
    """A lesion mask (nonzero = lesion) through the same flip, crop and resize: bool (t.height, t.width).

    Real CBIS-DDSM masks are sometimes not the size of their image (``decoded_shape``, (rows, cols));
    they are stretched to it first, which is how the collection's authors overlay them.
    """
    mask = np.asarray(mask)
    binary = (mask.max(axis=2) if mask.ndim == 3 else mask) > 0
    binary = binary.astype(np.uint8) * 255
    if binary.shape != tuple(decoded_shape):
        binary = _resize(binary, decoded_shape[0], decoded_shape[1], Image.Resampling.NEAREST)
    if t.flipped:
        binary = binary[:, ::-1]
    crop = binary[t.top : t.bottom, t.left : t.right]
    # Bilinear shrinking averages the covered area: a normalised pixel is lesion when it is half covered,
    # except that a lesion smaller than that (a calcification) keeps every pixel it touches.
    coverage = _resize(crop, t.height, t.width, Image.Resampling.BILINEAR)
    region = coverage >= 128
    return region if region.any() else coverage > 0
