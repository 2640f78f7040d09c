"""The contract between a collection reader and the ingest pipeline.

Each collection module in this package (``breakhis``, ``mias``, ``ddsm``, ``cbis_ddsm``, and ``landing`` for
new unlabelled images) exposes:

- ``NAME`` (the collection name used in tables and config) and ``MODALITY`` (``histology`` or
  ``mammography``);
- ``scan(root: Path) -> Scan``: runs on the driver, walks the collection exactly as users download it,
  parses its metadata and returns one :class:`ImageRecord` per image file to decode, one
  :class:`Rejection` per file or metadata row that cannot be used, and the number of auxiliary files
  (metadata, crops, masks).  No pixels are read here, so scanning 12,000 files stays cheap;
- ``decode(root: Path, record: ImageRecord) -> Decoded``: runs on the executors, reads one image's
  pixels and raises :class:`DecodeError` with a human-readable reason when the file is unusable.

Every file the scan sees ends up in exactly one of ``records``, ``rejections`` or ``auxiliary``: that is
how the ingest job proves that nothing was silently dropped.

Records still carry the collection's original patient identifier (``patient_ref``); ingestion replaces
it with a keyed pseudonym before anything is written, and it never leaves the driver's memory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Label = Literal["normal", "benign", "malignant"]
LABELS: tuple[Label, ...] = ("normal", "benign", "malignant")
SEVERITY: dict[str, int] = {"normal": 0, "benign": 1, "malignant": 2}


@dataclass(frozen=True)
class Geometry:
    """Where a finding is, in pixel coordinates of the decoded image (origin top-left, x right, y down).

    ``kind`` is ``circle`` (``x``, ``y``, ``radius``), ``outline`` (``points``, a closed polygon) or
    ``mask`` (``mask_path``, relative to the collection root, a binary image of the same size;
    ``mask_candidates``, other files that may hold the mask when the metadata names the wrong one).
    """

    kind: Literal["circle", "outline", "mask"]
    x: float | None = None
    y: float | None = None
    radius: float | None = None
    points: tuple[tuple[float, float], ...] = ()
    mask_path: str | None = None
    mask_candidates: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Geometry:
        """The inverse of ``dataclasses.asdict``, as geometries are stored as JSON in the tables."""
        points = tuple(tuple(p) for p in data.get("points") or ())
        return cls(**{**data, "points": points, "mask_candidates": tuple(data.get("mask_candidates") or ())})


@dataclass(frozen=True)
class Finding:
    """One abnormality (or the absence of any: a ``normal`` image has one ``normal`` finding)."""

    label: Label
    subtype: str | None = None
    descriptors: tuple[tuple[str, str], ...] = ()
    geometry: Geometry | None = None


@dataclass(frozen=True)
class ImageRecord:
    """One image file and everything its collection's metadata says about it."""

    collection: str
    path: str
    patient_ref: str
    findings: tuple[Finding, ...]
    view: str | None = None
    laterality: Literal["L", "R"] | None = None
    magnification: int | None = None
    declared_height: int | None = None
    declared_width: int | None = None
    declared_bit_depth: int | None = None
    pixel_spacing_mm: float | None = None
    attributes: tuple[tuple[str, str], ...] = ()
    modality: str | None = None
    """Set by readers whose images differ in modality (the landing zone); else the reader's MODALITY."""

    @property
    def label(self) -> Label | None:
        """The image label: the most severe of its findings (malignant > benign > normal); ``None`` for an
        unlabelled image (no findings at all: a new image to score)."""
        if not self.findings:
            return None
        return max((f.label for f in self.findings), key=SEVERITY.__getitem__)


@dataclass(frozen=True)
class Rejection:
    """A file or metadata row that cannot be ingested, with the stage that found it and why."""

    path: str
    stage: str
    reason: str
    is_image: bool = True


NOT_UTF8 = "the file name is not valid UTF-8 (shown with \\x escapes): not read; rename the file"


def printable_path(path: str) -> str | None:
    """``None`` for a path that is valid UTF-8; else the path with its undecodable bytes as ``\\xNN``.

    ``os.walk`` gives such names with surrogate escapes; handed to the JVM they become U+FFFD (the
    executors then find no such file) or fail to encode at all.
    """
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return None


@dataclass
class Scan:
    """The result of scanning one collection root."""

    records: list[ImageRecord] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    auxiliary: int = 0

    def with_readable_names(self) -> Scan:
        """This scan with every record whose path is not valid UTF-8 turned into a rejection (its name
        escaped), and rejections' paths escaped likewise: nothing Spark is handed has such a name, and
        every file is still accounted for."""
        records, rejections = [], []
        for record in self.records:
            shown = printable_path(record.path)
            if shown is None:
                records.append(record)
            else:
                rejections.append(Rejection(shown, "scan", NOT_UTF8))
        for rejection in self.rejections:
            shown = printable_path(rejection.path)
            if shown is not None:
                reason = f"{rejection.reason}; {NOT_UTF8}"
                rejection = dataclasses.replace(rejection, path=shown, reason=reason)
            rejections.append(rejection)
        return Scan(records, rejections, self.auxiliary)


@dataclass(frozen=True)
class Decoded:
    """Decoded pixels: float32 in [0, 1], shape (H, W) for grayscale or (H, W, 3) for RGB.

    Readers apply everything the file format says about display (MONOCHROME1 inversion, VOI LUT or
    windowing, maxval) so that bright always means dense tissue or stain; the normaliser does the rest.
    """

    pixels: np.ndarray
    bit_depth: int
    height: int
    width: int
    notes: tuple[str, ...] = ()


class DecodeError(Exception):
    """The file cannot be turned into pixels; the message is the quarantine reason."""
