"""Cutting a normalised image into tiles and labelling each one from the findings' geometry.

Runs in the executors. The rules (documented for users in docs/tables.md) are applied in order:
background tiles (too little tissue) are dropped; histology tiles take the image label (a BreaKHis image
*is* the lesion); tiles of a normal mammogram are normal; on an abnormal mammogram a tile takes the most
severe label of the findings it overlaps enough, is left unlabelled when a finding has no geometry or
when it only grazes a finding, and is normal tissue otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from pipelines.sources.base import SEVERITY, Geometry

# A normalised mammogram pixel is tissue above this level (0-255, ~0.06 of the range): the normaliser
# blacks out everything outside the breast and stretches the breast's 0.5th percentile to 0, so only
# film background and the darkest skin-line fat fall below it.
MAMMOGRAPHY_TISSUE_LEVEL = 16
# An RGB histology pixel is tissue when its darkest channel is below this level (stain absorbs light)...
HISTOLOGY_WHITE_LEVEL = 220
# ...or when its channels spread by more than this (pale eosin is pink, an empty slide is neutral grey-white).
HISTOLOGY_MIN_SATURATION = 30


@dataclass(frozen=True)
class TileLabel:
    """The label of one kept tile; see :func:`label_tiles` for the rules."""

    y: int
    x: int
    label: str | None
    label_source: str
    overlap: float
    tissue: float


def rasterise(geometry: Geometry, height: int, width: int, mask: np.ndarray | None = None) -> np.ndarray:
    """The region of a finding in normalised pixels, bool (height, width).

    A filled circle (the pixels whose centre is within the radius), a filled polygon (PIL ImageDraw) or,
    for ``mask`` geometry, the given mask, which must already be at the normalised size. An outline of fewer
    than three points or a circle without a centre is an empty region: the labeller then treats the
    finding as one without geometry.
    """
    if geometry.kind == "mask":
        if mask is None or np.shape(mask) != (height, width):
            raise ValueError(f"a mask geometry needs its ({height}, {width}) mask")
        return np.asarray(mask) > 0
    if geometry.kind == "circle":
        if geometry.x is None or geometry.y is None:
            return np.zeros((height, width), dtype=bool)
        # Pixel centres within the radius (exact, unlike PIL's ellipse, which rounds the box and includes
        # its edges). A calcification's circle can shrink below a pixel: keep at least the pixel it is on.
        radius = max(geometry.radius or 0.0, 0.75)
        ys = (np.arange(height, dtype=np.float32) - geometry.y) ** 2
        xs = (np.arange(width, dtype=np.float32) - geometry.x) ** 2
        return ys[:, None] + xs[None, :] <= radius**2
    canvas = Image.new("1", (width, height), 0)
    if geometry.kind == "outline" and len(geometry.points) >= 3:
        ImageDraw.Draw(canvas).polygon([(float(px), float(py)) for px, py in geometry.points], fill=1)
    return np.asarray(canvas, dtype=bool)


def tile_origins(height: int, width: int, size: int, stride: int) -> list[tuple[int, int]]:
    """(y, x) of every tile of a grid covering every pixel, row by row.

    Tiles start every ``stride`` pixels; when that leaves pixels uncovered at the bottom or right, one
    more row or column of tiles is aligned to the edge (overlapping its neighbour rather than padding).
    A dimension shorter than ``size`` gets a single tile, padded by :func:`cut_tile`.
    """
    if size < 1 or not 1 <= stride <= size:
        raise ValueError(f"need 1 <= stride <= size to cover every pixel, got size {size}, stride {stride}")

    def starts(length: int) -> list[int]:
        if length <= size:
            return [0]
        found = list(range(0, length - size + 1, stride))
        return found if found[-1] == length - size else [*found, length - size]

    return [(y, x) for y in starts(height) for x in starts(width)]


def cut_tile(image: np.ndarray, y: int, x: int, size: int) -> np.ndarray:
    """The tile at (y, x), padded to size x size with background: black mammogram, white slide (RGB)."""
    tile = image[y : y + size, x : x + size]
    if tile.shape[:2] == (size, size):
        return np.ascontiguousarray(tile)
    padded = np.full((size, size, *image.shape[2:]), 255 if image.ndim == 3 else 0, dtype=image.dtype)
    padded[: tile.shape[0], : tile.shape[1]] = tile
    return padded


def tissue_fraction(tile: np.ndarray) -> float:
    """Fraction of tissue pixels: above the background level on a mammogram, not empty slide on RGB.

    See ``MAMMOGRAPHY_TISSUE_LEVEL``, ``HISTOLOGY_WHITE_LEVEL`` and ``HISTOLOGY_MIN_SATURATION``.
    """
    if tile.ndim == 2:
        return float(np.mean(tile > MAMMOGRAPHY_TISSUE_LEVEL))
    rgb = tile[..., :3]
    low, high = rgb.min(axis=2), rgb.max(axis=2)
    stained = (low < HISTOLOGY_WHITE_LEVEL) | (high - low > HISTOLOGY_MIN_SATURATION)
    return float(np.mean(stained))


def label_tiles(
    image: np.ndarray,
    modality: str,
    image_label: str | None,
    findings: list[tuple[str, np.ndarray | None]],
    size: int,
    stride: int,
    min_tissue: float,
    overlap_threshold: float,
) -> list[TileLabel]:
    """Label every non-background tile of a normalised image.

    Rules, in order:

    1. a tile whose :func:`tissue_fraction` is below ``min_tissue`` is background and is not returned;
       a tile of an unlabelled image (the landing zone's, to be scored) has no label (``unlabelled``);
    2. histology: the image label (``whole_image``), since a BreaKHis image is the lesion;
    3. a normal mammogram: ``normal`` (``normal_image``);
    4. an abnormal mammogram: a finding's overlap with a tile is |tile ∩ region| / min(|tile|, |region|),
       so a small lesion wholly inside a tile counts 1.0. The most severe label among findings overlapping
       at least ``overlap_threshold`` (``finding``); otherwise no label when some finding's location is
       unknown (``no_geometry``: no region, an empty one, or no finding at all), since the lesion may be
       in this tile; otherwise no label when the tile touches a finding (``ambiguous``); otherwise
       ``normal`` (``normal_tissue``).

    Args:
        image: the normalised image, uint8 (H, W) or (H, W, 3).
        modality: ``mammography`` or ``histology``.
        image_label: the image's label (the most severe of its findings), ``None`` when unlabelled.
        findings: (label, bool region at the image's size, or ``None`` when the finding has no geometry).
        size, stride: the tile grid (see :func:`tile_origins`).
        min_tissue: the tissue fraction below which a tile is background.
        overlap_threshold: the overlap from which a tile takes a finding's label.

    Returns:
        One :class:`TileLabel` per kept tile, with the largest overlap with any finding (0 when none).
    """
    height, width = image.shape[:2]
    areas = [(label, region, np.count_nonzero(region)) for label, region in findings if region is not None]
    located = [(label, region, area) for label, region, area in areas if area > 0]
    unlocated = not findings or len(located) < len(findings)
    labels = []
    for y, x in tile_origins(height, width, size, stride):
        tissue = tissue_fraction(cut_tile(image, y, x, size))
        if tissue < min_tissue:
            continue
        # Padding lies outside every region, so the tile's area is the full size * size.
        overlaps = [
            (label, np.count_nonzero(region[y : y + size, x : x + size]) / min(size * size, area))
            for label, region, area in located
        ]
        best = max((overlap for _, overlap in overlaps), default=0.0)
        hits = [label for label, overlap in overlaps if overlap >= overlap_threshold]
        if image_label is None:
            label, source = None, "unlabelled"
        elif modality == "histology":
            label, source = image_label, "whole_image"
        elif image_label == "normal":
            label, source = "normal", "normal_image"
        elif hits:
            label, source = max(hits, key=SEVERITY.__getitem__), "finding"
        elif unlocated:
            label, source = None, "no_geometry"
        elif best > 0:
            label, source = None, "ambiguous"
        else:
            label, source = "normal", "normal_tissue"
        labels.append(TileLabel(y, x, label, source, float(best), tissue))
    return labels


def lesion_patches(
    image: np.ndarray,
    findings: list[tuple[str, np.ndarray | None]],
    size: int,
    count: int,
    jitter: float,
    min_tissue: float,
    overlap_threshold: float,
    seed: int,
) -> list[TileLabel]:
    """Training patches centred on each located finding of an abnormal mammogram, with jitter.

    A lesion covers one or two grid tiles, often at their edge; patch classifiers on CBIS-DDSM train on
    crops centred on each lesion instead. For every finding with a region, ``count`` patches of ``size``
    are centred on its centroid, each shifted by up to ``jitter`` x ``size`` pixels along each axis
    (uniform, from ``seed``), kept inside the image. A patch takes the most severe label among the
    findings it overlaps by at least ``overlap_threshold`` (as a grid tile does); patches that the
    shift moved off their finding, background patches and repeated origins are dropped.

    Returns:
        One :class:`TileLabel` per patch (``label_source`` ``lesion_patch``).
    """
    height, width = image.shape[:2]
    areas = [(label, region, np.count_nonzero(region)) for label, region in findings if region is not None]
    located = [(label, region, area) for label, region, area in areas if area > 0]
    rng = np.random.default_rng(seed)
    reach = jitter * size
    patches: dict[tuple[int, int], TileLabel] = {}
    for _, region, _ in located:
        ys, xs = np.nonzero(region)
        cy, cx = float(ys.mean()), float(xs.mean())
        for dy, dx in rng.uniform(-reach, reach, (count, 2)):
            y = int(np.clip(round(cy + dy - size / 2), 0, max(0, height - size)))
            x = int(np.clip(round(cx + dx - size / 2), 0, max(0, width - size)))
            if (y, x) in patches:
                continue
            overlaps = [
                (label, np.count_nonzero(other[y : y + size, x : x + size]) / min(size * size, area))
                for label, other, area in located
            ]
            hits = [label for label, overlap in overlaps if overlap >= overlap_threshold]
            tissue = tissue_fraction(cut_tile(image, y, x, size))
            if not hits or tissue < min_tissue:
                continue
            best = max(overlap for _, overlap in overlaps)
            label = max(hits, key=SEVERITY.__getitem__)
            patches[(y, x)] = TileLabel(y, x, label, "lesion_patch", float(best), tissue)
    return list(patches.values())
