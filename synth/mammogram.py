"""Synthetic mammograms with lesions a CNN can learn: shared by the MIAS, DDSM and CBIS-DDSM generators.

An image is a dark background with a breast against one side edge (left breasts touch the left edge, right
breasts the right one), fatty tissue with smoothed-noise fibroglandular texture whose amount follows the
collection's density field, a pectoral muscle triangle on MLO views, and the requested lesions:

- ``round``: benign circumscribed round/oval mass, smooth edge;
- ``ill_defined``: benign mass with a blurred, lobulated edge (MIAS ``MISC``);
- ``spiculated``: malignant mass, irregular core with radiating lines;
- ``benign_calc``: a few coarse round calcifications, loosely scattered;
- ``malignant_calc``: a tight cluster of many fine, pleomorphic (elongated) micro-calcifications.

Lesion size is relative to the image but never below a few pixels, so a downscaled image still shows it;
contrast grows with the DDSM-style subtlety (1 = subtle, 5 = obvious) and dense tissue can hide a subtle
lesion, which keeps the task learnable but not trivial.  Everything is vectorised numpy on the image (or a
window around each lesion), so a full-size 4696x3024 view takes about a second.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal, NamedTuple

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from synth.texture import sigmoid, smooth_noise

LesionKind = Literal["round", "ill_defined", "spiculated", "benign_calc", "malignant_calc"]
MALIGNANT: frozenset[str] = frozenset({"spiculated", "malignant_calc"})
CALCIFICATIONS: frozenset[str] = frozenset({"benign_calc", "malignant_calc"})


@dataclass(frozen=True, eq=False)
class Lesion:
    """One drawn abnormality in pixel coordinates of the image as written (origin top-left, y down)."""

    kind: LesionKind
    x: float
    y: float
    radius: float
    """Radius of a circle around the centre that encloses the abnormality."""
    outline: np.ndarray
    """(n, 2) closed polygon of (x, y) points around the abnormality: the mass edge or the cluster."""
    subtlety: int

    @property
    def malignant(self) -> bool:
        """Whether this kind of lesion is drawn as (and labelled) malignant."""
        return self.kind in MALIGNANT

    def mirrored(self, width: int) -> Lesion:
        """The same lesion after the image is flipped left-right."""
        outline = self.outline.copy()
        outline[:, 0] = width - 1 - outline[:, 0]
        return replace(self, x=width - 1 - self.x, outline=outline)

    def mask(self, height: int, width: int) -> np.ndarray:
        """Boolean image of the region inside :attr:`outline` (what a CBIS-DDSM ROI mask shows)."""
        canvas = Image.new("1", (width, height), 0)
        ImageDraw.Draw(canvas).polygon([tuple(p) for p in self.outline.tolist()], fill=1)
        return np.asarray(canvas, dtype=bool)


def draw_mammogram(
    height: int,
    width: int,
    rng: np.random.Generator,
    *,
    left: bool,
    mlo: bool,
    density: float,
    lesions: Sequence[tuple[LesionKind, int]] = (),
) -> tuple[np.ndarray, list[Lesion]]:
    """Draw one view; returns float32 pixels in [0, 1] (bright = dense) and the lesions where drawn.

    ``density`` in [0, 1] is the fraction of fibroglandular tissue (MIAS F/G/D, BI-RADS density 1-4);
    ``lesions`` lists (kind, subtlety) pairs.  The breast is drawn against the left edge and mirrored for
    right breasts, lesion geometry included.
    """
    y = np.arange(height, dtype=np.float32)[:, None]
    x = np.arange(width, dtype=np.float32)[None, :]
    if mlo:  # the MLO breast runs up the chest wall to the armpit, with the pectoral muscle on top
        cy, half_height = height * rng.uniform(0.5, 0.58), height * rng.uniform(0.5, 0.6)
    else:
        cy, half_height = height * rng.uniform(0.45, 0.55), height * rng.uniform(0.36, 0.45)
    depth = width * rng.uniform(0.6, 0.85)
    dx, dy = x / depth, (y - cy) / half_height
    angle = np.arctan2(dy, dx)
    wobble = 1.0 + sum(rng.uniform(0, 0.02) * np.cos(k * angle + rng.uniform(0, 6.3)) for k in (2, 3, 5))
    rho = np.hypot(dx, dy) / wobble
    thickness = np.sqrt(np.clip(1.0 - rho**2, 0.0, 1.0))

    shape = (height, width)
    texture = (
        0.6 * smooth_noise(shape, rng, height / 6)
        + 0.3 * smooth_noise(shape, rng, height / 18)
        + 0.2 * smooth_noise(shape, rng, height / 45)
    )
    central = np.exp(-((dy / 0.7) ** 2)) * np.clip(1.15 - rho, 0.0, 1.0)
    glandular = sigmoid(3.0 * (texture + 2.2 * density + 1.2 * central - 1.9))
    glandular *= 1.0 + 0.07 * smooth_noise(shape, rng, height / 120)
    tissue = 0.2 + 0.16 * np.sqrt(thickness) + 0.3 * glandular * thickness**0.3
    skin = 0.06 * np.exp(-(((1.0 - rho) / 0.02) ** 2))
    inside = sigmoid((1.0 - rho) * 60.0)
    image = 0.04 + inside * (tissue + skin - 0.04)
    if mlo:
        across, down = width * rng.uniform(0.2, 0.35), height * rng.uniform(0.35, 0.55)
        muscle = sigmoid((1.0 - x / across - y / down) * 25.0)
        image = image * (1.0 - muscle) + muscle * (0.6 + 0.04 * smooth_noise(shape, rng, height / 20))
    else:
        muscle = np.zeros(shape, dtype=np.float32)

    drawn: list[Lesion] = []
    for kind, subtlety in lesions:
        spot = _place(kind, rho, muscle, drawn, rng)
        draw = _draw_calcifications if kind in CALCIFICATIONS else _draw_mass
        outline = draw(image, kind, spot, 0.08 + 0.035 * subtlety, rng)
        enclosing = float(np.hypot(outline[:, 0] - spot.x, outline[:, 1] - spot.y).max())
        drawn.append(Lesion(kind, spot.x, spot.y, enclosing, outline, subtlety))

    image = image + rng.normal(0.0, 0.012, shape).astype(np.float32)
    image = np.clip(image, 0.0, 1.0).astype(np.float32)
    if left:
        return image, drawn
    return np.ascontiguousarray(image[:, ::-1]), [lesion.mirrored(width) for lesion in drawn]


def quantize(image: np.ndarray, bits: int) -> np.ndarray:
    """Pixels in [0, 1] as unsigned integers using the full ``bits`` range."""
    dtype = np.uint8 if bits <= 8 else np.uint16
    return np.round(image * (2**bits - 1)).astype(dtype)


class Spot(NamedTuple):
    """Where a lesion goes and its nominal size, before drawing decides its exact outline."""

    x: float
    y: float
    radius: float


def _place(
    kind: LesionKind, rho: np.ndarray, muscle: np.ndarray, others: Sequence[Lesion], rng: np.random.Generator
) -> Spot:
    """Pick a size and a spot well inside the breast, off the pectoral muscle and off other lesions."""
    height, width = rho.shape
    radius = max(5.0 if kind in CALCIFICATIONS else 4.0, rng.uniform(0.035, 0.075) * min(height, width))
    xs = rng.uniform(0, width - 1, 512)
    ys = rng.uniform(0, height - 1, 512)
    rho_there = rho[ys.astype(int), xs.astype(int)]
    ok = (rho_there < 0.7) & (muscle[ys.astype(int), xs.astype(int)] < 0.05)
    margin = 2.0 * radius
    ok &= (xs > margin) & (xs < width - 1 - margin) & (ys > margin) & (ys < height - 1 - margin)
    for other in others:
        ok &= np.hypot(xs - other.x, ys - other.y) > 1.5 * (radius + other.radius)
    pick = int(np.argmax(ok)) if ok.any() else int(np.argmin(rho_there))
    return Spot(float(xs[pick]), float(ys[pick]), radius)


def _window(
    spot: Spot, extent: float, shape: tuple[int, int]
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """Slices of the image around the spot and the pixel offsets from its centre within them."""
    height, width = shape
    y0, y1 = max(0, int(spot.y - extent)), min(height, int(spot.y + extent) + 2)
    x0, x1 = max(0, int(spot.x - extent)), min(width, int(spot.x + extent) + 2)
    oy = np.arange(y0, y1, dtype=np.float32)[:, None] - spot.y
    ox = np.arange(x0, x1, dtype=np.float32)[None, :] - spot.x
    return (slice(y0, y1), slice(x0, x1)), ox, oy


def _draw_mass(
    image: np.ndarray, kind: LesionKind, spot: Spot, contrast: float, rng: np.random.Generator
) -> np.ndarray:
    """Round, ill-defined or spiculated mass added to ``image`` in place; returns its edge polygon."""
    harmonics = {"round": (2,), "ill_defined": (2, 3, 4), "spiculated": (2, 3, 4, 5, 6, 7)}[kind]
    top = {"round": 0.2, "ill_defined": 0.12, "spiculated": 0.13}[kind]
    amplitudes = rng.uniform(0.0 if kind == "round" else 0.04, top, len(harmonics))
    phases = rng.uniform(0, 2 * np.pi, len(harmonics))

    def edge(theta: np.ndarray) -> np.ndarray:
        terms = zip(harmonics, amplitudes, phases, strict=True)
        return spot.radius * (1.0 + sum(a * np.cos(k * theta + p) for k, a, p in terms))

    reach = 2.8 if kind == "spiculated" else 1.3
    window, ox, oy = _window(spot, spot.radius * reach * 1.3, image.shape)
    distance, theta = np.hypot(ox, oy), np.arctan2(oy, ox)
    rel = distance / edge(theta)
    softness = {"round": 0.06, "ill_defined": 0.25, "spiculated": 0.12}[kind]
    value = sigmoid((1.0 - rel) / softness) * (0.75 + 0.25 * np.sqrt(np.clip(1.0 - rel**2, 0.0, 1.0)))
    if kind == "spiculated":
        value = np.maximum(value, 0.8 * _spicules(value.shape, spot, ox, oy, reach, rng))
    image[window] += contrast * value

    steps = max(32, int(2 * np.pi * spot.radius * 1.5))
    around = np.linspace(0, 2 * np.pi, steps, endpoint=False)
    edge_reach = edge(around) * (1.0 + 1.5 * softness)
    return np.stack([spot.x + edge_reach * np.cos(around), spot.y + edge_reach * np.sin(around)], axis=1)


def _spicules(
    shape: tuple[int, int], spot: Spot, ox: np.ndarray, oy: np.ndarray, reach: float, rng: np.random.Generator
) -> np.ndarray:
    """Thin tapering lines radiating from the centre of a mass, blurred a little, as a [0, 1] window image.

    Drawn as PIL polygons rather than evaluated per pixel and per line, which is what keeps a full-size
    spiculated mass cheap.
    """
    count = int(rng.integers(8, 17))
    angles = rng.uniform(0, 2 * np.pi, count)
    lengths = spot.radius * rng.uniform(1.6, reach, count)
    half_width = max(0.6, 0.07 * spot.radius)
    origin_x, origin_y = -float(ox[0, 0]), -float(oy[0, 0])
    canvas = Image.new("F", (shape[1], shape[0]), 0.0)
    draw = ImageDraw.Draw(canvas)
    for angle, length in zip(angles, lengths, strict=True):
        ux, uy = np.cos(angle), np.sin(angle)
        base = [
            (origin_x - uy * half_width, origin_y + ux * half_width),
            (origin_x + uy * half_width, origin_y - ux * half_width),
        ]
        draw.polygon([*base, (origin_x + ux * length, origin_y + uy * length)], fill=1.0)
    return ndimage.gaussian_filter(np.asarray(canvas), half_width / 2)


def _draw_calcifications(
    image: np.ndarray, kind: LesionKind, spot: Spot, contrast: float, rng: np.random.Generator
) -> np.ndarray:
    """A cluster of bright dots added to ``image`` in place; returns a circle around it."""
    short = min(image.shape)
    if kind == "malignant_calc":
        count = int(rng.integers(8, 26))
        offsets = np.clip(rng.normal(0.0, spot.radius / 2.5, (count, 2)), -spot.radius, spot.radius)
        sigma = max(0.55, 0.0035 * short)
        elongation = rng.uniform(1.0, 3.0, count)
    else:
        count = int(rng.integers(3, 9))
        r = spot.radius * np.sqrt(rng.uniform(0, 1, count))
        a = rng.uniform(0, 2 * np.pi, count)
        offsets = np.stack([r * np.cos(a), r * np.sin(a)], axis=1)
        sigma = max(0.9, 0.006 * short)
        elongation = np.ones(count)
    orientation = rng.uniform(0, np.pi, count)
    brightness = rng.uniform(0.25, 0.45, count) * (contrast / 0.2)

    window, ox, oy = _window(spot, spot.radius + 12 * sigma, image.shape)
    px, py = ox[..., None] - offsets[:, 0], oy[..., None] - offsets[:, 1]
    along = px * np.cos(orientation) + py * np.sin(orientation)
    across = -px * np.sin(orientation) + py * np.cos(orientation)
    dots = np.exp(-0.5 * ((along / (sigma * elongation)) ** 2 + (across / sigma) ** 2)) * brightness
    image[window] += dots.max(axis=-1)

    reach = float(np.hypot(offsets[:, 0], offsets[:, 1]).max()) + 3 * sigma * float(elongation.max())
    around = np.linspace(0, 2 * np.pi, max(24, int(2 * np.pi * reach)), endpoint=False)
    return np.stack([spot.x + reach * np.cos(around), spot.y + reach * np.sin(around)], axis=1)
