"""A landing folder of new, unlabelled images, as devices and users drop them (``oncolake score --landing``).

Written under ``out`` (the modality of each image is found the way :mod:`pipelines.sources.landing` says):

- ``mammography/<n>.png``: 16-bit grayscale PNG (modality from the folder);
- ``mammography/<n>.pgm``: 8-bit binary PGM, as mini-MIAS-style exports are;
- ``<n>.dcm`` at the top: 16-bit DICOM with ``Modality`` MG (modality from the tag, no folder);
- ``histology/<n>.png``: 8-bit RGB PNG;

plus planted bad inputs: a truncated PNG, a file that is not an image, and a PNG outside any modality
folder (quarantined unless ``--modality`` is given). ``<out>.json`` beside the folder (not in it: the
folder holds only what a device would drop) lists what was written.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from synth.histology import draw_histology
from synth.mammogram import draw_mammogram, quantize

MAMMOGRAM = (512, 384)  # rows, columns: a downscaled film
HISTOLOGY = (230, 350)  # half BreaKHis's 460 x 700
KINDS = ("png16", "dicom", "pgm", "histology")


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _dicom(pixels: np.ndarray, patient_id: str, left: bool) -> bytes:
    """A plain 16-bit MG DICOM file (secondary capture) of ``pixels``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[patient_id])
    ds.Modality, ds.PatientID, ds.ImageLaterality, ds.ViewPosition = (
        "MG",
        patient_id,
        "L" if left else "R",
        "CC",
    )
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def generate(out: Path, images: int = 12, seed: int = 0) -> dict[str, Any]:
    """Write ``images`` new images (cycling through :data:`KINDS`) and the planted bad inputs under ``out``.

    Returns the manifest also written to ``<out>.json``: ``images`` (good ones), ``modalities``
    (good images per modality), ``planted`` (path and kind of each bad input) and ``files``.
    """
    out = Path(out)
    manifest_path = out.with_name(f"{out.name}.json")
    if manifest_path.exists():
        return json.loads(manifest_path.read_text())
    rng = np.random.default_rng(seed)
    modalities = {"mammography": 0, "histology": 0}
    files: list[str] = []
    for n in range(images):
        kind = KINDS[n % len(KINDS)]
        malignant = bool(rng.uniform() < 0.5)
        if kind == "histology":
            pixels = draw_histology(*HISTOLOGY, rng, malignant=malignant, magnification=100)
            path, data = f"histology/new-{n:04d}.png", _png(pixels)
            modalities["histology"] += 1
        else:
            left = bool(rng.uniform() < 0.5)
            lesions = [("spiculated" if malignant else "round", 3)] if rng.uniform() < 0.7 else []
            image, _ = draw_mammogram(*MAMMOGRAM, rng, left=left, mlo=False, density=0.4, lesions=lesions)
            if kind == "png16":
                path, data = f"mammography/new-{n:04d}.png", _png(quantize(image, 16))
            elif kind == "pgm":
                buffer = io.BytesIO()
                Image.fromarray(quantize(image, 8)).save(buffer, format="PPM")  # grayscale PPM is P5 PGM
                path, data = f"mammography/new-{n:04d}.pgm", buffer.getvalue()
            else:
                path, data = f"new-{n:04d}.dcm", _dicom(quantize(image, 16), f"DEVICE-{n:04d}", left)
            modalities["mammography"] += 1
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        (out / path).write_bytes(data)
        files.append(path)
    good = _png(draw_histology(*HISTOLOGY, rng, malignant=False, magnification=100))
    planted = {
        "histology/truncated.png": (good[: len(good) // 2], "truncated"),
        "mammography/readme.txt": (b"scanned on device 7\n", "not_an_image"),
        "unsorted.png": (good, "modality_unknown"),
    }
    for path, (data, _) in planted.items():
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        (out / path).write_bytes(data)
    manifest = {
        "images": images,
        "modalities": modalities,
        "planted": [{"path": path, "kind": kind} for path, (_, kind) in planted.items()],
        "files": files,
    }
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
