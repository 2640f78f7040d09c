"""File handling shared by the readers: walking a download once, reading raster formats defensively."""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipelines.sources.base import Decoded, DecodeError

_PIXEL_LIMIT = [60_000_000]
"""The largest image a decoder allocates (``normalise.max_pixels``; set per record by the decode step)."""


_PILLOW_LIMIT = Image.MAX_IMAGE_PIXELS or 89_478_485


def set_pixel_limit(pixels: int) -> None:
    """Set the pixel limit every decoder in this process enforces (:func:`check_pixels`).

    Pillow refuses, as it opens a file, images of more than twice its own limit: that limit is raised
    with ours, so a configured limit above Pillow's default is honoured.
    """
    _PIXEL_LIMIT[0] = int(pixels)
    Image.MAX_IMAGE_PIXELS = max(_PILLOW_LIMIT, int(pixels))


def check_pixels(height: int, width: int, frames: int = 1, what: str = "the header") -> None:
    """Refuse, before anything is allocated, an image whose header declares more pixels than the limit
    (a decompression bomb: a few bytes that would decode to gigabytes) or a non-positive size."""
    if height <= 0 or width <= 0 or frames <= 0:
        raise DecodeError(f"{what} declares an empty image ({height} x {width} x {frames})")
    total = height * width * frames
    if total > _PIXEL_LIMIT[0]:
        raise DecodeError(
            f"{what} declares {height} x {width}"
            + (f" x {frames} frames" if frames > 1 else "")
            + f" = {total:,} pixels, above the limit of {_PIXEL_LIMIT[0]:,} (normalise.max_pixels): "
            + "not decoded"
        )


def walk(root: Path) -> list[str]:
    """Every file below ``root``, as sorted POSIX paths relative to it (hidden files included: they count)."""
    found: list[str] = []
    for folder, _, names in os.walk(root):
        base = Path(folder)
        found.extend((base / name).relative_to(root).as_posix() for name in names)
    return sorted(found)


def escape_reason(root: Path, relative: str) -> str | None:
    """Why the file at ``root/relative`` must not be read, when links lead it astray.

    A folder reached through a link is refused (a link loop makes Spark's file source list the same files
    again under ever longer paths, about 40 levels deep), and so is a file whose real path leaves
    ``root`` (another patient's folder, a system file), a dangling link or a loop; none is opened. A link
    to a file inside ``root`` is followed. ``None`` for a file that may be read.
    """
    base = Path(root)
    parts = Path(relative).parts
    for depth in range(1, len(parts)):
        if (base.joinpath(*parts[:depth])).is_symlink():
            return f"reached through a linked folder ({Path(*parts[:depth]).as_posix()}): not read"
    try:
        real = (base / relative).resolve(strict=True)
    except (OSError, RuntimeError) as exc:  # a loop (ELOOP; RuntimeError before Python 3.13), a dangling link
        return f"a link that does not resolve ({type(exc).__name__}): not read"
    if not real.is_relative_to(base.resolve()):
        return "a link whose target leaves the drop folder: not read"
    return None


def read_bytes(path: Path) -> bytes:
    """The file's bytes; an empty file is a decode error, not an empty image."""
    data = path.read_bytes()
    if not data:
        raise DecodeError("empty file (0 bytes)")
    return data


def decode_raster(path: Path) -> tuple[np.ndarray, int]:
    """PNG/PGM/TIFF through Pillow: pixels scaled to float32 [0, 1] and the stored bit depth.

    Truncated files raise instead of being padded silently (Pillow's default is to refuse them).
    """
    data = read_bytes(path)
    maxval = _pgm_maxval(data)
    if maxval is not None and not 0 < maxval <= 65535:
        raise DecodeError(f"PGM maxval {maxval} outside 1..65535")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size  # the header only: nothing decoded yet
            check_pixels(height, width, getattr(image, "n_frames", 1) or 1)
            image.load()
            mode = image.mode
            array = np.asarray(image)
    except Image.DecompressionBombError as exc:
        raise DecodeError(
            f"the header declares a decompression bomb, far above the limit of {_PIXEL_LIMIT[0]:,} pixels "
            f"(normalise.max_pixels): not decoded ({exc})"
        ) from None
    except UnidentifiedImageError:
        raise DecodeError("not a readable image: unknown or corrupt format") from None
    except (OSError, SyntaxError, ValueError, struct.error) as exc:
        raise DecodeError(f"not a readable image: {exc}") from None
    if mode in {"I;16", "I;16B", "I;16L", "I"}:
        bits = 16
        maximum = float(2**16 - 1)
        if maxval:
            maximum, bits = float(maxval), int(np.ceil(np.log2(maxval + 1)))
        return np.clip(array.astype(np.float32) / maximum, 0, 1), bits
    if mode not in {"L", "RGB", "RGBA", "P", "LA"}:
        raise DecodeError(f"unsupported image mode {mode}")
    if mode in {"P", "LA", "RGBA"}:
        array = np.asarray(Image.open(io.BytesIO(data)).convert("RGB" if mode != "LA" else "L"))
    maximum = float(maxval or 255)
    return array.astype(np.float32) / maximum, 8


def _pgm_maxval(data: bytes) -> int | None:
    """The maxval of a binary PGM header (P5), which Pillow does not report."""
    if not data.startswith(b"P5"):
        return None
    tokens: list[bytes] = []
    for line in data[:256].split(b"\n"):
        tokens.extend(line.split(b"#", 1)[0].split())
        if len(tokens) >= 4:
            try:
                return int(tokens[3])
            except ValueError:
                raise DecodeError(f"PGM header's maxval is not a number: {tokens[3]!r}") from None
    return None


def pgm_size(path: Path) -> tuple[int, int] | None:
    """(height, width) from a PGM header without reading its pixels; ``None`` when there is no header."""
    with path.open("rb") as handle:
        head = handle.read(256)
    if head[:2] not in {b"P5", b"P2"}:
        return None
    tokens: list[bytes] = []
    for line in head.split(b"\n"):
        tokens.extend(line.split(b"#", 1)[0].split())
        if len(tokens) >= 3:
            try:
                return int(tokens[2]), int(tokens[1])
            except ValueError:  # a corrupt header: the decoder quarantines the file with its reason
                return None
    return None


def decode_dicom(path: Path) -> Decoded:
    """One DICOM image through pydicom and its pixel-data plugins (compressed transfer syntaxes too).

    The modality LUT and then the VOI LUT or window are applied, as a viewer would, and MONOCHROME1 is
    inverted, so bright always means dense; the result is stretched to [0, 1]. One grayscale frame or one
    RGB frame (slide microscopy) is accepted; anything else is a decode error.
    """
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    if path.stat().st_size == 0:
        raise DecodeError("empty file (0 bytes)")
    try:
        dataset = pydicom.dcmread(path)
        if "PixelData" not in dataset:
            raise DecodeError("DICOM without pixel data")
        check_pixels(
            int(dataset.get("Rows", 0) or 0),
            int(dataset.get("Columns", 0) or 0),
            int(dataset.get("NumberOfFrames", 1) or 1) * int(dataset.get("SamplesPerPixel", 1) or 1),
            "the DICOM header",
        )
    except DecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse failure is a property of this file
        raise DecodeError(f"not a readable DICOM file: {exc}") from None
    try:
        stored = dataset.pixel_array
    except Exception as exc:  # noqa: BLE001 - truncated data, unsupported transfer syntax
        raise DecodeError(
            f"pixel data does not decode ({dataset.file_meta.TransferSyntaxUID.name}): {exc}"
        ) from None
    rgb = stored.ndim == 3 and stored.shape[-1] == 3 and int(dataset.get("SamplesPerPixel", 1)) == 3
    if stored.ndim != 2 and not rgb:
        raise DecodeError(f"expected one grayscale or RGB frame, got shape {stored.shape}")
    bits = int(dataset.get("BitsStored", 16))
    if rgb:
        scaled = stored.astype(np.float32) / float(2**bits - 1)
        return Decoded(pixels=scaled, bit_depth=bits, height=stored.shape[0], width=stored.shape[1])
    values = apply_modality_lut(stored, dataset)
    if "WindowCenter" in dataset or "VOILUTSequence" in dataset:
        values = apply_voi_lut(values, dataset, prefer_lut=True)
    values = np.asarray(values, dtype=np.float32)
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    if str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        scaled = 1.0 - scaled  # MONOCHROME1: low values are bright
    return Decoded(pixels=scaled, bit_depth=bits, height=stored.shape[0], width=stored.shape[1])
