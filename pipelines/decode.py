"""Decode: scanned records in, decoded, content-hashed and normalised image rows out, in the executors.

:func:`decode_images` reads, hashes, decodes and normalises the pixels one pandas batch at a time, so no
image ever travels to the driver. A file that cannot be decoded becomes a row with
``status = 'quarantined'`` and its reason instead of an exception: the job always finishes and every
file is accounted for. The rows it makes are :data:`DECODED_SCHEMA`; :mod:`pipelines.ingest` turns
them into table rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import types as T

from conf.schema import NormaliseSettings
from core.codec import encode_png
from core.phash import perceptual_hash
from core.quiet import quiet
from pipelines.normalise import normalise, transform_geometry, transform_mask
from pipelines.pseudonym import hide_paths
from pipelines.sources import READERS
from pipelines.sources.base import DecodeError, Geometry, ImageRecord
from pipelines.sources.files import set_pixel_limit

TRANSFORM_TYPE = T.StructType(
    [
        T.StructField("flipped", T.BooleanType()),
        T.StructField("top", T.IntegerType()),
        T.StructField("left", T.IntegerType()),
        T.StructField("bottom", T.IntegerType()),
        T.StructField("right", T.IntegerType()),
        T.StructField("scale", T.DoubleType()),
        T.StructField("height", T.IntegerType()),
        T.StructField("width", T.IntegerType()),
    ]
)

FINDING_TYPE = T.StructType(
    [
        T.StructField("index", T.IntegerType()),
        T.StructField("label", T.StringType()),
        T.StructField("subtype", T.StringType()),
        T.StructField("descriptors", T.MapType(T.StringType(), T.StringType())),
        T.StructField("geometry_kind", T.StringType()),
        T.StructField("geometry", T.StringType()),
        T.StructField("mask_png", T.BinaryType()),
    ]
)

DECODED_SCHEMA = T.StructType(
    [
        T.StructField("source_key", T.StringType(), False),
        T.StructField("collection", T.StringType(), False),
        T.StructField("modality", T.StringType(), False),
        T.StructField("source_path", T.StringType(), True),
        T.StructField("patient_key", T.StringType(), False),
        T.StructField("status", T.StringType(), False),
        T.StructField("stage", T.StringType(), True),
        T.StructField("reason", T.StringType(), True),
        T.StructField("image_id", T.StringType(), True),
        T.StructField("label", T.StringType(), True),
        T.StructField("view", T.StringType(), True),
        T.StructField("laterality", T.StringType(), True),
        T.StructField("magnification", T.IntegerType(), True),
        T.StructField("original_height", T.IntegerType(), True),
        T.StructField("original_width", T.IntegerType(), True),
        T.StructField("bit_depth", T.IntegerType(), True),
        T.StructField("pixel_spacing_mm", T.DoubleType(), True),
        T.StructField("attributes", T.MapType(T.StringType(), T.StringType()), True),
        T.StructField("transform", TRANSFORM_TYPE, True),
        T.StructField("height", T.IntegerType(), True),
        T.StructField("width", T.IntegerType(), True),
        T.StructField("pixels", T.BinaryType(), True),
        T.StructField("phash", T.LongType(), True),
        T.StructField("findings", T.ArrayType(FINDING_TYPE), True),
        T.StructField("notes", T.ArrayType(T.StringType()), True),
    ]
)


@dataclasses.dataclass(frozen=True)
class NormaliseOptions:
    """What the executors need to normalise an image (plain values: shipped in the task closure)."""

    mammography_height: int
    histology_height: int
    max_pixels: int

    @classmethod
    def from_settings(cls, normalise: NormaliseSettings) -> NormaliseOptions:
        return cls(normalise.mammography_height, normalise.histology_height, normalise.max_pixels)

    def height(self, modality: str) -> int:
        return self.mammography_height if modality == "mammography" else self.histology_height


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:32]


def lesion_mask(
    reader: ModuleType, root: Path, record: ImageRecord, geometry: Geometry, shape: tuple[int, int]
) -> np.ndarray | None:
    """The finding's ROI mask: the first binary candidate of the image's ``shape``, else the first binary
    one (stretched later, as real masks are sometimes a few pixels off), else None.

    Metadata can name the cropped lesion as the mask (CBIS-DDSM), so the candidates are judged by their
    pixels, not their names; the mask the metadata names is tried first and is usually right.
    """
    fallback = None
    for path in (geometry.mask_path, *geometry.mask_candidates):
        try:
            pixels = reader.decode(root, dataclasses.replace(record, path=str(path))).pixels
        except (DecodeError, OSError):
            continue
        if np.unique(pixels).size > 2:
            continue
        if pixels.shape[:2] == shape:
            return pixels
        fallback = pixels if fallback is None else fallback
    return fallback


def _quarantined(base: dict, stage: str, reason: str) -> dict:
    """A quarantine row; with ``privacy.hash_source_paths`` (no ``source_path``) the reason names no path."""
    if base["source_path"] is None:
        reason = hide_paths(reason)
    return {**base, "status": "quarantined", "stage": stage, "reason": reason}


def decode_record(row: Mapping, roots: Mapping[str, str], options: NormaliseOptions) -> dict:
    """Decode, hash and normalise one image; any failure becomes a quarantine row, never an exception."""

    base = {k: row[k] for k in ("source_key", "collection", "modality", "source_path", "patient_key")}
    record: ImageRecord = pickle.loads(row["record"])
    reader = READERS[record.collection]
    set_pixel_limit(options.max_pixels)  # every decoder this record reaches (its ROI masks too)
    root = Path(roots[record.collection])
    try:
        image_id = _file_hash(root / record.path)
        decoded = reader.decode(root, record)
        modality = row["modality"]
        pixels, transform = normalise(decoded, modality, options.height(modality))
        findings, notes = [], list(decoded.notes)
        for index, finding in enumerate(record.findings):
            geometry, mask_png = finding.geometry, None
            if geometry is not None and geometry.kind == "mask":
                mask = lesion_mask(reader, root, record, geometry, (decoded.height, decoded.width))
                if mask is None:
                    notes.append(f"finding {index}: no binary ROI mask among its files; image-level only")
                    geometry = None
                else:
                    region = transform_mask(mask > 0.5, transform, (decoded.height, decoded.width))
                    mask_png = encode_png(region.astype("uint8") * 255)
                    geometry = Geometry(kind="mask")  # pixels travel in mask_png; the path may identify
            elif geometry is not None:
                geometry = transform_geometry(geometry, transform, decoded.width)
            findings.append(
                {
                    "index": index,
                    "label": finding.label,
                    "subtype": finding.subtype,
                    "descriptors": dict(finding.descriptors),
                    "geometry_kind": geometry.kind if geometry else None,
                    "geometry": json.dumps(dataclasses.asdict(geometry)) if geometry else None,
                    "mask_png": mask_png,
                }
            )
    except (DecodeError, OSError, ValueError) as exc:
        stage = "decode" if isinstance(exc, DecodeError | OSError) else "normalise"
        return _quarantined(base, stage, str(exc) or type(exc).__name__)
    except Exception as exc:  # noqa: BLE001 - a library's unforeseen failure on one file stops no job
        reason = f"{type(exc).__name__}: {exc}"[:500]
        return _quarantined(base, "decode", f"unexpected failure: {reason}")
    return {
        **base,
        "status": "ok",
        "image_id": image_id,
        "label": record.label,
        "view": record.view,
        "laterality": record.laterality,
        "magnification": record.magnification,
        "original_height": decoded.height,
        "original_width": decoded.width,
        "bit_depth": decoded.bit_depth,
        "pixel_spacing_mm": record.pixel_spacing_mm,
        "attributes": dict(record.attributes),
        "transform": transform.to_dict(),
        "height": int(pixels.shape[0]),
        "width": int(pixels.shape[1]),
        "pixels": encode_png(pixels),
        "phash": perceptual_hash(pixels),
        "findings": findings,
        "notes": notes,
    }


def object_frame(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    """``rows`` as a pandas frame for ``mapInPandas`` to hand back to Spark: object columns, so a missing
    value stays ``None`` (no NaN in a string column, no map or struct to fill for a quarantined row)."""
    return pd.DataFrame({c: pd.Series([r.get(c) for r in rows], dtype=object) for c in columns})


DECODE_BATCH = 16  # decoded images a Python worker holds before handing them to Spark


def decode_images(records: DataFrame, roots: Mapping[str, str], options: NormaliseOptions) -> DataFrame:
    """Executors: decode, content-hash and normalise every record.

    Args:
        records: rows of :data:`pipelines.ingest.RECORD_SCHEMA`.
        roots: collection name -> root folder, as seen by the executors.
        options: normalised sizes.

    Returns:
        Rows of :data:`DECODED_SCHEMA`, one per record, ``status`` ``ok`` or ``quarantined``.
    """
    roots = dict(roots)
    columns = DECODED_SCHEMA.fieldNames()

    def run(batches: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        quiet()
        for batch in batches:
            records = batch.to_dict("records")
            for start in range(0, len(records), DECODE_BATCH):
                rows = [decode_record(row, roots, options) for row in records[start : start + DECODE_BATCH]]
                yield object_frame(rows, columns)

    return records.mapInPandas(run, DECODED_SCHEMA)
