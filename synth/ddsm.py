"""DDSM in its download layout: four lossless-JPEG views per case, an ``.ics`` header and ``.OVERLAY`` files.

``DDSM/cases/<normals|benigns|benign_without_callbacks|cancers>/<volume>/case<NNNN>/`` holds
``<A|B|C>_<NNNN>_1.<LEFT|RIGHT>_<CC|MLO>.LJPEG`` (ITU T.81 process 14, 12-bit, or 16-bit for the DBA 21
digitizer), ``<A|B|C>_<NNNN>_1.ics`` (study, digitizer and per-view size, bit depth and resolution; the
study date and age are identifying data readers must drop) and, for each view with an abnormality,
``<view>.OVERLAY`` whose boundary is a start point and a Freeman chain code (0 = north, clockwise to
7 = north-west).  Sizes and coordinates describe the image as written (downscaled), resolution included.
In abnormal cases both views of the affected breast carry the lesion.  The case is the patient.
:func:`generate` also hands back the abnormal films CBIS-DDSM may re-release (:class:`Film`).

Reproduced quirk: one LJPEG's header gives width and height swapped relative to the .ics while its raster
is the .ics image (reshape to the .ics size, as the classic DDSM tools do).  Planted: a 0-byte LJPEG, a
truncated LJPEG and an LJPEG whose size contradicts its .ics entirely.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import imagecodecs
import numpy as np

from synth.mammogram import Lesion, LesionKind, draw_mammogram, quantize
from synth.quirks import plant_empty, plant_truncated
from synth.report import CollectionReport, Progress, shuffled

ROOT = "DDSM"
VIEWS = ("LEFT_CC", "LEFT_MLO", "RIGHT_CC", "RIGHT_MLO")
# Case folder -> (volume prefix, file prefix letter, pathology of its abnormalities, share of cases).
CASE_TYPES: dict[str, tuple[str, str, str | None, float]] = {
    "normals": ("normal", "A", None, 0.2),
    "benigns": ("benign", "B", "BENIGN", 0.3),
    "benign_without_callbacks": ("benign_without_callback", "B", "BENIGN_WITHOUT_CALLBACK", 0.1),
    "cancers": ("cancer", "C", "MALIGNANT", 0.4),
}
# Digitizer -> (bits per pixel, microns per pixel at full size).
DIGITIZERS: dict[str, tuple[int, float]] = {
    "DBA 21": (16, 42.0),
    "HOWTEK": (12, 43.5),
    "LUMISYS LASER": (12, 50.0),
}
# What is drawn for each pathology, with the overlay's LESION_TYPE description.
LESIONS: dict[bool, tuple[tuple[LesionKind, str], ...]] = {
    False: (
        ("round", "MASS SHAPE ROUND MARGINS CIRCUMSCRIBED"),
        ("round", "MASS SHAPE OVAL MARGINS CIRCUMSCRIBED"),
        ("ill_defined", "MASS SHAPE LOBULATED MARGINS ILL_DEFINED"),
        ("benign_calc", "CALCIFICATION TYPE PUNCTATE DISTRIBUTION CLUSTERED"),
        ("benign_calc", "CALCIFICATION TYPE ROUND_AND_REGULAR DISTRIBUTION SCATTERED"),
    ),
    True: (
        ("spiculated", "MASS SHAPE IRREGULAR MARGINS SPICULATED"),
        ("spiculated", "MASS SHAPE IRREGULAR MARGINS ILL_DEFINED"),
        ("malignant_calc", "CALCIFICATION TYPE PLEOMORPHIC DISTRIBUTION CLUSTERED"),
        ("malignant_calc", "CALCIFICATION TYPE FINE_LINEAR_BRANCHING DISTRIBUTION SEGMENTAL"),
    ),
}
CASES_PER_VOLUME = 20
FULL_SIZE = ((4400, 5400), (2600, 3400))  # ranges of LINES and PIXELS_PER_LINE of real scans
PLANTED = ("empty", "truncated", "size_mismatch")
# Freeman code of a step (dx, dy), indexed by (dx + 1) * 3 + (dy + 1); y grows downwards.
CHAIN_CODES = np.array([7, 6, 5, 0, -1, 4, 1, 2, 3])


@dataclass(frozen=True)
class Film:
    """One good abnormal view as written, for CBIS-DDSM to re-release (it curated DDSM's films)."""

    path: str
    """Path relative to the DDSM root."""
    case: int
    view: str
    pixels: np.ndarray
    bits: int
    microns: float
    density: int
    pathology: str
    lesions: tuple[Lesion, ...]
    subtleties: tuple[int, ...]


@dataclass
class Abnormality:
    """One overlay abnormality: what to draw and how the overlay describes it."""

    kind: LesionKind
    description: str
    assessment: int
    subtlety: int


@dataclass
class Case:
    """One DDSM case (a patient's four views) and where it is filed."""

    number: int
    folder: str
    volume: str
    digitizer: str
    density: int
    views: list[str]
    abnormal: dict[str, list[Abnormality]] = field(default_factory=dict)

    @property
    def letter(self) -> str:
        """File name prefix letter: A normals, B benigns and benigns without callback, C cancers."""
        return CASE_TYPES[self.folder][1]

    @property
    def pathology(self) -> str | None:
        """Pathology of every abnormality in the case (None for normals)."""
        return CASE_TYPES[self.folder][2]

    @property
    def stem(self) -> str:
        """``A_0001_1``: the part every file name of the case starts with."""
        return f"{self.letter}_{self.number:04d}_1"

    def directory(self, root: Path) -> Path:
        """The case folder."""
        return root / "cases" / self.folder / self.volume / f"case{self.number:04d}"


def generate(
    root: Path,
    images: int,
    downscale: float,
    full_size: int,
    rng: np.random.Generator,
    progress: Progress,
    films: list[Film] | None = None,
    max_films: int = 0,
) -> CollectionReport:
    """Write ``images`` good views (plus planted ones) in cases of four; the first ``full_size`` abnormal
    views keep a real scan size.  Up to ``max_films`` good downscaled abnormal views, of cases whose
    affected views are all good, are appended to ``films`` (pixels kept in memory, so the cap matters)."""
    report = CollectionReport(root, downscale=downscale)
    cases = _cases(images + len(PLANTED), rng)
    slots = [(case, view) for case in cases for view in case.views]
    bad = dict(zip(rng.choice(len(slots), len(PLANTED), replace=False).tolist(), PLANTED, strict=True))
    good_slots = [i for i in range(len(slots)) if i not in bad]
    abnormal_slots = [i for i in good_slots if slots[i][1] in slots[i][0].abnormal]
    full = set((abnormal_slots or good_slots)[:full_size])
    swapped = next((i for i in good_slots if i not in full), None)
    progress(f"{ROOT}: {images} views, {len(cases)} cases")

    declared: dict[tuple[int, str], tuple[int, int, float]] = {}
    done = 0
    for index, (case, view) in enumerate(slots):
        bits, microns = DIGITIZERS[case.digitizer]
        lines, pixels_per_line = (int(rng.integers(*span)) for span in FULL_SIZE)
        if index not in full:
            lines, pixels_per_line = round(lines / downscale), round(pixels_per_line / downscale)
            microns *= downscale
        declared[case.number, view] = (lines, pixels_per_line, microns)
        abnormalities = case.abnormal.get(view, [])
        image, lesions = draw_mammogram(
            lines,
            pixels_per_line,
            rng,
            left=view.startswith("LEFT"),
            mlo=view.endswith("MLO"),
            density=(case.density - 1) / 3,
            lesions=[(a.kind, a.subtlety) for a in abnormalities],
        )
        target = case.directory(root) / f"{case.stem}.{view}.LJPEG"
        target.parent.mkdir(parents=True, exist_ok=True)
        stored = quantize(image, bits)
        if abnormalities:
            overlay = _overlay(case, abnormalities, lesions, lines, pixels_per_line)
            target.with_suffix(".OVERLAY").write_text(overlay)
            report.auxiliary += 1
        kind = bad.get(index)
        if kind == "empty":
            plant_empty(report, target)
        elif kind == "truncated":
            plant_truncated(report, target, imagecodecs.ljpeg_encode(stored, bitspersample=bits))
        elif kind == "size_mismatch":
            wrong = stored[: lines * 3 // 4, : pixels_per_line - 5]
            target.write_bytes(imagecodecs.ljpeg_encode(np.ascontiguousarray(wrong), bitspersample=bits))
            report.plant(target, kind)
        else:
            if index == swapped:
                stored = stored.reshape(pixels_per_line, lines)
                note = "LJPEG header has width and height swapped; the raster is the .ics image (reshape)"
                report.quirk(target, "swapped_dimensions", note)
            if index in full:
                report.quirk(target, "full_size")
            target.write_bytes(imagecodecs.ljpeg_encode(stored, bitspersample=bits))
            label = (
                "normal" if not abnormalities else "malignant" if case.pathology == "MALIGNANT" else "benign"
            )
            report.good(label, case.stem, target, lesions, (lines, pixels_per_line))
            # Slots run case by case and a case has at most two abnormal views: a margin of two keeps
            # the last case whole without holding every film's pixels.
            wanted = films is not None and len(films) < max_films + 2
            if wanted and abnormalities and index not in full and index != swapped:
                films.append(
                    Film(
                        report.rel(target),
                        case.number,
                        view,
                        stored,
                        bits,
                        microns,
                        case.density,
                        str(case.pathology),
                        tuple(lesions),
                        tuple(a.subtlety for a in abnormalities),
                    )
                )
            done += 1
            if done % 250 == 0:
                progress(f"{ROOT}: {done}/{images}")

    if films is not None:
        films[:] = _whole_cases(films, cases, max_films)
    for case in cases:
        sizes = {view: declared[case.number, view] for view in case.views}
        (case.directory(root) / f"{case.stem}.ics").write_text(_ics(case, sizes, rng))
        report.auxiliary += 1
    return report


def _whole_cases(films: list[Film], cases: list[Case], limit: int) -> list[Film]:
    """Films of the first cases whose every abnormal view is among ``films``, at most ``limit`` in all."""
    affected = {case.number: len(case.abnormal) for case in cases}
    per_case = Counter(film.case for film in films)
    chosen: set[int] = set()
    total = 0
    for film in films:
        count = per_case[film.case]
        if film.case not in chosen and count == affected[film.case] and total + count <= limit:
            chosen.add(film.case)
            total += count
    return [film for film in films if film.case in chosen]


def _cases(views: int, rng: np.random.Generator) -> list[Case]:
    """Cases holding ``views`` views, four per case (the last may have fewer), filed by type and volume."""
    count = -(-views // 4)
    types = shuffled({folder: share for folder, (_, _, _, share) in CASE_TYPES.items()}, count, rng)
    per_views = [min(4, views - 4 * i) for i in range(count)]
    filed: dict[str, int] = {}
    cases = []
    for number, (folder, n_views) in enumerate(zip(types, per_views, strict=True), start=1):
        volume = f"{CASE_TYPES[folder][0]}_{filed.get(folder, 0) // CASES_PER_VOLUME + 1:02d}"
        filed[folder] = filed.get(folder, 0) + 1
        case = Case(
            number=number,
            folder=folder,
            volume=volume,
            digitizer=str(rng.choice(list(DIGITIZERS))),
            density=int(rng.integers(1, 5)),
            views=list(VIEWS[:n_views]),
        )
        if case.pathology is not None:
            side = str(rng.choice(["LEFT", "RIGHT"]))
            affected = [view for view in case.views if view.startswith(side)] or case.views[:1]
            found = [
                _abnormality(case.pathology == "MALIGNANT", rng) for _ in range(1 + (rng.uniform() < 0.1))
            ]
            case.abnormal = {view: found for view in affected}
        cases.append(case)
    return cases


def _abnormality(malignant: bool, rng: np.random.Generator) -> Abnormality:
    """A random abnormality of the given pathology."""
    kind, description = LESIONS[malignant][int(rng.integers(len(LESIONS[malignant])))]
    assessment = int(rng.integers(4, 6)) if malignant else int(rng.integers(2, 5))
    return Abnormality(kind, description, assessment, int(rng.integers(1, 6)))


def chain_code(outline: np.ndarray, height: int, width: int) -> tuple[int, int, list[int]]:
    """Start column, start row and Freeman chain code of a closed polygon, on the pixel grid.

    The polygon is resampled every 0.4 pixel and rounded, so consecutive pixels differ by at most one
    step in each direction; repeats are dropped.
    """
    points = np.clip(outline, 0, [width - 1, height - 1])
    ends = np.roll(points, -1, axis=0)
    steps = np.maximum(1, np.ceil(np.hypot(*(ends - points).T) / 0.4).astype(int))
    owner = np.repeat(np.arange(len(points)), steps)
    fraction = np.concatenate([np.arange(n) / n for n in steps])[:, None]
    dense = np.round(points[owner] + fraction * (ends[owner] - points[owner])).astype(int)
    dense = np.vstack([dense, dense[:1]])
    keep = np.concatenate([[True], np.any(np.diff(dense, axis=0) != 0, axis=1)])
    dense = dense[keep]
    moves = np.diff(dense, axis=0)
    codes = CHAIN_CODES[(moves[:, 0] + 1) * 3 + (moves[:, 1] + 1)]
    return int(dense[0, 0]), int(dense[0, 1]), codes.tolist()


def _overlay(
    case: Case, abnormalities: list[Abnormality], lesions: list[Lesion], height: int, width: int
) -> str:
    """The .OVERLAY text of one view: one boundary chain code per abnormality."""
    lines = [f"TOTAL_ABNORMALITIES {len(abnormalities)}"]
    for number, (abnormality, lesion) in enumerate(zip(abnormalities, lesions, strict=True), start=1):
        x, y, codes = chain_code(lesion.outline, height, width)
        lines += [
            f"ABNORMALITY {number}",
            f"LESION_TYPE {abnormality.description}",
            f"ASSESSMENT {abnormality.assessment}",
            f"SUBTLETY {abnormality.subtlety}",
            f"PATHOLOGY {case.pathology}",
            "TOTAL_OUTLINES 1",
            "BOUNDARY",
            f"{x} {y} {' '.join(map(str, codes))} #",
        ]
    return "\n".join(lines) + "\n"


def _ics(case: Case, sizes: dict[str, tuple[int, int, float]], rng: np.random.Generator) -> str:
    """The case's .ics header: study, film and digitizer details, then one line per view."""
    bits = DIGITIZERS[case.digitizer][0]
    study = f"{int(rng.integers(1, 13))} {int(rng.integers(1, 29))} {int(rng.integers(88, 100))}"
    digitized = f"{int(rng.integers(1, 13))} {int(rng.integers(1, 29))} {int(rng.integers(1997, 1999))}"
    lines = [
        "ics_version 1.0",
        f"filename {case.stem.replace('_', '-')}",
        f"DATE_OF_STUDY {study}",
        f"PATIENT_AGE {int(rng.integers(35, 86))}",
        "FILM",
        "FILM_TYPE REGULAR",
        f"DENSITY {case.density}",
        f"DATE_DIGITIZED {digitized}",
        f"DIGITIZER {case.digitizer}",
        "SELECTED",
    ]
    for view, (height, width, microns) in sizes.items():
        overlay = "OVERLAY" if view in case.abnormal else "NON_OVERLAY"
        lines.append(
            f"{view} LINES {height} PIXELS_PER_LINE {width} BITS_PER_PIXEL {bits} "
            f"RESOLUTION {microns:g} {overlay}"
        )
    return "\n".join(lines) + "\n"
