"""BreaKHis v1: histology PNGs in ``histology_slides/breast/<class>/SOB/<subtype>/<slide>/<mag>X/``.

File names (``SOB_B_A-14-22549AB-40-001.png``) repeat the class, subtype code, slide and magnification of
the folders; both must agree. The patient is the slide's numeric id (``14-22549``) without its suffix
letters: the same id appears under more than one subtype folder in the real download, so grouping by the
full token would put one patient in two splits. BreaKHis has no normal class and no lesion geometry: the
whole image is the lesion.
"""

from __future__ import annotations

import re
from pathlib import Path

from pipelines.sources.base import Decoded, DecodeError, Finding, ImageRecord, Label, Rejection, Scan
from pipelines.sources.files import decode_raster, walk

NAME = "breakhis"
MODALITY = "histology"
SUBTYPES: dict[str, tuple[Label, str]] = {
    "A": ("benign", "adenosis"),
    "F": ("benign", "fibroadenoma"),
    "PT": ("benign", "phyllodes_tumor"),
    "TA": ("benign", "tubular_adenoma"),
    "DC": ("malignant", "ductal_carcinoma"),
    "LC": ("malignant", "lobular_carcinoma"),
    "MC": ("malignant", "mucinous_carcinoma"),
    "PC": ("malignant", "papillary_carcinoma"),
}
_FILE = re.compile(
    r"SOB_(?P<cls>[BM])_(?P<code>[A-Z]+)-(?P<yy>\d+)-(?P<slide>\d+)(?P<suffix>[A-Z]*)-(?P<mag>\d+)-(?P<seq>\d+)\.png",
    re.IGNORECASE,
)
_IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")


def _root(root: Path) -> Path:
    """Accept the ``BreaKHis_v1`` folder itself or a parent holding it."""
    if (root / "histology_slides").is_dir():
        return root
    for candidate in (root / "BreaKHis_v1", root / "BreaKHis_v1" / "BreaKHis_v1"):
        if (candidate / "histology_slides").is_dir():
            return candidate
    return root


def _record(path: str) -> ImageRecord | Rejection:
    parts = path.split("/")
    match = _FILE.fullmatch(parts[-1])
    if not match:
        return Rejection(
            path, "scan", "file name does not follow SOB_<B|M>_<code>-<yy>-<slide>-<mag>-<seq>.png"
        )
    code = match["code"].upper()
    if code not in SUBTYPES:
        return Rejection(path, "scan", f"unknown subtype code {code!r}")
    label, subtype = SUBTYPES[code]
    if (match["cls"].upper() == "B") != (label == "benign"):
        return Rejection(path, "scan", f"class letter {match['cls']} contradicts subtype {subtype}")
    folders = [p.lower() for p in parts[:-1]]
    if label not in folders or subtype not in folders:
        return Rejection(path, "scan", f"folders {parts[:-1]} contradict the file name ({label}/{subtype})")
    magnification = int(match["mag"])
    if f"{magnification}x" not in folders:
        return Rejection(path, "scan", f"magnification {magnification}X does not match its folder")
    return ImageRecord(
        collection=NAME,
        path=path,
        patient_ref=f"{match['yy']}-{match['slide']}",
        findings=(Finding(label=label, subtype=subtype),),
        magnification=magnification,
        attributes=(("magnification", f"{magnification}X"), ("subtype", subtype)),
    )


def scan(root: Path) -> Scan:
    """Every PNG is an image; anything else in the tree (notes, thumbnails) is auxiliary."""
    base = _root(Path(root))
    result = Scan()
    prefix = base.relative_to(root).as_posix() if base != Path(root) else ""
    for path in walk(base):
        full = f"{prefix}/{path}" if prefix else path
        if not path.lower().endswith(_IMAGE_SUFFIXES):
            result.auxiliary += 1
            continue
        item = _record(full)
        if isinstance(item, Rejection):
            result.rejections.append(item)
        else:
            result.records.append(item)
    return result


def decode(root: Path, record: ImageRecord) -> Decoded:
    pixels, bits = decode_raster(Path(root) / record.path)
    if pixels.ndim != 3:
        raise DecodeError(f"expected an RGB image, got shape {pixels.shape}")
    return Decoded(pixels=pixels[..., :3], bit_depth=bits, height=pixels.shape[0], width=pixels.shape[1])
