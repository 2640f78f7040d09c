"""BreaKHis v1 in its download layout: H&E PNG tiles grouped by class, subtype, slide and magnification.

``BreaKHis_v1/histology_slides/breast/<benign|malignant>/SOB/<subtype>/SOB_<B|M>_<code>_<slide>/<mag>X/
SOB_<B|M>_<code>-<slide>-<mag>-<seq>.png``, 700x460 RGB 8-bit.  The slide token (``14-22549AB``) is the
patient; every slide has images at several magnifications.

Reproduced quirk: one numeric slide id appears under two subtypes with different suffix letters
(``14-22549AB`` and ``14-22549CD``), as in the real collection.  Planted: a 0-byte PNG, a truncated PNG and
a ``.png`` that holds random bytes.
"""

from __future__ import annotations

import io
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from synth.histology import draw_histology
from synth.quirks import plant_empty, plant_truncated
from synth.report import CollectionReport, Progress, split

ROOT = "BreaKHis_v1"
SIZE = (460, 700)
MAGNIFICATIONS = (40, 100, 200, 400)
# Subtype folder -> code, with roughly the real collection's share within its class.
SUBTYPES: dict[str, dict[str, tuple[str, float]]] = {
    "benign": {
        "adenosis": ("A", 0.18),
        "fibroadenoma": ("F", 0.4),
        "phyllodes_tumor": ("PT", 0.18),
        "tubular_adenoma": ("TA", 0.24),
    },
    "malignant": {
        "ductal_carcinoma": ("DC", 0.6),
        "lobular_carcinoma": ("LC", 0.13),
        "mucinous_carcinoma": ("MC", 0.15),
        "papillary_carcinoma": ("PC", 0.12),
    },
}
IMAGES_PER_SLIDE = 24  # the full corpus (the real BreaKHis has about 96 per patient, 4 magnifications)
# Smaller corpora: patients are what patient-level figures need, so few images each (the default corpus's
# 200 BreaKHis images give 44 benign and 89 malignant slides: 11 and 22 of them in a 25% test split).
SMALL_IMAGES_PER_SLIDE = 1.5
# Even a tiny corpus gets enough patients per class for a patient-level split.
MIN_SLIDES_PER_CLASS = 8


@dataclass(frozen=True)
class Slide:
    """One patient's slide: where its images go and what they are named."""

    label: str
    subtype: str
    token: str

    @property
    def prefix(self) -> str:
        """``SOB_B_A``-style prefix: procedure, class letter and subtype code."""
        return f"SOB_{self.label[0].upper()}_{SUBTYPES[self.label][self.subtype][0]}"

    def image(self, root: Path, magnification: int, seq: int) -> Path:
        """Path of image number ``seq`` (from 1) at ``magnification``."""
        name = f"{self.prefix}-{self.token}-{magnification}-{seq:03d}.png"
        return self.folder(root) / f"{magnification}X" / name

    def folder(self, root: Path) -> Path:
        """The slide's folder, which holds one sub-folder per magnification."""
        subtype = root / "histology_slides" / "breast" / self.label / "SOB" / self.subtype
        return subtype / f"{self.prefix}_{self.token}"


def generate(
    root: Path,
    images: int,
    size: tuple[int, int],
    full_size: int,
    rng: np.random.Generator,
    progress: Progress,
    per_slide: float = IMAGES_PER_SLIDE,
) -> CollectionReport:
    """Write ``images`` good tiles of ``size`` (height, width), about ``per_slide`` per slide (patient);
    the first ``full_size`` are 700x460."""
    report = CollectionReport(root, downscale=SIZE[1] / size[1])
    benign, malignant = split(images, [1, 2])
    benign_slides = _slides(benign, "benign", rng, per_slide, shared_first=True)
    slides = benign_slides + _slides(malignant, "malignant", rng, per_slide) or _slides(1, "benign", rng)
    counts = split(images, [1.0] * len(slides)) if slides else []
    next_seq: dict[tuple[int, int], int] = {}

    def path(slide: int, magnification: int) -> Path:
        seq = next_seq.get((slide, magnification), 0) + 1
        next_seq[slide, magnification] = seq
        return slides[slide].image(root, magnification, seq)

    progress(f"{ROOT}: {images} images, {len(slides)} slides")
    # Every image's draw is decided here, in order, with its own seed: the drawing then runs on every core
    # and the corpus is the same whatever their number.
    jobs: list[tuple[Path, Tile]] = []
    for index, (slide, count) in enumerate(zip(slides, counts, strict=True)):
        start = int(rng.integers(len(MAGNIFICATIONS)))
        for k in range(count):
            magnification = MAGNIFICATIONS[(start + k) % len(MAGNIFICATIONS)]
            target = path(index, magnification)
            shape = SIZE if len(jobs) < full_size else size
            if shape != size:
                report.quirk(target, "full_size")
            seed = int(rng.integers(2**63))
            jobs.append((target, Tile(shape, slide.label == "malignant", magnification, seed)))
            report.good(slide.label, slide.token, target)
    workers = min(len(jobs), len(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else 1
    with _pool(workers) as pool:
        drawn = (
            pool.map(_draw, [tile for _, tile in jobs], chunksize=4)
            if pool
            else map(_draw, [t for _, t in jobs])
        )
        for done, ((target, _), png) in enumerate(zip(jobs, drawn, strict=True), start=1):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(png)
            if done % 250 == 0:
                progress(f"{ROOT}: {done}/{images}")
    if len(benign_slides) >= 2:  # _slides gave the first two the same numeric id
        for slide in benign_slides[:2]:
            report.quirk(slide.folder(root), "shared_slide_id")

    plant_empty(report, path(0, 40))
    plant_truncated(
        report, path(0, 100), _png(draw_histology(*size, rng, malignant=False, magnification=100))
    )
    garbage = path(0, 200)
    garbage.parent.mkdir(parents=True, exist_ok=True)
    garbage.write_bytes(rng.bytes(4096))
    report.plant(garbage, "not_png")
    return report


def _slides(
    images: int,
    label: str,
    rng: np.random.Generator,
    per_slide: float = IMAGES_PER_SLIDE,
    *,
    shared_first: bool = False,
) -> list[Slide]:
    """Slides (patients) for ``images`` images of one class, about ``per_slide`` each.

    With ``shared_first`` and two or more slides, the first two share a numeric id under two subtypes.
    """
    if images == 0:
        return []
    count = min(images, max(MIN_SLIDES_PER_CLASS, round(images / per_slide)))
    names = list(SUBTYPES[label])
    weights = np.array([SUBTYPES[label][name][1] for name in names])
    subtypes = [names[i] for i in rng.choice(len(names), size=count, p=weights / weights.sum())]
    numbers = rng.choice(np.arange(1000, 30000), size=count, replace=False)
    tokens = [
        f"{rng.choice([13, 14, 15])}-{number}{rng.choice(['', '', 'B', 'G', 'EF'])}" for number in numbers
    ]
    if shared_first and count >= 2:
        tokens[0], tokens[1] = f"14-{numbers[0]}AB", f"14-{numbers[0]}CD"
        subtypes[1] = next(name for name in names if name != subtypes[0])
    return [Slide(label, subtype, token) for subtype, token in zip(subtypes, tokens, strict=True)]


@dataclass(frozen=True)
class Tile:
    """One image to draw: its shape (height, width), class, magnification and seed."""

    shape: tuple[int, int]
    malignant: bool
    magnification: int
    seed: int


def _draw(tile: Tile) -> bytes:
    """PNG bytes of one drawn image (in a worker process: one thread for the nucleus look-up)."""
    rng = np.random.default_rng(tile.seed)
    pixels = draw_histology(
        *tile.shape, rng, malignant=tile.malignant, magnification=tile.magnification, threads=1
    )
    return _png(pixels)


@contextmanager
def _pool(workers: int) -> Iterator[ProcessPoolExecutor | None]:
    """Forked worker processes, or None for one worker or where fork is missing. Forked, not spawned: a
    spawned worker re-runs the caller's ``__main__``, which a notebook or ``python -`` does not have;
    the children only draw with numpy, never touching the threads (a JVM gateway's) the caller holds."""
    if workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        yield None
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        yield pool


def _png(pixels: np.ndarray) -> bytes:
    """PNG bytes of an RGB uint8 array (deterministic: no timestamps or text chunks). zlib level 3: a
    quarter of the default level's time for 8 % more bytes (the corpus's slowest step was this)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()
