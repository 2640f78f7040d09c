"""A landing zone: new, unlabelled images that devices or users drop into a folder, to be scored.

Any folder tree is accepted. Image files are PNG (8- or 16-bit, grayscale or RGB), PGM and DICOM
(``.dcm``, ``.dicom`` or no extension with the ``DICM`` preamble); any other file is quarantined as
not an image, so every file seen is accounted for. Each image's modality comes, in order, from:

1. the DICOM ``Modality`` tag (``MG`` mammography, ``SM`` slide microscopy = histology; any other
   modality, a CT slice say, is quarantined whatever the folder or ``--modality`` say);
2. the first folder of its path, ``mammography/`` or ``histology/``;
3. the modality given on the command line (``--modality``), the default for everything else.

An image whose modality none of these gives is quarantined. The patient is the DICOM ``PatientID``
(pseudonymised like every collection's, so a patient's images stay together) or else the file itself;
laterality and view come from the DICOM tags where present. Landing images carry no findings: their
label is null and they belong to no split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pipelines.sources.base import Decoded, DecodeError, ImageRecord, Rejection, Scan
from pipelines.sources.files import decode_dicom, decode_raster, escape_reason, walk

NAME = "landing"
MODALITY = None  # per image: see ImageRecord.modality
MODALITIES = ("mammography", "histology")
DICOM_MODALITIES = {"MG": "mammography", "SM": "histology"}
_SIDES: dict[str, Literal["L", "R"]] = {"L": "L", "R": "R"}  # a laterality tag's first letter
RASTER_SUFFIXES = {".png", ".pgm"}
PATIENT_FROM = "patient_from"
"""Attribute saying where a landed image's patient key came from: ``PatientID`` (a DICOM tag: the image
can join training once curated, :mod:`pipelines.curation`) or ``file`` (the file is its own patient)."""
DICOM_SUFFIXES = {".dcm", ".dicom"}


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    if path.suffix:
        return False
    with path.open("rb") as handle:
        return handle.read(132)[128:] == b"DICM"


def _dicom_header(path: Path) -> dict[str, str]:
    """The few tags the scan needs, without reading pixels; empty when the header does not parse."""
    import pydicom

    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - the decoder reports the reason for this file
        return {}
    tags = ("Modality", "PatientID", "ImageLaterality", "Laterality", "ViewPosition")
    values = {tag: str(dataset.get(tag, "")).strip() for tag in tags}
    return {tag: value for tag, value in values.items() if value}


def scan(root: Path, modality: str | None = None, files: list[str] | None = None) -> Scan:
    """Every file below ``root`` (or the ``files`` given): an :class:`ImageRecord` with its modality, or a
    rejection.

    Args:
        root: the landing folder.
        modality: the modality of images that neither a DICOM tag nor a top folder names.
        files: paths relative to ``root`` (a stream's micro-batch); every file below ``root`` by default.
    """
    if modality is not None and modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    result = Scan()
    for relative in walk(root) if files is None else sorted(files):
        path = Path(root) / relative
        escape = escape_reason(root, relative)
        if escape is not None:
            result.rejections.append(Rejection(relative, "scan", escape))
            continue
        if not path.is_file():
            result.rejections.append(Rejection(relative, "scan", "not a regular file (gone or a folder)"))
            continue
        dicom = _is_dicom(path) if path.stat().st_size else path.suffix.lower() in DICOM_SUFFIXES
        if not dicom and path.suffix.lower() not in RASTER_SUFFIXES:
            result.rejections.append(
                Rejection(relative, "scan", f"not an image file ({path.suffix or 'no'} suffix)")
            )
            continue
        header = _dicom_header(path) if dicom else {}
        if header.get("Modality", "MG") not in DICOM_MODALITIES:
            reason = f"DICOM Modality {header['Modality']} is neither MG (mammography) nor SM (histology)"
            result.rejections.append(Rejection(relative, "scan", reason))
            continue
        folder = relative.split("/", 1)[0] if "/" in relative else None
        chosen = (
            DICOM_MODALITIES.get(header.get("Modality", ""))
            or (folder if folder in MODALITIES else None)
            or modality
        )
        if chosen is None:
            found = (
                f"DICOM Modality {header['Modality']}" if "Modality" in header else "no DICOM Modality tag"
            )
            result.rejections.append(
                Rejection(
                    relative,
                    "scan",
                    f"modality unknown ({found}, no mammography/ or histology/ folder, no --modality)",
                )
            )
            continue
        laterality = (header.get("ImageLaterality") or header.get("Laterality") or "").upper()[:1]
        result.records.append(
            ImageRecord(
                collection=NAME,
                path=relative,
                patient_ref=header.get("PatientID") or f"file:{relative}",
                findings=(),
                view=header.get("ViewPosition") or None,
                laterality=_SIDES.get(laterality),
                modality=chosen,
                attributes=(
                    ("format", "dicom" if dicom else path.suffix.lower().lstrip(".")),
                    (PATIENT_FROM, "PatientID" if header.get("PatientID") else "file"),
                ),
            )
        )
    return result


def decode(root: Path, record: ImageRecord) -> Decoded:
    path = Path(root) / record.path
    if dict(record.attributes).get("format") == "dicom":
        return decode_dicom(path)
    pixels, bits = decode_raster(path)
    if pixels.ndim == 3 and pixels.shape[2] not in (3, 4):
        raise DecodeError(f"unexpected channel count {pixels.shape[2]}")
    return Decoded(pixels=pixels, bit_depth=bits, height=pixels.shape[0], width=pixels.shape[1])
