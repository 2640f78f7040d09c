"""mini-MIAS in its download layout: ``all-mias/mdbNNN.pgm`` plus one ``Info.txt`` describing them all.

Images are binary PGM (P5, maxval 255), 1024x1024 at real size, MLO views; consecutive reference numbers
are the left and right breast of one patient (mdb001/mdb002 are patient 1).  ``Info.txt`` starts with a few
prose lines, then one row per abnormality (``REFNUM BG CLASS SEVERITY X Y RADIUS``) or one ``NORM`` row per
normal image.  X and Y are measured from the BOTTOM-LEFT corner in pixels of the image as written, so they
shrink with the image when it is downscaled; RADIUS encloses the abnormality.

Reproduced quirks: rows without coordinates, a row carrying ``*NOTE 3*`` instead of coordinates, images with
several rows (several calcification clusters), and reference numbers past 999 (``mdb1000``) in large
corpora.  Planted: a 0-byte PGM, a truncated PGM, a row with an unknown class and severity, a row whose PGM
is missing and a PGM without any row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synth.mammogram import LesionKind, draw_mammogram, quantize
from synth.quirks import plant_empty, plant_truncated
from synth.report import CollectionReport, Progress, shuffled

ROOT = "all-mias"
SIZE = 1024
DENSITY = {"F": 0.15, "G": 0.45, "D": 0.8}
# MIAS class -> (severity, lesion drawn); CALC can be either.
CLASSES: dict[str, dict[str, tuple[LesionKind, float]]] = {
    "benign": {"CIRC": ("round", 0.5), "MISC": ("ill_defined", 0.2), "CALC": ("benign_calc", 0.3)},
    "malignant": {"SPIC": ("spiculated", 0.6), "CALC": ("malignant_calc", 0.4)},
}
HEADER = """\
MIAS MiniMammographic Database - synthetic reproduction written by oncolake synth.
1st column: MIAS database reference number.
2nd column: Character of background tissue: F Fatty, G Fatty-glandular, D Dense-glandular.
3rd column: Class of abnormality present: CALC Calcification, CIRC Well-defined/circumscribed masses,
  SPIC Spiculated masses, MISC Other, ill-defined masses, ARCH Architectural distortion, ASYM Asymmetry,
  NORM Normal.
4th column: Severity of abnormality: B Benign, M Malignant.
5th,6th columns: x,y image-coordinates of centre of abnormality (origin at the bottom-left corner).
7th column: Approximate radius (in pixels) of a circle enclosing the abnormality.
"""
PLANTED = ("empty", "truncated", "unknown_class", "missing_file", "unlisted")


def generate(
    root: Path, images: int, downscale: float, full_size: int, rng: np.random.Generator, progress: Progress
) -> CollectionReport:
    """Write ``images`` good PGMs and ``Info.txt`` under ``root``; the first ``full_size`` are 1024x1024."""
    report = CollectionReport(root, downscale=downscale)
    size = max(16, round(SIZE / downscale))
    labels = shuffled({"normal": 4, "benign": 1, "malignant": 1}, images, rng)
    total = images + len(PLANTED)
    planted = dict(zip(sorted(rng.choice(total, len(PLANTED), replace=False)), PLANTED, strict=True))
    abnormal = [i for i, label in enumerate(labels) if label != "normal"]
    note_at = abnormal[0] if abnormal else -1
    full_at = set(abnormal[:full_size]) or set(range(min(full_size, images)))
    backgrounds = rng.choice(list(DENSITY), size=total // 2 + 1)
    rows: list[str] = []
    progress(f"{ROOT}: {images} images")

    good = 0
    for index in range(total):
        ref = f"mdb{index + 1:03d}"
        target = root / f"{ref}.pgm"
        background = str(backgrounds[index // 2])
        if index == 999:
            report.quirk(target, "four_digit_refnum")
        kind = planted.get(index)
        if kind is not None:
            rows.extend(_plant(report, kind, target, ref, background, size, rng))
            continue
        label = labels[good]
        mias_class, findings = _findings(label, rng)
        side = size if good not in full_at else SIZE
        pixels, lesions = draw_mammogram(
            side, side, rng, left=index % 2 == 0, mlo=True, density=DENSITY[background], lesions=findings
        )
        target.write_bytes(_pgm(quantize(pixels, 8)))
        if side != size:
            report.quirk(target, "full_size")
        if not lesions:
            rows.append(f"{ref} {background} NORM ")
        for lesion in lesions:
            row = f"{ref} {background} {mias_class} {label[0].upper()}"
            if good == note_at:
                report.quirk(target, "note")
                rows.append(f"{row} *NOTE 3*")
            elif rng.uniform() < 0.08:
                report.quirk(target, "no_coordinates")
                rows.append(row)
            else:
                x, y = round(lesion.x), round(side - lesion.y)
                rows.append(f"{row} {x} {y} {int(np.ceil(lesion.radius))}")
        if len(lesions) > 1:
            report.quirk(target, "multiple_rows")
        report.good(label, str(index // 2 + 1), target, lesions, (side, side))
        good += 1
        if good % 250 == 0:
            progress(f"{ROOT}: {good}/{images}")

    (root / "Info.txt").write_text(HEADER + "\n".join(rows) + "\n")
    report.auxiliary = 1
    return report


def _findings(label: str, rng: np.random.Generator) -> tuple[str, list[tuple[LesionKind, int]]]:
    """The MIAS class and the lesions of one image: none for normal, else one mass or 1-3 clusters."""
    if label == "normal":
        return "NORM", []
    classes = list(CLASSES[label])
    weights = np.array([CLASSES[label][c][1] for c in classes])
    mias_class = classes[rng.choice(len(classes), p=weights / weights.sum())]
    kind = CLASSES[label][mias_class][0]
    clusters = int(rng.integers(1, 4)) if kind == "malignant_calc" else 1
    return mias_class, [(kind, int(rng.integers(2, 6))) for _ in range(clusters)]


def _plant(
    report: CollectionReport,
    kind: str,
    target: Path,
    ref: str,
    background: str,
    size: int,
    rng: np.random.Generator,
) -> list[str]:
    """Write one planted bad input; returns its Info.txt rows."""
    pixels, _ = draw_mammogram(size, size, rng, left=True, mlo=True, density=DENSITY[background])
    data = _pgm(quantize(pixels, 8))
    if kind == "empty":
        plant_empty(report, target)
    elif kind == "truncated":
        plant_truncated(report, target, data)
    else:
        if kind != "missing_file":
            target.write_bytes(data)
        report.plant(target, kind)
    if kind == "unlisted":
        return []
    if kind == "unknown_class":
        return [f"{ref} {background} MASS U 10 10 5"]
    return [f"{ref} {background} NORM "]


def _pgm(pixels: np.ndarray) -> bytes:
    """Binary PGM (P5, maxval 255) bytes of a uint8 image."""
    height, width = pixels.shape
    return f"P5\n{width} {height}\n255\n".encode("ascii") + pixels.tobytes()
