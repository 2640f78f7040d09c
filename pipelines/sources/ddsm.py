"""DDSM: ``cases/<type>/<volume>/case<NNNN>/`` with an ``.ics`` header, four ``.LJPEG`` views and overlays.

The ``.ics`` header gives each view's size, bit depth and resolution (and dates and the patient's age,
which are dropped here); an ``.OVERLAY`` per abnormal view lists abnormalities with their lesion type,
assessment, subtlety, pathology and outlines as Freeman chain codes. Views without an overlay are normal
tissue of that patient. Pixels are lossless JPEG, decoded by imagecodecs. Real files are known to decode
with width and height swapped (the stream's header disagrees with the ``.ics`` while the raster is in the
``.ics`` order), which is fixed by reshaping; any other disagreement is quarantined. The common PNG
conversions (same tree, ``.png`` instead of ``.LJPEG``) are read the same way.
"""

from __future__ import annotations

import re
import struct
from collections import defaultdict
from pathlib import Path

import numpy as np

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
from pipelines.sources.files import check_pixels, decode_raster, read_bytes, walk

NAME = "ddsm"
MODALITY = "mammography"
VIEWS = ("LEFT_CC", "LEFT_MLO", "RIGHT_CC", "RIGHT_MLO")
PATHOLOGY: dict[str, Label] = {
    "MALIGNANT": "malignant",
    "BENIGN": "benign",
    "BENIGN_WITHOUT_CALLBACK": "benign",
}
# Freeman chain code: 0 is up (north), then clockwise.
CHAIN_STEPS = {0: (0, -1), 1: (1, -1), 2: (1, 0), 3: (1, 1), 4: (0, 1), 5: (-1, 1), 6: (-1, 0), 7: (-1, -1)}
MAX_OUTLINE_POINTS = 256
_NUMBER = re.compile(r"[0-9]+(\.[0-9]*)?")
_VIEW_FILE = re.compile(
    r"^(?P<stem>[A-Z]_\d+_\d+)\.(?P<view>(LEFT|RIGHT)_(CC|MLO))\.(?P<ext>LJPEG|LJPEG\.png|png)$", re.I
)


def parse_ics(text: str) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """Per-view ``LINES``, ``PIXELS_PER_LINE``, ``BITS_PER_PIXEL``, ``RESOLUTION``; and safe attributes."""
    views: dict[str, dict[str, float]] = {}
    attributes: dict[str, str] = {}
    for line in text.splitlines():
        tokens = line.split()
        if not tokens:
            continue
        key = tokens[0].upper()
        if key in VIEWS:
            fields = {tokens[i].upper(): tokens[i + 1] for i in range(1, len(tokens) - 1, 2)}
            views[key] = {
                k: float(fields[k])
                for k in ("LINES", "PIXELS_PER_LINE", "BITS_PER_PIXEL", "RESOLUTION")
                if k in fields and _NUMBER.fullmatch(fields[k])  # a value that is no number: no size
            }
        elif key == "DIGITIZER":
            attributes["digitizer"] = " ".join(tokens[1:])
        elif key == "DENSITY" and len(tokens) > 1:
            attributes["density"] = tokens[1]
    return views, attributes


def chain_to_points(x: int, y: int, codes: list[int]) -> list[tuple[float, float]]:
    """Walk a Freeman chain code from its start point; returns the visited (x, y) pixels."""
    points = [(float(x), float(y))]
    steps = np.array([CHAIN_STEPS[c] for c in codes], dtype=np.int64).reshape(-1, 2)
    walked = np.cumsum(steps, axis=0) + np.array([x, y])
    points.extend((float(px), float(py)) for px, py in walked)
    if len(points) > MAX_OUTLINE_POINTS:
        points = points[:: -(-len(points) // MAX_OUTLINE_POINTS)]
    return points


def parse_overlay(text: str) -> list[Finding | str]:
    """One finding per abnormality, or the reason an abnormality cannot be used."""
    blocks = re.split(r"^\s*ABNORMALITY\s+\d+\s*$", text, flags=re.M | re.I)[1:]
    found: list[Finding | str] = []
    for block in blocks:
        lines = [ln.strip() for ln in block.strip().splitlines() if ln.strip()]
        fields: dict[str, str] = {}
        outline: list[tuple[float, float]] | None = None
        for i, line in enumerate(lines):
            key, _, value = line.partition(" ")
            key = key.upper()
            if key == "BOUNDARY" and i + 1 < len(lines) and outline is None:
                tokens = lines[i + 1].replace("#", " ").split()
                if len(tokens) >= 3 and all(t.isdigit() for t in tokens):
                    numbers = [int(t) for t in tokens]
                    if all(0 <= c <= 7 for c in numbers[2:]):
                        outline = chain_to_points(numbers[0], numbers[1], numbers[2:])
            elif key in {"LESION_TYPE", "ASSESSMENT", "SUBTLETY", "PATHOLOGY", "TOTAL_OUTLINES"}:
                fields[key] = value.strip()
        pathology = fields.get("PATHOLOGY", "").upper()
        if pathology not in PATHOLOGY:
            found.append(f"abnormality with unusable pathology {pathology or '(none)'!r}")
            continue
        lesion = fields.get("LESION_TYPE", "").split()
        descriptors = [("lesion_type", lesion[0] if lesion else ""), ("pathology", pathology)]
        descriptors += [(lesion[i].lower(), lesion[i + 1]) for i in range(1, len(lesion) - 1, 2)]
        descriptors += [(k.lower(), fields[k]) for k in ("ASSESSMENT", "SUBTLETY") if k in fields]
        found.append(
            Finding(
                label=PATHOLOGY[pathology],
                subtype=pathology,
                descriptors=tuple(descriptors),
                geometry=Geometry(kind="outline", points=tuple(outline)) if outline else None,
            )
        )
    return found


def scan(root: Path) -> Scan:
    root = Path(root)
    result = Scan()
    by_case: dict[str, list[str]] = defaultdict(list)
    for path in walk(root):
        by_case[path.rsplit("/", 1)[0] if "/" in path else ""].append(path)
    for folder, paths in sorted(by_case.items()):
        images = {}
        strays = []
        for path in paths:
            match = _VIEW_FILE.match(path.rsplit("/", 1)[-1])
            if match:
                images[path] = match
            elif path.lower().endswith(".ljpeg"):
                strays.append(path)
        # An LJPEG whose name is not <case>.<VIEW>.LJPEG belongs to no view: quarantined, never skipped.
        result.rejections.extend(
            Rejection(p, "scan", "a lossless JPEG whose name is not <case>.<VIEW>.LJPEG: not read")
            for p in strays
        )
        result.auxiliary += len(paths) - len(images) - len(strays)
        if not images:
            continue
        ics = next((p for p in paths if p.lower().endswith(".ics")), None)
        if ics is None:
            result.rejections.extend(
                Rejection(p, "scan", "no .ics header in the case folder") for p in images
            )
            continue
        views, attributes = parse_ics((root / ics).read_text(errors="replace"))
        stem = next(iter(images.values()))["stem"]
        present = {match["view"].upper() for match in images.values()}
        for view in sorted(set(views) - present):  # the header names a film the folder lacks
            result.rejections.append(
                Rejection(
                    f"{folder}/{stem}.{view}.LJPEG".lstrip("/"),
                    "scan",
                    "listed in the .ics header but the file is missing",
                    is_image=False,
                )
            )
        for path, match in sorted(images.items()):
            view = match["view"].upper()
            header = views.get(view)
            if not header or "LINES" not in header or "PIXELS_PER_LINE" not in header:
                result.rejections.append(Rejection(path, "scan", f"the .ics header has no size for {view}"))
                continue
            overlay = f"{folder}/{match['stem']}.{view}.OVERLAY".lstrip("/")
            if overlay in paths:
                parsed = parse_overlay((root / overlay).read_text(errors="replace"))
                findings = [f for f in parsed if isinstance(f, Finding)]
                problems = [f for f in parsed if isinstance(f, str)]
                for problem in problems if findings else []:
                    result.rejections.append(Rejection(overlay, "scan", problem, is_image=False))
                if not findings:
                    result.rejections.append(Rejection(path, "scan", "; ".join(problems) or "empty overlay"))
                    continue
            else:
                findings = [Finding(label="normal")]
            resolution = header.get("RESOLUTION")
            result.records.append(
                ImageRecord(
                    collection=NAME,
                    path=path,
                    patient_ref=match["stem"].rsplit("_", 1)[0].upper(),
                    findings=tuple(findings),
                    view=view.split("_")[1],
                    laterality="L" if view.startswith("LEFT") else "R",
                    declared_height=int(header["LINES"]),
                    declared_width=int(header["PIXELS_PER_LINE"]),
                    declared_bit_depth=int(header.get("BITS_PER_PIXEL", 12)),
                    pixel_spacing_mm=resolution / 1000 if resolution else None,
                    attributes=tuple(sorted(attributes.items())),
                )
            )
    return result


def ljpeg_frame(stream: bytes) -> tuple[int, int, int] | None:
    """(height, width, components) from a lossless JPEG's frame header (SOF3), read before decoding (the
    codec allocates what the header declares); ``None`` when the stream has no frame header."""
    at = stream.find(b"\xff\xc3")
    if at < 0 or len(stream) < at + 10:
        return None
    height, width = struct.unpack(">HH", stream[at + 5 : at + 9])
    return height, width, stream[at + 9]


def decode(root: Path, record: ImageRecord) -> Decoded:
    import imagecodecs

    path = Path(root) / record.path
    declared = (record.declared_height, record.declared_width)
    bits = record.declared_bit_depth or 12
    notes: tuple[str, ...] = ()
    png = path.suffix.lower() == ".png"
    if png:
        data, bits = decode_raster(path)  # already scaled to [0, 1]
    else:
        stream = read_bytes(path)
        check_pixels(declared[0] or 0, declared[1] or 0, what="the .ics file")
        frame = ljpeg_frame(stream)
        if frame is None:
            raise DecodeError("lossless JPEG without a frame header (SOF3): not decoded")
        check_pixels(frame[0], frame[1], frame[2], "the lossless JPEG frame header")
        try:
            data = imagecodecs.ljpeg_decode(stream)
        except Exception as exc:  # noqa: BLE001 - any codec failure is a property of this file
            raise DecodeError(f"lossless JPEG does not decode: {exc}") from None
    if data.shape[:2] != declared:
        if data.shape[:2] == declared[::-1]:
            # The stream's header has width and height swapped but the raster is in .ics order.
            data = np.ascontiguousarray(data).reshape(data.shape[1], data.shape[0])
            notes = (f"decoded {declared[::-1]} but the .ics says {declared}: fixed as a swapped header",)
        else:
            raise DecodeError(f"decoded size {data.shape[:2]} contradicts the .ics header {declared}")
    scaled = data.astype(np.float32) if png else data.astype(np.float32) / float(2**bits - 1)
    height, width = data.shape[:2]  # the declared size
    return Decoded(pixels=np.clip(scaled, 0, 1), bit_depth=bits, height=height, width=width, notes=notes)
