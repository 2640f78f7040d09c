"""Synthetic H&E histology tiles (BreaKHis): pink stroma, purple nuclei, differences a CNN can learn.

Colour comes from a Beer-Lambert mix of two stains, so the palette looks like H&E: hematoxylin (nuclei,
purple-blue) and eosin (stroma, pink).  Each image gets an "atypia" score; benign tissue usually has low
atypia and malignant high, but the two distributions overlap, so some images are genuinely ambiguous:

- benign: fewer, small, round, regular, moderately stained nuclei arranged around glands (rings with a
  pale lumen);
- malignant: crowded sheets of large, pleomorphic, irregular, dark nuclei.

Magnification scales the nuclei (and, inversely, how many fit in the frame).  Nuclei are rendered for all
pixels at once: a k-d tree finds the two nearest nucleus centres of every pixel, and the nucleus shape
(ellipse with irregular edge) is evaluated from those centres' parameters.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from synth.texture import sigmoid, smooth_noise

# Optical density of each stain per unit concentration, for the R, G and B channels.
HEMATOXYLIN = np.array([0.65, 0.70, 0.29], dtype=np.float32) * 1.6
EOSIN = np.array([0.07, 0.99, 0.11], dtype=np.float32) * 0.9


def draw_histology(
    height: int,
    width: int,
    rng: np.random.Generator,
    *,
    malignant: bool,
    magnification: int,
    threads: int = -1,
) -> np.ndarray:
    """One RGB uint8 tile of ``height`` x ``width`` (BreaKHis is 460 x 700) at ``magnification`` (40-400);
    ``threads`` for the nucleus look-up (-1: every core; the result does not depend on it)."""
    atypia = rng.beta(5, 2) if malignant else rng.beta(2, 5)
    radius = 3.2 * (magnification / 100) ** 0.85 * (width / 700) * (1.0 + 0.6 * atypia)
    shape = (height, width)
    glands = rng.uniform() < (0.2 if malignant else 0.85)
    coverage = 0.12 + 0.3 * atypia
    count = min(20000, int(coverage * height * width / (np.pi * radius**2)))
    if glands:
        centres, lumens = _gland_nuclei(shape, count, radius, rng)
    else:
        centres, lumens = _sheet_nuclei(shape, count, radius, rng), np.zeros((0, 3))

    n = len(centres)
    size = radius * rng.lognormal(0.0, 0.08 + 0.3 * atypia, n)
    aspect = rng.uniform(0.85 - 0.4 * atypia, 1.0, n)
    orientation = rng.uniform(0, np.pi, n)
    bumps = rng.uniform(0, 0.03 + 0.2 * atypia, (n, 3))
    phases = rng.uniform(0, 2 * np.pi, (n, 3))
    darkness = rng.uniform(0.65, 0.85, n) + 0.4 * atypia

    rows, cols = np.mgrid[0:height, 0:width]
    pixels = np.stack([cols.ravel(), rows.ravel()], axis=1).astype(np.float32)
    # Only pixels within reach of a centre can be inside a nucleus: the others are skipped entirely.
    reach = 1.5 * float(size.max())
    # The query is most of a tile's time; its result does not depend on the threads.
    distance, nearest = cKDTree(centres).query(pixels, k=2, distance_upper_bound=reach, workers=threads)
    nuclei = np.zeros(height * width, dtype=np.float32)
    for near, idx in zip(np.isfinite(distance).T, nearest.T, strict=True):
        idx = idx[near]
        offset = pixels[near] - centres[idx]
        cos, sin = np.cos(orientation[idx]), np.sin(orientation[idx])
        along = offset[:, 0] * cos + offset[:, 1] * sin
        across = (-offset[:, 0] * sin + offset[:, 1] * cos) / aspect[idx]
        theta = np.arctan2(across, along)
        bump = sum(bumps[idx, k] * np.cos((k + 2) * theta + phases[idx, k]) for k in range(3))
        inside = sigmoid((1.0 - np.hypot(along, across) / (size[idx] * (1.0 + bump))) * 8.0) * darkness[idx]
        nuclei[near] = np.maximum(nuclei[near], inside)
    nuclei = nuclei.reshape(shape) * (0.85 + 0.15 * smooth_noise(shape, rng, max(1.5, radius / 2)))

    fibres = smooth_noise((height, width * 4), rng, 6.0 * width / 700)[:, ::4]
    stroma = 0.45 + 0.12 * fibres + 0.1 * smooth_noise(shape, rng, 60.0)
    spaces = sigmoid((smooth_noise(shape, rng, 90.0 * width / 700) - 1.3) * 4.0)
    stroma *= 1.0 - 0.9 * spaces
    if len(lumens):
        bound = 2 * lumens[:, 2].max()
        lumen_dist, which = cKDTree(lumens[:, :2]).query(pixels, distance_upper_bound=bound, workers=-1)
        near = np.isfinite(lumen_dist)
        pale = np.zeros(height * width)
        pale[near] = sigmoid((1.0 - lumen_dist[near] / lumens[which[near], 2]) * 6.0)
        stroma *= 1.0 - 0.85 * pale.reshape(shape)

    hema = (0.08 + nuclei) * rng.uniform(0.85, 1.15)
    eosin = stroma * (1.0 - 0.5 * np.clip(nuclei, 0, 1)) * rng.uniform(0.8, 1.2)
    density = hema[..., None] * HEMATOXYLIN + eosin[..., None] * EOSIN
    rgb = 255.0 * np.exp(-density) + rng.normal(0.0, 3.0, (*shape, 3))
    rgb = ndimage.gaussian_filter(rgb, (0.6, 0.6, 0))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _gland_nuclei(
    shape: tuple[int, int], count: int, radius: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Nuclei in regular rings around pale lumens, plus a few scattered stromal nuclei.

    Returns nucleus centres (n, 2) as (x, y) and lumens (m, 3) as (x, y, radius).
    """
    height, width = shape
    ring = radius * rng.uniform(4.0, 8.0, max(1, count // 14))
    per_ring = np.maximum(6, (2 * np.pi * ring / (2.6 * radius)).astype(int))
    keep = np.cumsum(per_ring) <= max(count, per_ring[0])
    ring, per_ring = ring[keep], per_ring[keep]
    lumens = np.stack([rng.uniform(0, width, len(ring)), rng.uniform(0, height, len(ring)), ring], axis=1)
    owner = np.repeat(np.arange(len(ring)), per_ring)
    step = np.concatenate([np.arange(k) / k for k in per_ring]) * 2 * np.pi + rng.uniform(0, 0.2, len(owner))
    jitter = rng.normal(0.0, 0.15 * radius, (len(owner), 2))
    centres = lumens[owner, :2] + lumens[owner, 2:3] * np.stack([np.cos(step), np.sin(step)], axis=1) + jitter
    stromal = np.stack(
        [rng.uniform(0, width, count // 8 + 1), rng.uniform(0, height, count // 8 + 1)], axis=1
    )
    return np.concatenate([centres, stromal]).astype(np.float32), lumens


def _sheet_nuclei(shape: tuple[int, int], count: int, radius: float, rng: np.random.Generator) -> np.ndarray:
    """Nuclei crowded into a few irregular sheets, with some scattered between them; (n, 2) as (x, y)."""
    height, width = shape
    sheets = int(rng.integers(2, 6))
    middles = np.stack([rng.uniform(0, width, sheets), rng.uniform(0, height, sheets)], axis=1)
    spread = rng.uniform(0.1, 0.3, sheets) * min(height, width)
    owner = rng.integers(0, sheets, count)
    crowded = middles[owner] + rng.normal(0.0, 1.0, (count, 2)) * spread[owner, None]
    scattered = np.stack(
        [rng.uniform(0, width, count // 5 + 1), rng.uniform(0, height, count // 5 + 1)], axis=1
    )
    centres = np.concatenate([crowded, scattered])
    inside = (centres[:, 0] > -radius) & (centres[:, 0] < width + radius)
    inside &= (centres[:, 1] > -radius) & (centres[:, 1] < height + radius)
    return centres[inside].astype(np.float32) if inside.sum() >= 2 else centres.astype(np.float32)
