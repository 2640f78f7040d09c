"""Tiling: the grid, background tiles and the labelling rules."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pipelines.sources.base import Geometry
from pipelines.tiling import (
    TileLabel,
    cut_tile,
    label_tiles,
    lesion_patches,
    rasterise,
    tile_origins,
    tissue_fraction,
)

SIZE = 224


def _region(top: int, bottom: int, left: int, right: int, shape: tuple[int, int] = (448, 448)) -> np.ndarray:
    region = np.zeros(shape, dtype=bool)
    region[top:bottom, left:right] = True
    return region


def _tiles(
    image_label: str, findings: list, image: np.ndarray | None = None, modality: str = "mammography"
) -> list[TileLabel]:
    """The labelled tiles of a 2x2-tile all-tissue mammogram (unless another image is given)."""
    image = np.full((448, 448), 128, np.uint8) if image is None else image
    return label_tiles(image, modality, image_label, findings, SIZE, SIZE, 0.3, 0.5)


def _labels(*args: Any) -> dict[tuple[int, int], tuple[str | None, str]]:
    """{(y, x): (label, source)} of :func:`_tiles`."""
    return {(t.y, t.x): (t.label, t.label_source) for t in _tiles(*args)}


# --- the grid ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("height", "width", "size", "stride"),
    [(672, 410, 224, 224), (672, 410, 224, 112), (448, 448, 224, 224), (100, 500, 224, 224), (7, 5, 3, 2)],
)
def test_grid_covers_every_pixel(height: int, width: int, size: int, stride: int) -> None:
    covered = np.zeros((height, width), dtype=int)
    origins = tile_origins(height, width, size, stride)
    for y, x in origins:
        assert y >= 0 and x >= 0
        assert y + size <= max(height, size) and x + size <= max(width, size)
        covered[y : y + size, x : x + size] += 1
    assert (covered > 0).all()
    assert len(set(origins)) == len(origins)


def test_grid_aligns_the_last_tiles_to_the_edges_and_handles_small_images() -> None:
    assert tile_origins(672, 500, 224, 224) == [(y, x) for y in (0, 224, 448) for x in (0, 224, 276)]
    assert tile_origins(100, 150, 224, 224) == [(0, 0)]
    assert tile_origins(100, 500, 224, 224) == [(0, 0), (0, 224), (0, 276)]
    with pytest.raises(ValueError, match="stride"):
        tile_origins(448, 448, 224, 300)  # would leave gaps


def test_small_images_are_padded_with_background() -> None:
    gray = cut_tile(np.full((100, 150), 200, np.uint8), 0, 0, SIZE)
    assert gray.shape == (SIZE, SIZE) and gray[:100, :150].min() == 200 and gray[100:].max() == 0
    rgb = cut_tile(np.zeros((100, 150, 3), np.uint8), 0, 0, SIZE)
    assert rgb.shape == (SIZE, SIZE, 3) and rgb[:100, :150].max() == 0 and rgb[:, 150:].min() == 255
    image = np.arange(300 * 300, dtype=np.uint32).reshape(300, 300).astype(np.uint8)
    assert np.array_equal(cut_tile(image, 76, 76, SIZE), image[76:, 76:])


# --- tissue ---------------------------------------------------------------------------------------


def test_tissue_thresholds() -> None:
    assert tissue_fraction(np.full((4, 4), 16, np.uint8)) == 0.0
    assert tissue_fraction(np.full((4, 4), 17, np.uint8)) == 1.0
    slide = np.full((2, 2, 3), 240, np.uint8)
    slide[0, 0] = (180, 120, 170)  # haematoxylin/eosin: dark
    slide[0, 1] = (255, 222, 255)  # pale but clearly pink: saturated
    slide[1, 0] = (236, 226, 232)  # empty slide with a colour cast
    assert tissue_fraction(slide) == 0.5


def test_background_tiles_are_dropped() -> None:
    image = np.zeros((448, 672), np.uint8)
    image[:, :300] = 128  # tissue covers the first tile column and a third of the second
    kept = {
        (t.y, t.x): t.tissue for t in label_tiles(image, "mammography", "normal", [], SIZE, SIZE, 0.3, 0.5)
    }
    assert kept == {
        (0, 0): 1.0,
        (224, 0): 1.0,
        (0, 224): pytest.approx(76 / 224),
        (224, 224): pytest.approx(76 / 224),
    }


# --- labels ---------------------------------------------------------------------------------------


def test_finding_and_normal_tissue() -> None:
    lesion = _region(100, 120, 100, 120)  # small, wholly inside the first tile: overlap 1.0
    by_origin = {(t.y, t.x): t for t in _tiles("malignant", [("malignant", lesion)])}
    assert (by_origin[0, 0].label, by_origin[0, 0].label_source, by_origin[0, 0].overlap) == (
        "malignant",
        "finding",
        1.0,
    )
    for origin in [(0, 224), (224, 0), (224, 224)]:
        assert (by_origin[origin].label, by_origin[origin].label_source, by_origin[origin].overlap) == (
            "normal",
            "normal_tissue",
            0.0,
        )


def test_grazing_a_finding_is_ambiguous() -> None:
    lesion = _region(0, 224, 0, 234)  # the first tile, plus a 10-pixel sliver of its right neighbour
    labels = _labels("benign", [("benign", lesion)])
    assert labels == {
        (0, 0): ("benign", "finding"),
        (0, 224): (None, "ambiguous"),
        (224, 0): ("normal", "normal_tissue"),
        (224, 224): ("normal", "normal_tissue"),
    }


def test_a_finding_without_geometry_leaves_other_tiles_unlabelled() -> None:
    lesion = _region(0, 224, 0, 224)
    expected = {
        (0, 0): ("benign", "finding"),
        (0, 224): (None, "no_geometry"),
        (224, 0): (None, "no_geometry"),
        (224, 224): (None, "no_geometry"),
    }
    assert _labels("malignant", [("benign", lesion), ("malignant", None)]) == expected
    # An empty region (an outline cropped away, a degenerate polygon) locates nothing either.
    assert _labels("malignant", [("benign", lesion), ("malignant", np.zeros((448, 448), bool))]) == expected
    assert set(_labels("benign", []).values()) == {(None, "no_geometry")}


def test_the_most_severe_overlapping_finding_wins() -> None:
    both = _labels(
        "malignant", [("benign", _region(0, 224, 0, 224)), ("malignant", _region(50, 150, 50, 150))]
    )
    assert both[0, 0] == ("malignant", "finding")
    # A finding below the threshold does not count, however severe.
    grazing = _labels(
        "malignant", [("benign", _region(0, 224, 0, 224)), ("malignant", _region(0, 448, 220, 448))]
    )
    assert grazing[0, 0] == ("benign", "finding")
    assert grazing[0, 224] == ("malignant", "finding")


def test_overlap_is_relative_to_the_smaller_of_tile_and_region() -> None:
    half = _labels("benign", [("benign", _region(0, 112, 0, 224))])  # fills half of the first tile
    assert half[0, 0] == ("benign", "finding")
    big = _region(0, 448, 0, 448)  # larger than a tile: each tile is fully inside it
    assert {t.overlap for t in _tiles("benign", [("benign", big)])} == {1.0}
    quarter = _tiles("benign", [("benign", _region(0, 56, 0, 224))])
    assert quarter[0].overlap == 1.0  # a 56x224 region wholly inside the tile


def test_normal_images_and_histology() -> None:
    assert set(_labels("normal", [("normal", None)]).values()) == {("normal", "normal_image")}
    slide = np.full((448, 448, 3), 245, np.uint8)
    slide[:224] = (200, 120, 180)  # stained top half; the bottom half is empty slide
    assert _labels("malignant", [("malignant", None)], slide, "histology") == {
        (0, 0): ("malignant", "whole_image"),
        (0, 224): ("malignant", "whole_image"),
    }


# --- rasterising ----------------------------------------------------------------------------------


def test_rasterise_shapes() -> None:
    circle = rasterise(Geometry("circle", x=50.0, y=40.0, radius=10.0), 100, 120)
    assert circle.shape == (100, 120) and abs(int(circle.sum()) - np.pi * 100) < 0.05 * np.pi * 100
    ys, xs = np.nonzero(circle)
    assert (xs.mean(), ys.mean()) == (50.0, 40.0)
    assert rasterise(Geometry("circle", x=5.3, y=7.6, radius=0.1), 20, 20).any()  # never vanishes

    square = rasterise(
        Geometry("outline", points=((10.0, 10.0), (29.0, 10.0), (29.0, 29.0), (10.0, 29.0))), 50, 50
    )
    assert np.array_equal(square, _region(10, 30, 10, 30, (50, 50)))
    assert not rasterise(Geometry("outline", points=((1.0, 1.0), (5.0, 5.0))), 50, 50).any()

    mask = np.zeros((50, 60), np.uint8)
    mask[3:9, 4:7] = 255
    assert np.array_equal(rasterise(Geometry("mask", mask_path="m.png"), 50, 60, mask), mask > 0)
    with pytest.raises(ValueError, match="mask"):
        rasterise(Geometry("mask", mask_path="m.png"), 50, 61, mask)


def test_lesion_patches_are_centred_on_each_finding_with_jitter() -> None:
    image = np.full((672, 448), 128, np.uint8)
    mass = _region(300, 340, 200, 240, (672, 448))  # centre (319.5, 219.5), well inside
    calcification = _region(40, 50, 20, 30, (672, 448))  # near the corner: patches are clamped in
    patches = lesion_patches(
        image, [("malignant", mass), ("benign", calcification), ("benign", None)], SIZE, 8, 0.25, 0.3, 0.5, 7
    )
    assert {t.label_source for t in patches} == {"lesion_patch"}
    origins = [(t.y, t.x) for t in patches]
    assert len(origins) == len(set(origins)) and 8 < len(patches) <= 16
    for t in patches:
        assert 0 <= t.y <= 672 - SIZE and 0 <= t.x <= 448 - SIZE and t.overlap >= 0.5
    around_mass = [t for t in patches if t.label == "malignant"]
    assert len(around_mass) == 8
    for t in around_mass:  # centred within the jitter (a quarter of the size) of the mass's centre
        assert (
            abs(t.y + SIZE / 2 - 319.5) <= 0.25 * SIZE + 1 and abs(t.x + SIZE / 2 - 219.5) <= 0.25 * SIZE + 1
        )
    # Near the corner every shift is clamped to the same origin: one patch, not eight copies.
    assert [(t.y, t.x) for t in patches if t.label == "benign"] == [(0, 0)]
    again = lesion_patches(image, [("malignant", mass)], SIZE, 8, 0.25, 0.3, 0.5, 7)
    assert again == around_mass  # the same seed gives the same patches
    # Background patches are dropped, and so is everything when the finding has no region.
    assert lesion_patches(np.zeros_like(image), [("malignant", mass)], SIZE, 8, 0.25, 0.3, 0.5, 7) == []
    assert lesion_patches(image, [("malignant", None)], SIZE, 8, 0.25, 0.3, 0.5, 7) == []
