"""Canonical images: one orientation, cropped to the tissue, one intensity range, one resolution.

Runs in the executors, once per image. Mammograms are flipped so the breast lies against the left edge,
cropped to the breast (film labels and markers outside it are dropped), intensity-stretched within the
breast and resized to a configured number of rows; histology is only resized. The :class:`Transform`
records each step so that finding geometry (circles, outlines, masks) follows the pixels exactly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from pipelines.sources.base import Decoded, Geometry

# Mask computations run on a copy about this many rows high: fast even for 4,700-row DDSM films.
_COARSE_ROWS = 256
_MARGIN = 0.02


@dataclass(frozen=True)
class Transform:
    """How a decoded image became its normalised version: flip, then crop, then scale."""

    flipped: bool
    top: int
    left: int
    bottom: int
    right: int
    scale: float
    height: int
    width: int

    def to_dict(self) -> dict[str, float | int | bool]:
        return dataclasses.asdict(self)


def _gray(pixels: np.ndarray) -> np.ndarray:
    return pixels if pixels.ndim == 2 else pixels[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _otsu(values: np.ndarray) -> float:
    histogram, edges = np.histogram(values, bins=128, range=(0.0, 1.0))
    weights = histogram.astype(np.float64)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(weights)
    w1 = w0[-1] - w0
    m0 = np.cumsum(weights * centers) / np.maximum(w0, 1)
    m1 = (np.sum(weights * centers) - np.cumsum(weights * centers)) / np.maximum(w1, 1)
    return float(centers[np.argmax(w0 * w1 * (m0 - m1) ** 2)])


def breast_mask(gray: np.ndarray) -> tuple[np.ndarray, float]:
    """A coarse mask of the breast (largest bright component) and the coarse-to-full scale factor."""
    factor = max(1, gray.shape[0] // _COARSE_ROWS)
    coarse = gray[::factor, ::factor]
    threshold = min(_otsu(coarse), 0.5) * 0.5 + 0.02
    mask = ndimage.binary_opening(coarse > threshold, iterations=2)
    labels, count = ndimage.label(mask)
    if count == 0:
        return np.ones_like(coarse, dtype=bool), factor
    sizes = ndimage.sum(mask, labels, index=range(1, count + 1))
    return labels == (int(np.argmax(sizes)) + 1), factor


def _resize(pixels: np.ndarray, height: int, width: int, resample: Image.Resampling) -> np.ndarray:
    image = Image.fromarray(pixels)
    return np.asarray(image.resize((width, height), resample))


def normalise(decoded: Decoded, modality: str, height: int) -> tuple[np.ndarray, Transform]:
    """The normalised image (uint8; (H, W) for mammography, (H, W, 3) for histology) and its transform."""
    pixels = np.clip(decoded.pixels.astype(np.float32), 0.0, 1.0)
    rows, cols = pixels.shape[:2]
    if modality == "mammography":
        gray = _gray(pixels)
        half = cols // 2
        flipped = bool(gray[:, half:].mean() > gray[:, :half].mean())
        if flipped:
            gray = gray[:, ::-1]
        mask, factor = breast_mask(gray)
        ys, xs = np.nonzero(mask)
        margin_y, margin_x = round(_MARGIN * rows), round(_MARGIN * cols)
        top = max(0, int(ys.min()) * factor - margin_y)
        bottom = min(rows, (int(ys.max()) + 1) * factor + margin_y)
        left = max(0, int(xs.min()) * factor - margin_x)
        right = min(cols, (int(xs.max()) + 1) * factor + margin_x)
        crop = gray[top:bottom, left:right]
        breast = gray[::factor, ::factor][mask]
        low, high = np.percentile(breast if breast.size else crop, [0.5, 99.5])
        stretched = np.clip((crop - low) / max(high - low, 1e-6), 0.0, 1.0)
        stretched[crop <= low] = 0.0
        out = (stretched * 255).astype(np.uint8)
    else:
        flipped, top, left, bottom, right = False, 0, 0, rows, cols
        out = (np.repeat(pixels[:, :, None], 3, axis=2) if pixels.ndim == 2 else pixels[..., :3]) * 255
        out = out.astype(np.uint8)
    scale = height / out.shape[0]
    width = max(1, round(out.shape[1] * scale))
    resized = _resize(np.ascontiguousarray(out), height, width, Image.Resampling.LANCZOS)
    return resized, Transform(flipped, top, left, bottom, right, scale, height, width)


def _map_point(x: float, y: float, t: Transform, decoded_width: int) -> tuple[float, float]:
    if t.flipped:
        x = decoded_width - 1 - x
    return (x - t.left) * t.scale, (y - t.top) * t.scale


def transform_geometry(geometry: Geometry, t: Transform, decoded_width: int) -> Geometry:
    """Map a finding from decoded pixels to normalised pixels; masks go through :func:`transform_mask`."""
    if geometry.kind == "circle" and geometry.x is not None and geometry.y is not None:
        x, y = _map_point(geometry.x, geometry.y, t, decoded_width)
        return dataclasses.replace(geometry, x=x, y=y, radius=(geometry.radius or 0.0) * t.scale)
    if geometry.kind == "outline":
        points = tuple(_map_point(px, py, t, decoded_width) for px, py in geometry.points)
        return dataclasses.replace(geometry, points=points)
    return geometry


def transform_mask(mask: np.ndarray, t: Transform, decoded_shape: tuple[int, int]) -> np.ndarray:
    """A decoded-size lesion mask through the same flip, crop and resize: bool (t.height, t.width).

    Real CBIS-DDSM masks are sometimes a few pixels off the image's size; they are resized to it first.
    """
    binary = (np.asarray(mask) > 0).astype(np.uint8) * 255
    if binary.shape[:2] != decoded_shape:
        binary = _resize(binary, decoded_shape[0], decoded_shape[1], Image.Resampling.NEAREST)
    if t.flipped:
        binary = binary[:, ::-1]
    crop = np.ascontiguousarray(binary[t.top : t.bottom, t.left : t.right])
    return _resize(crop, t.height, t.width, Image.Resampling.BILINEAR) >= 128
