"""CBIS-DDSM in its download layout: four case-description CSVs and the TCIA DICOM tree they point into.

``CBIS-DDSM/{mass,calc}_case_description_{train,test}_set.csv`` list one row per abnormality; their paths
(``Mass-Training_P_00001_LEFT_CC/<study uid>/<series uid>/000000.dcm`` for the full mammogram,
``..._LEFT_CC_1/<uid>/<uid>/000000.dcm`` for the cropped lesion and ``.../000001.dcm`` for the ROI mask)
are relative to ``CBIS-DDSM/CBIS-DDSM/``, where the TCIA downloader puts the tree.  Full mammograms are
16-bit DICOMs (Modality MG, PixelSpacing, PatientID/PatientName/PatientBirthDate/StudyDate, which are
identifying data readers must drop); ROI masks are 8-bit 0/255 images of the same size; crops are small.
Each patient contributes the CC and MLO views of one breast; there are no normal images.

Reproduced quirks: some images sit under study/series folders whose UIDs differ from the CSV's (reconcile
by walking the ``Mass-Training_P_00001_LEFT_CC`` folder), ROI paths ending in a newline and other stray
whitespace, one full image with two abnormalities (two rows, ids 1 and 2), MONOCHROME1 images, images
with WindowCenter/WindowWidth, one RLE Lossless and one JPEG 2000 Lossless file, and an abnormality whose
crop and ROI mask files are stored the other way round from what the CSV columns say.  Planted: a 0-byte
DICOM, a truncated DICOM, a DICOM without pixel data, a row with an unknown pathology and rows whose files
are missing.

CBIS-DDSM is a curated re-release of DDSM films: given DDSM's :class:`synth.ddsm.Film` s, a share of the
patients are those cases again (the same pixels, rescaled to 16 bits, under a new patient id), and the
manifest lists each such pair under ``links`` so tests can check they end up in one split.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    SecondaryCaptureImageStorage,
)

from synth.ddsm import Film
from synth.mammogram import CALCIFICATIONS, Lesion, LesionKind, draw_mammogram, quantize
from synth.quirks import plant_empty, plant_truncated
from synth.report import CollectionReport, Progress, shuffled

ROOT = "CBIS-DDSM"
TREE = "CBIS-DDSM"  # the downloader's folder inside the collection root; CSV paths are relative to it
UID_ROOT = "1.3.6.1.4.1.9590.100.1.2."
COLUMNS = {
    "mass": "patient_id,breast_density,left or right breast,image view,abnormality id,abnormality type,"
    "mass shape,mass margins,assessment,pathology,subtlety,image file path,cropped image file path,"
    "ROI mask file path",
    "calc": "patient_id,breast density,left or right breast,image view,abnormality id,abnormality type,"
    "calc type,calc distribution,assessment,pathology,subtlety,image file path,cropped image file path,"
    "ROI mask file path",
}
PATHOLOGIES = {"MALIGNANT": 0.5, "BENIGN": 0.35, "BENIGN_WITHOUT_CALLBACK": 0.15}
# (abnormality type, malignant) -> (lesion drawn, shape or calc type, margins or distribution) choices.
DESCRIPTORS: dict[tuple[str, bool], tuple[tuple[LesionKind, str, str], ...]] = {
    ("mass", True): (
        ("spiculated", "IRREGULAR", "SPICULATED"),
        ("spiculated", "IRREGULAR-ARCHITECTURAL_DISTORTION", "SPICULATED"),
        ("spiculated", "LOBULATED", "ILL_DEFINED"),
    ),
    ("mass", False): (
        ("round", "ROUND", "CIRCUMSCRIBED"),
        ("round", "OVAL", "CIRCUMSCRIBED"),
        ("ill_defined", "LOBULATED", "OBSCURED"),
    ),
    ("calc", True): (
        ("malignant_calc", "PLEOMORPHIC", "CLUSTERED"),
        ("malignant_calc", "FINE_LINEAR_BRANCHING", "LINEAR"),
        ("malignant_calc", "AMORPHOUS", "SEGMENTAL"),
    ),
    ("calc", False): (
        ("benign_calc", "PUNCTATE", "CLUSTERED"),
        ("benign_calc", "ROUND_AND_REGULAR", "DIFFUSELY_SCATTERED"),
        ("benign_calc", "LUCENT_CENTER", "REGIONAL"),
    ),
}
FULL_SIZE = ((4000, 5500), (2500, 3500))  # ranges of rows and columns of the real scans
MICRONS = 50.0
PLANTED = ("empty", "truncated", "no_pixel_data", "unknown_pathology", "missing_file")
NAMES = ("SMITH^MARY", "JONES^LINDA", "BROWN^PATRICIA", "DAVIS^BARBARA", "MILLER^SUSAN", "WILSON^KAREN")


@dataclass(frozen=True)
class Patient:
    """One CBIS-DDSM patient: the breast and abnormality shown in all of their images."""

    patient_id: str
    abnormality: str
    split: str
    side: str
    density: int
    pathology: str
    descriptor: tuple[LesionKind, str, str]
    name: str
    birth_date: str
    study_date: str

    def folder(self, view: str) -> str:
        """``Mass-Training_P_00001_LEFT_CC``: the top folder of one full image."""
        return f"{self.abnormality.capitalize()}-{self.split}_{self.patient_id}_{self.side}_{view}"


class Describe(NamedTuple):
    """What the DICOM attributes of every file of one full image say about it."""

    patient: Patient
    view: str
    spacing: float


@dataclass(frozen=True)
class Variant:
    """How one full image is stored: the quirks and planted faults that apply to it."""

    planted: str | None = None
    abnormalities: int = 1
    full_size: bool = False
    uid_mismatch: bool = False
    monochrome1: bool = False
    windowed: bool = False
    transfer_syntax: UID = ExplicitVRLittleEndian
    crop_mask_swapped: bool = False


def generate(
    root: Path,
    images: int,
    downscale: float,
    full_size: int,
    rng: np.random.Generator,
    progress: Progress,
    films: Sequence[Film] = (),
) -> CollectionReport:
    """Write ``images`` good full mammograms with their crops, masks and CSV rows under ``root``; patients
    whose two slots carry no planted fault or guaranteed quirk may become re-releases of ``films``."""
    report = CollectionReport(root, downscale=downscale)
    slots = [(patient, view) for patient in _patients(images + len(PLANTED), rng) for view in ("CC", "MLO")]
    slots = slots[: images + len(PLANTED)]
    variants = _variants(len(slots), full_size, rng)
    reissued = _reissue(slots, variants, films)
    rows: dict[tuple[str, str], list[list[str]]] = {
        (kind, split): [] for kind in COLUMNS for split in ("Training", "Test")
    }
    progress(f"{ROOT}: {images} images, {len({patient for patient, _ in slots})} patients")
    done = 0
    for index, ((patient, view), variant) in enumerate(zip(slots, variants, strict=True)):
        rows[patient.abnormality, patient.split] += _image(
            root, report, patient, view, variant, downscale, rng, reissued.get(index)
        )
        if variant.planted is None:
            done += 1
            if done % 250 == 0:
                progress(f"{ROOT}: {done}/{images}")

    for (kind, split), table in rows.items():
        name = f"{kind}_case_description_{'train' if split == 'Training' else 'test'}_set.csv"
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(COLUMNS[kind].split(","))
        writer.writerows(sorted(table, key=lambda row: (row[0], row[3], row[4])))
        (root / name).write_text(buffer.getvalue())
        report.auxiliary += 1
        if table:
            report.quirk(root / name, "stray_whitespace", "some ROI paths end with a newline")
    return report


def _patients(images: int, rng: np.random.Generator) -> list[Patient]:
    """Enough patients for ``images`` images at two views each, with sparse ids like the real P_0xxxx."""
    count = -(-images // 2)
    abnormalities = shuffled({"mass": 1.0, "calc": 1.0}, count, rng)
    pathologies = shuffled(PATHOLOGIES, count, rng)
    patients = []
    number = 0
    for abnormality, pathology in zip(abnormalities, pathologies, strict=True):
        number += int(rng.integers(1, 4))
        choices = DESCRIPTORS[abnormality, pathology == "MALIGNANT"]
        patients.append(
            Patient(
                patient_id=f"P_{number:05d}",
                abnormality=abnormality,
                split="Training" if rng.uniform() < 0.8 else "Test",
                side=str(rng.choice(["LEFT", "RIGHT"])),
                density=int(rng.integers(1, 5)),
                pathology=pathology,
                descriptor=choices[int(rng.integers(len(choices)))],
                name=str(rng.choice(NAMES)),
                birth_date=f"19{rng.integers(30, 70)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}",
                study_date=f"20{rng.integers(0, 8):02d}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}",
            )
        )
    return patients


def _reissue(
    slots: list[tuple[Patient, str]], variants: list[Variant], films: Sequence[Film]
) -> dict[int, Film]:
    """Turn eligible patients into DDSM cases again, in place; returns slot index -> film shown there.

    A DDSM case with both views of one breast abnormal replaces a patient whose CC and MLO slots are good,
    downscaled and free of guaranteed quirks; the patient keeps its id, split and identity, and takes the
    case's breast, density, pathology and abnormality type.  Windowing is turned off on those slots so the
    re-release shows the DDSM film's own contrast, as the real re-release does.
    """
    cases: dict[int, list[Film]] = {}
    for film in films:
        cases.setdefault(film.case, []).append(film)
    pairs = [pair for pair in cases.values() if [f.view.split("_")[1] for f in pair] == ["CC", "MLO"]]
    plain = Variant().transfer_syntax
    eligible = [
        i
        for i in range(0, len(slots) - 1, 2)
        if slots[i][0] is slots[i + 1][0]
        and all(
            v.planted is None and not v.full_size and v.abnormalities == 1 and v.transfer_syntax == plain
            for v in variants[i : i + 2]
        )
    ]
    shown: dict[int, Film] = {}
    for first, pair in zip(eligible, pairs, strict=False):
        lesion = pair[0].lesions[0]
        abnormality = "calc" if lesion.kind in CALCIFICATIONS else "mass"
        choices = DESCRIPTORS[abnormality, pair[0].pathology == "MALIGNANT"]
        patient = replace(
            slots[first][0],
            abnormality=abnormality,
            side=pair[0].view.split("_")[0],
            density=pair[0].density,
            pathology=pair[0].pathology,
            descriptor=next((c for c in choices if c[0] == lesion.kind), choices[0]),
        )
        for index, film in zip((first, first + 1), pair, strict=True):
            slots[index] = (patient, slots[index][1])
            variants[index] = replace(variants[index], windowed=False, abnormalities=len(film.lesions))
            shown[index] = film
    return shown


# Quirks every corpus shows at least once, each on its own small good image.
GUARANTEED: tuple[dict[str, object], ...] = (
    {"abnormalities": 2},
    {"transfer_syntax": RLELossless},
    {"transfer_syntax": JPEG2000Lossless},
    {"uid_mismatch": True},
    {"monochrome1": True},
    {"crop_mask_swapped": True},
)


def _variants(count: int, full_size: int, rng: np.random.Generator) -> list[Variant]:
    """Decide which slots are planted and which good images carry which quirk."""
    order = rng.permutation(count).tolist()
    planted, good = order[: len(PLANTED)], sorted(order[len(PLANTED) :])
    small = good[full_size:] or good
    changes: dict[int, dict[str, object]] = {slot: {"windowed": rng.uniform() < 0.3} for slot in good}
    for slot in good[:full_size]:
        changes[slot]["full_size"] = True
    for slot, guaranteed in zip(small, GUARANTEED, strict=False):
        changes[slot].update(guaranteed)
    for slot in small[len(GUARANTEED) :]:
        changes[slot].update(uid_mismatch=rng.uniform() < 0.1, monochrome1=rng.uniform() < 0.15)
    variants = {slot: Variant(planted=kind) for slot, kind in zip(planted, PLANTED, strict=True)}
    variants.update({slot: Variant(**change) for slot, change in changes.items()})
    return [variants[slot] for slot in range(count)]


def _uid(rng: np.random.Generator) -> str:
    """A UID under the CBIS-DDSM root, with the real collection's long random tail."""
    digits = "".join(map(str, rng.integers(0, 10, 38)))
    return f"{UID_ROOT}{rng.integers(1, 10)}{digits}"


def _image(
    root: Path,
    report: CollectionReport,
    patient: Patient,
    view: str,
    variant: Variant,
    downscale: float,
    rng: np.random.Generator,
    film: Film | None = None,
) -> list[list[str]]:
    """Write one full image (drawn, or ``film`` re-released), its crops and masks; returns its CSV rows."""
    kind, shape_or_type, margins_or_distribution = patient.descriptor
    if film is None:
        height, width = (int(rng.integers(*span)) for span in FULL_SIZE)
        if not variant.full_size:
            height, width = round(height / downscale), round(width / downscale)
        spacing = MICRONS / 1000 * (1 if variant.full_size else downscale)
        subtleties = [int(rng.integers(1, 6)) for _ in range(variant.abnormalities)]
        pixels, lesions = draw_mammogram(
            height,
            width,
            rng,
            left=patient.side == "LEFT",
            mlo=view == "MLO",
            density=(patient.density - 1) / 3,
            lesions=[(kind, subtlety) for subtlety in subtleties],
        )
        stored = quantize(pixels, 16)
    else:
        stored = film.pixels.astype(np.uint16) << (16 - film.bits)
        spacing, lesions, subtleties = film.microns / 1000, list(film.lesions), list(film.subtleties)
    tree = root / TREE
    folder = patient.folder(view)
    csv_full = f"{folder}/{_uid(rng)}/{_uid(rng)}/000000.dcm"
    disk_full = f"{folder}/{_uid(rng)}/{_uid(rng)}/000000.dcm" if variant.uid_mismatch else csv_full
    describe = Describe(patient, view, spacing)
    full = _dataset(stored, "full mammogram images", disk_full, variant, describe, rng)

    target = tree / disk_full
    if variant.planted != "missing_file":
        target.parent.mkdir(parents=True, exist_ok=True)
    if variant.planted == "empty":
        plant_empty(report, target)
    elif variant.planted == "truncated":
        plant_truncated(report, target, _encode(full))
    elif variant.planted == "no_pixel_data":
        del full.PixelData
        target.write_bytes(_encode(full))
        report.plant(target, "no_pixel_data")
    elif variant.planted in ("missing_file", "unknown_pathology"):
        if variant.planted == "unknown_pathology":
            target.write_bytes(_encode(full))
        report.plant(target, variant.planted)
    else:
        target.write_bytes(_encode(full))
        report.good(
            "malignant" if patient.pathology == "MALIGNANT" else "benign",
            patient.patient_id,
            target,
            lesions,
            stored.shape[:2],
        )
        if film is not None:
            report.link(target, film.path)
        for quirk, applies in (
            ("full_size", variant.full_size),
            ("uid_mismatch", variant.uid_mismatch),
            ("monochrome1", variant.monochrome1),
            ("two_abnormalities", variant.abnormalities == 2),
            ("crop_mask_swapped", variant.crop_mask_swapped),
            (str(variant.transfer_syntax.keyword), variant.transfer_syntax != ExplicitVRLittleEndian),
        ):
            if applies:
                report.quirk(target, quirk)

    rows = []
    for number, (lesion, subtlety) in enumerate(zip(lesions, subtleties, strict=True), start=1):
        crop, roi = _lesion_files(tree, report, stored, lesion, f"{folder}_{number}", variant, describe, rng)
        pathology = "INDETERMINATE" if variant.planted == "unknown_pathology" else patient.pathology
        newline = "\n" if rng.uniform() < 0.5 else ""
        rows.append(
            [
                patient.patient_id,
                str(patient.density),
                patient.side,
                view,
                str(number),
                patient.abnormality,
                shape_or_type,
                margins_or_distribution,
                str(4 if patient.pathology == "MALIGNANT" else int(rng.integers(2, 5))),
                pathology,
                str(subtlety),
                csv_full,
                crop,
                roi + newline,
            ]
        )
    return rows


def _lesion_files(
    tree: Path,
    report: CollectionReport,
    stored: np.ndarray,
    lesion: Lesion,
    folder: str,
    variant: Variant,
    describe: Describe,
    rng: np.random.Generator,
) -> tuple[str, str]:
    """Write the cropped image and the ROI mask of one abnormality; returns their CSV paths."""
    csv_series = f"{folder}/{_uid(rng)}/{_uid(rng)}"
    disk_series = f"{folder}/{_uid(rng)}/{_uid(rng)}" if variant.uid_mismatch else csv_series
    if variant.planted != "missing_file":
        mask = lesion.mask(*stored.shape)
        rows, cols = np.nonzero(mask)
        pad = max(2, int(0.1 * (rows.max() - rows.min())))
        top, left = max(0, rows.min() - pad), max(0, cols.min() - pad)
        crop = np.ascontiguousarray(stored[top : rows.max() + pad + 1, left : cols.max() + pad + 1])
        plain = Variant()
        (tree / disk_series).mkdir(parents=True, exist_ok=True)
        names = ("000001.dcm", "000000.dcm") if variant.crop_mask_swapped else ("000000.dcm", "000001.dcm")
        for name, pixels, description in (
            (names[0], crop, "cropped images"),
            (names[1], mask.astype(np.uint8) * 255, "ROI mask images"),
        ):
            dataset = _dataset(pixels, description, f"{disk_series}/{name}", plain, describe, rng)
            (tree / disk_series / name).write_bytes(_encode(dataset))
            report.auxiliary += 1
    return f"{csv_series}/000000.dcm", f"{csv_series}/000001.dcm"


def _dataset(
    pixels: np.ndarray,
    description: str,
    path: str,
    variant: Variant,
    describe: Describe,
    rng: np.random.Generator,
) -> Dataset:
    """A DICOM dataset for ``pixels`` (uint8 or uint16) stored as ``variant`` says, UIDs from ``path``."""
    _, study, series, _ = path.split("/")
    patient, view, spacing = describe
    bits = pixels.dtype.itemsize * 8
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = _uid(rng)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.Modality = "MG"
    ds.PatientID = patient.patient_id
    ds.PatientName = patient.name
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = "F"
    ds.StudyDate = ds.SeriesDate = patient.study_date
    ds.StudyDescription = "CBIS-DDSM"
    ds.SeriesDescription = description
    ds.BodyPartExamined = "BREAST"
    ds.ImageLaterality = patient.side[0]
    ds.ViewPosition = view
    ds.PixelSpacing = [f"{spacing:g}", f"{spacing:g}"]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if variant.monochrome1 else "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if variant.windowed:
        ds.WindowCenter, ds.WindowWidth = int(2 ** (bits - 1)), int(2**bits * 0.9)
    ds.PixelData = (np.iinfo(pixels.dtype).max - pixels if variant.monochrome1 else pixels).tobytes()
    if variant.transfer_syntax != ExplicitVRLittleEndian:
        ds.compress(variant.transfer_syntax, generate_instance_uid=False)
    return ds


def _encode(dataset: Dataset) -> bytes:
    """The bytes of a DICOM Part 10 file (preamble, file meta, dataset)."""
    buffer = io.BytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()
