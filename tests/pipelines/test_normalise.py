"""Normalisation: breast side, crop, stretch and size; finding geometry follows the pixels exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipelines.decode import lesion_mask
from pipelines.normalise import Transform, normalise, transform_geometry, transform_mask
from pipelines.sources import SOURCES
from pipelines.sources.base import Decoded, DecodeError, Geometry
from pipelines.tiling import rasterise

ROWS, COLS, HEIGHT = 600, 400, 300
# The breast: a half ellipse against the left edge, rows 12..588, columns 0..280 (before any mirroring).
BREAST_TOP, BREAST_BOTTOM, BREAST_RIGHT = 12, 588, 280
# Film labels: one inside the breast's bounding box but apart from the breast, one in the far corner.
LABEL_IN_BOX = (20, 40, 220, 248)  # top, bottom, left, right
LABEL_CORNER = (550, 580, 340, 380)


def _mammogram(
    right: bool = False, lesion: Geometry | None = None, brightness: float = 1.0, seed: int = 0
) -> np.ndarray:
    """A synthetic film: dark noisy background, a graded breast, two bright labels, and a bright lesion.

    The lesion geometry is given in the returned image's coordinates (already mirrored for a right breast).
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:ROWS, 0:COLS].astype(np.float32)
    rho = np.hypot(x / BREAST_RIGHT, (y - ROWS / 2) / (ROWS / 2 - BREAST_TOP))
    image = np.where(rho < 1, 0.25 + 0.3 * np.sqrt(np.clip(1 - rho**2, 0, 1)), 0.04)
    image += rng.normal(0.0, 0.01, image.shape)
    for top, bottom, left, right_ in (LABEL_IN_BOX, LABEL_CORNER):
        image[top:bottom, left:right_] = 0.95
    if right:
        image = image[:, ::-1]
    if lesion is not None:
        canvas = Image.new("1", (COLS, ROWS), 0)
        draw = ImageDraw.Draw(canvas)
        if lesion.kind == "circle":
            x0, y0, r = lesion.x, lesion.y, lesion.radius
            draw.ellipse((x0 - r, y0 - r, x0 + r, y0 + r), fill=1)
        else:
            draw.polygon(list(lesion.points), fill=1)
        image = np.where(np.asarray(canvas), 0.9, image)
    return np.clip(image * brightness, 0.0, 1.0).astype(np.float32)


def _decoded(pixels: np.ndarray) -> Decoded:
    return Decoded(pixels, 16, pixels.shape[0], pixels.shape[1])


def _mirror_x(x: float, right: bool) -> float:
    return COLS - 1 - x if right else x


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


@pytest.mark.parametrize("right", [False, True], ids=["left-breast", "right-breast"])
def test_breast_ends_up_against_the_left_edge(right: bool) -> None:
    out, t = normalise(_decoded(_mammogram(right)), "mammography", HEIGHT)
    assert t.flipped is right
    quarter = out.shape[1] // 4
    assert out[:, :quarter].mean() > 2 * out[:, -quarter:].mean()
    middle = out[HEIGHT // 4 : 3 * HEIGHT // 4, 0]
    assert (middle > 16).all()  # the chest wall edge is tissue all along the breast's middle


@pytest.mark.parametrize("right", [False, True], ids=["left-breast", "right-breast"])
def test_crop_is_the_breast_box_and_labels_are_gone(right: bool) -> None:
    out, t = normalise(_decoded(_mammogram(right)), "mammography", HEIGHT)
    # The box is the breast's plus a small margin (under 4% of the image), in flipped coordinates.
    assert BREAST_TOP - 0.04 * ROWS <= t.top <= BREAST_TOP
    assert BREAST_BOTTOM <= t.bottom <= BREAST_BOTTOM + 0.04 * ROWS
    assert t.left == 0
    assert BREAST_RIGHT <= t.right <= BREAST_RIGHT + 0.04 * COLS
    # Background: ~21% of a half ellipse's box, against ~50% of the film.
    assert (out == 0).mean() < 0.3
    for top, bottom, left, right_ in (LABEL_IN_BOX, LABEL_CORNER):
        corners = [(left, top), (right_ - 1, top), (right_ - 1, bottom - 1), (left, bottom - 1)]
        points = tuple((_mirror_x(px, right), float(py)) for px, py in corners)
        mapped = transform_geometry(Geometry("outline", points=points), t, COLS)
        region = rasterise(mapped, out.shape[0], out.shape[1])
        assert not region.any() or out[region].max() < 16
    assert not any(px < out.shape[1] for px, _ in mapped.points)  # the corner label is cropped off


def test_intensity_is_stretched_within_the_breast() -> None:
    out, _ = normalise(_decoded(_mammogram()), "mammography", HEIGHT)
    dim, _ = normalise(_decoded(_mammogram(brightness=0.4)), "mammography", HEIGHT)
    assert out.dtype == np.uint8
    assert out.min() == 0 and out.max() >= 250
    tissue = out[out > 16]
    assert np.percentile(tissue, 1) < 40 and np.percentile(tissue, 99) > 240
    assert np.abs(out.astype(int) - dim.astype(int)).mean() < 2


def test_size_and_aspect_ratio() -> None:
    out, t = normalise(_decoded(_mammogram()), "mammography", HEIGHT)
    assert out.shape == (HEIGHT, t.width) == (t.height, t.width)
    crop_rows, crop_cols = t.bottom - t.top, t.right - t.left
    assert t.scale == pytest.approx(HEIGHT / crop_rows)
    assert abs(t.width - crop_cols * t.scale) <= 0.5
    assert set(t.to_dict()) == {"flipped", "top", "left", "bottom", "right", "scale", "height", "width"}


def test_rgb_mammogram_is_converted_to_luminance() -> None:
    gray = _mammogram()
    out, t = normalise(_decoded(gray), "mammography", HEIGHT)
    out_rgb, t_rgb = normalise(_decoded(np.repeat(gray[:, :, None], 3, axis=2)), "mammography", HEIGHT)
    assert t_rgb == t
    assert out_rgb.ndim == 2
    assert np.abs(out_rgb.astype(int) - out.astype(int)).max() <= 1


def test_histology_is_only_resized() -> None:
    rng = np.random.default_rng(1)
    pixels = rng.uniform(0.3, 0.9, (460, 700, 3)).astype(np.float32)
    pixels[:, :, 0] = 1.2  # out of range values are clipped
    out, t = normalise(_decoded(pixels), "histology", 230)
    assert out.shape == (230, 350, 3) and out.dtype == np.uint8
    assert t == Transform(False, 0, 0, 460, 700, 0.5, 230, 350)
    assert (out[:, :, 0] == 255).all()
    assert abs(float(out[:, :, 1].mean()) - 0.6 * 255) < 2

    gray, t_gray = normalise(_decoded(np.full((100, 150), 0.5, np.float32)), "histology", 50)
    assert gray.shape == (50, 75, 3) and (gray == 128).all()
    assert not t_gray.flipped


def test_bad_arguments_are_value_errors() -> None:
    with pytest.raises(ValueError, match="modality"):
        normalise(_decoded(_mammogram()), "ultrasound", HEIGHT)
    with pytest.raises(ValueError, match="height"):
        normalise(_decoded(_mammogram()), "mammography", 0)


@pytest.mark.parametrize("right", [False, True], ids=["unflipped", "flipped"])
def test_circle_lands_on_the_lesion(right: bool) -> None:
    lesion = Geometry("circle", x=_mirror_x(120.0, right), y=250.0, radius=20.0)
    out, t = normalise(_decoded(_mammogram(right, lesion)), "mammography", HEIGHT)
    mapped = transform_geometry(lesion, t, COLS)
    assert mapped.radius == pytest.approx(20.0 * t.scale)
    core = rasterise(Geometry("circle", x=mapped.x, y=mapped.y, radius=0.8 * mapped.radius), *out.shape)
    assert out[core].mean() > 245
    # The bright blob's centroid is where the circle says, to a fraction of a pixel.
    ys, xs = np.nonzero(out > 128)
    assert xs.mean() == pytest.approx(mapped.x, abs=0.5)
    assert ys.mean() == pytest.approx(mapped.y, abs=0.5)


@pytest.mark.parametrize("right", [False, True], ids=["unflipped", "flipped"])
def test_outline_lands_on_the_lesion(right: bool) -> None:
    triangle = ((90.0, 200.0), (170.0, 230.0), (110.0, 320.0))
    lesion = Geometry("outline", points=tuple((_mirror_x(x, right), y) for x, y in triangle))
    out, t = normalise(_decoded(_mammogram(right, lesion)), "mammography", HEIGHT)
    region = rasterise(transform_geometry(lesion, t, COLS), *out.shape)
    assert out[region].mean() > 220
    assert _iou(region, out > 128) > 0.85


@pytest.mark.parametrize("right", [False, True], ids=["unflipped", "flipped"])
def test_mask_agrees_with_geometry(right: bool) -> None:
    lesion = Geometry("circle", x=_mirror_x(150.0, right), y=380.0, radius=30.0)
    out, t = normalise(_decoded(_mammogram(right, lesion)), "mammography", HEIGHT)
    from_geometry = rasterise(transform_geometry(lesion, t, COLS), *out.shape)

    y, x = np.mgrid[0:ROWS, 0:COLS]
    disc = (x - lesion.x) ** 2 + (y - lesion.y) ** 2 <= lesion.radius**2
    from_mask = transform_mask(disc.astype(np.uint8) * 255, t, (ROWS, COLS))
    assert from_mask.dtype == bool and from_mask.shape == out.shape
    assert _iou(from_mask, from_geometry) > 0.9
    assert transform_geometry(Geometry("mask", mask_path="m.png"), t, COLS) == Geometry(
        "mask", mask_path="m.png"
    )

    # A mask of another size (as some CBIS-DDSM masks are) is first stretched to the image.
    half = np.asarray(Image.fromarray(disc).resize((COLS // 2, ROWS // 2), Image.Resampling.NEAREST))
    assert _iou(transform_mask(half, t, (ROWS, COLS)), from_geometry) > 0.85


def test_a_tiny_mask_does_not_vanish() -> None:
    _, t = normalise(_decoded(_mammogram()), "mammography", 60)  # a tenth of the size
    speck = np.zeros((ROWS, COLS), bool)
    speck[300:303, 100:103] = True
    assert 1 <= transform_mask(speck, t, (ROWS, COLS)).sum() <= 4


def test_synthetic_collections(corpus: tuple[Path, dict]) -> None:
    """Real readers on the synthetic corpus: right breasts are flipped and every finding lands on tissue."""
    out, manifest = corpus
    checked = 0
    for name in ("mias", "ddsm", "cbis_ddsm"):
        reader, root = SOURCES[name], out / manifest[name]["root"]
        for record in reader.scan(root).records:
            try:
                decoded = reader.decode(root, record)
            except DecodeError:
                continue  # the corpus plants broken files; the readers' tests cover them
            pixels, t = normalise(decoded, reader.MODALITY, 256)
            if record.laterality is not None:
                assert t.flipped is (record.laterality == "R"), record.path
            for geometry in (f.geometry for f in record.findings if f.geometry is not None):
                if geometry.kind == "mask":
                    # The mask ingest would pick: CBIS-DDSM metadata can name the crop as the mask.
                    mask = lesion_mask(reader, root, record, geometry, (decoded.height, decoded.width))
                    assert mask is not None, record.path
                    region = transform_mask(mask > 0.5, t, (decoded.height, decoded.width))
                else:
                    region = rasterise(transform_geometry(geometry, t, decoded.width), *pixels.shape)
                assert region.any(), record.path
                assert (pixels[region] > 16).mean() > 0.9, record.path  # the lesion lies on the breast
                checked += 1
    assert checked >= 10


def test_large_film_normalises_to_the_configured_height() -> None:
    """A full-size DDSM film (4700 x 3000) goes through the same path; its speed is benchmarks/ingest.py's."""
    film = np.repeat(np.repeat(_mammogram(), 8, axis=0), 8, axis=1)[:4700, :3000]
    out, t = normalise(_decoded(film), "mammography", 672)
    assert out.shape[0] == 672 and not t.flipped
