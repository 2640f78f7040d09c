"""mini-MIAS: ``mdbNNN.pgm`` images and one ``Info.txt`` with a row per finding.

``Info.txt`` opens with prose of no fixed length; data rows are ``REFNUM BG CLASS [SEVERITY [X Y RADIUS]]``.
An image can have several rows; X/Y/RADIUS may be absent or replaced by a note (``*NOTE 3*``), which
leaves the finding without geometry. X and Y are measured from the BOTTOM-left corner, so the scan reads
each PGM's header (a few bytes) to flip y into the top-left convention of the records. Consecutive
reference numbers are the two breasts of one patient (mdb001 and mdb002 are patient 1); reference
numbers may have more than three digits. The download does not say which breast is which, so laterality
is left unknown.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from pipelines.sources.base import (
    Decoded,
    DecodeError,
    Finding,
    Geometry,
    ImageRecord,
    Label,
    Rejection,
    Scan,
)
from pipelines.sources.files import decode_raster, pgm_size, walk

NAME = "mias"
MODALITY = "mammography"
CLASSES = {
    "CALC": "calcification",
    "CIRC": "circumscribed mass",
    "SPIC": "spiculated mass",
    "MISC": "ill-defined mass",
    "ARCH": "architectural distortion",
    "ASYM": "asymmetry",
    "NORM": "normal",
}
SEVERITY: dict[str, Label] = {"B": "benign", "M": "malignant"}
BACKGROUND = {"F": "fatty", "G": "fatty-glandular", "D": "dense-glandular"}
PIXEL_SPACING_MM = 0.2  # mini-MIAS: 200 micron pixels at 1024x1024
_ROW = re.compile(r"^(mdb\d+)\s+(\S+)\s+(\S+)(?:\s+(.*))?$", re.IGNORECASE)


Rows = dict[str, list[tuple[str, str, list[str]]]]


def _parse_rows(text: str) -> tuple[Rows, dict[str, list[str]], list[str]]:
    """Usable rows per reference number, problems per reference number, and rows without one."""
    rows: Rows = defaultdict(list)
    bad: dict[str, list[str]] = defaultdict(list)
    unreadable: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        match = _ROW.match(stripped)
        if not match:
            parts = stripped.split()
            # A row whose reference is not mdbNNN (``../x``, an absolute path, a typo) is quarantined and
            # never looked up as a file; prose lines (the header) have no tissue and class columns.
            row_like = len(parts) >= 3 and parts[1].upper() in BACKGROUND and parts[2].upper() in CLASSES
            if stripped.lower().startswith("mdb") or row_like:
                unreadable.append(stripped)
            continue  # prose header
        ref, background, cls, rest = match[1].lower(), match[2].upper(), match[3].upper(), (match[4] or "")
        if background not in BACKGROUND:
            bad[ref].append(f"row {stripped!r}: unknown background tissue {background!r}")
            continue
        if cls not in CLASSES:
            bad[ref].append(f"row {stripped!r}: unknown class {cls!r}")
            continue
        rows[ref].append((background, cls, rest.split()))
    return rows, bad, unreadable


def _finding(cls: str, fields: list[str], height: int | None) -> Finding | str:
    """A finding from one row, or the reason it is unusable."""
    if cls == "NORM":
        return Finding(label="normal", subtype="NORM")
    if not fields or fields[0].upper() not in SEVERITY:
        return f"class {cls} without a known severity (got {' '.join(fields) or 'nothing'})"
    label = SEVERITY[fields[0].upper()]
    geometry = None
    numbers = fields[1:4]
    if len(numbers) == 3 and all(re.fullmatch(r"-?\d+(\.\d+)?", n) for n in numbers) and height is not None:
        x, y, radius = (float(n) for n in numbers)
        geometry = Geometry(kind="circle", x=x, y=height - 1 - y, radius=radius)
    note = " ".join(fields[1:]) if fields[1:] and geometry is None else None
    descriptors = (("class", cls), ("class_name", CLASSES[cls]), *((("note", note),) if note else ()))
    return Finding(label=label, subtype=cls, descriptors=descriptors, geometry=geometry)


def scan(root: Path) -> Scan:
    root = Path(root)
    result = Scan()
    files = walk(root)
    info = next((f for f in files if f.lower().endswith("info.txt")), None)
    rows, bad, unreadable = _parse_rows((root / info).read_text(errors="replace")) if info else ({}, {}, [])
    for row in unreadable:
        result.rejections.append(
            Rejection(f"{info}: {row}", "scan", "malformed Info.txt row", is_image=False)
        )
    images = {Path(f).stem.lower(): f for f in files if f.lower().endswith(".pgm")}
    result.auxiliary = len(files) - len(images)
    for ref in sorted((set(rows) | set(bad)) - set(images)):
        result.rejections.append(
            Rejection(f"{ref}.pgm", "scan", "listed in Info.txt but the file is missing", False)
        )
    for ref, path in sorted(images.items()):
        try:
            size = pgm_size(root / path)
        except OSError:
            size = None
        findings: list[Finding] = []
        problems = list(bad.get(ref, []))
        for _, cls, fields in rows.get(ref, []):
            item = _finding(cls, fields, size[0] if size else None)
            if isinstance(item, str):
                problems.append(item)
            else:
                findings.append(item)
        if not findings:
            reason = "; ".join(problems) or (
                "no Info.txt row for this image" if info else "no Info.txt found"
            )
            result.rejections.append(Rejection(path, "scan", reason))
            continue
        for problem in problems:  # the image is usable, the bad row is not: quarantine the row alone
            result.rejections.append(Rejection(f"{info}: {ref}", "scan", problem, is_image=False))
        number = int(re.sub(r"\D", "", ref))
        result.records.append(
            ImageRecord(
                collection=NAME,
                path=path,
                patient_ref=str((number + 1) // 2),
                findings=tuple(findings),
                view="MLO",
                declared_height=size[0] if size else None,
                declared_width=size[1] if size else None,
                pixel_spacing_mm=PIXEL_SPACING_MM * (1024 / size[1]) if size else None,
                attributes=(("background", BACKGROUND[rows[ref][0][0]]),),
            )
        )
    return result


def decode(root: Path, record: ImageRecord) -> Decoded:
    pixels, bits = decode_raster(Path(root) / record.path)
    if pixels.ndim != 2:
        raise DecodeError(f"expected a grayscale PGM, got shape {pixels.shape}")
    if record.declared_height and pixels.shape != (record.declared_height, record.declared_width):
        raise DecodeError(f"decoded size {pixels.shape} contradicts the header")
    return Decoded(pixels=pixels, bit_depth=bits, height=pixels.shape[0], width=pixels.shape[1])
