"""Tiles: normalised images and their findings in, labelled 224x224 training tiles out.

Each image is cut on a regular grid in the executors; background tiles are dropped, and each kept tile
is labelled from the finding geometry (see :func:`pipelines.tiling.label_tiles` for the rules). A tile
carries its image's split and patient pseudonym, so training and evaluation never need a join and a
leak shows up in the tiles table as well.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from conf.schema import TileSettings

TILE_SCHEMA = T.StructType(
    [
        T.StructField("tile_id", T.StringType(), False),
        T.StructField("image_id", T.StringType(), False),
        T.StructField("collection", T.StringType(), False),
        T.StructField("modality", T.StringType(), False),
        T.StructField("patient_key", T.StringType(), False),
        T.StructField("split", T.StringType(), True),
        T.StructField("image_label", T.StringType(), True),
        T.StructField("label", T.StringType(), True),
        T.StructField("label_source", T.StringType(), False),
        T.StructField("y", T.IntegerType(), False),
        T.StructField("x", T.IntegerType(), False),
        T.StructField("size", T.IntegerType(), False),
        T.StructField("overlap", T.DoubleType(), False),
        T.StructField("tissue", T.DoubleType(), False),
        T.StructField("channels", T.IntegerType(), False),
        T.StructField("pixels", T.BinaryType(), False),
    ]
)


@dataclass(frozen=True)
class TileOptions:
    """Plain values shipped to the executors."""

    size: int
    stride: int
    min_tissue: float
    overlap_threshold: float

    @classmethod
    def from_settings(cls, tiles: TileSettings) -> TileOptions:
        return cls(tiles.size, tiles.stride, tiles.min_tissue, tiles.overlap_threshold)


def images_to_tile(images: DataFrame, tiles: DataFrame | None) -> DataFrame:
    """Images that have no tiles yet (re-runs cut nothing twice).

    Args:
        images: the images table.
        tiles: the tiles table, or ``None`` before the first run.

    Returns:
        The images still to cut.
    """
    if tiles is None:
        return images
    return images.join(tiles.select("image_id").distinct(), "image_id", "left_anti")


def with_findings(images: DataFrame, annotations: DataFrame) -> DataFrame:
    """Attach each image's findings (label and normalised geometry) as an array column ``findings``.

    The findings are broadcast: they are a few hundred bytes per image (masks are small PNGs), while the
    images carry their pixels, which a shuffle join would move across the cluster for nothing.
    """
    findings = annotations.groupBy("image_id").agg(
        F.collect_list(F.struct("label", "geometry_kind", "geometry", "mask_png")).alias("findings")
    )
    return images.join(F.broadcast(findings), "image_id", "left")


def _tile_id(image_id: str, y: int, x: int, size: int) -> str:
    return f"{image_id}-{size}-{y}-{x}"


def cut_image(row: Mapping, options: TileOptions) -> list[dict]:
    from pipelines.sources.base import Geometry
    from core.codec import decode_png, encode_png
    from pipelines.tiling import cut_tile, label_tiles, rasterise

    image = decode_png(row["pixels"])
    height, width = image.shape[:2]
    regions: list[tuple[str, np.ndarray | None]] = []
    findings = row["findings"] if row["findings"] is not None else []
    for finding in findings:
        kind = finding["geometry_kind"]
        if kind is None:
            regions.append((finding["label"], None))
            continue
        if kind == "mask":
            region = rasterise(Geometry(kind="mask"), height, width, decode_png(finding["mask_png"]) > 0)
        else:
            region = rasterise(Geometry.from_dict(json.loads(finding["geometry"])), height, width)
        regions.append((finding["label"], region))
    labels = label_tiles(
        image,
        row["modality"],
        row["label"],
        regions,
        options.size,
        options.stride,
        options.min_tissue,
        options.overlap_threshold,
    )
    channels = 3 if image.ndim == 3 else 1
    return [
        {
            "tile_id": _tile_id(row["image_id"], t.y, t.x, options.size),
            "image_id": row["image_id"],
            "collection": row["collection"],
            "modality": row["modality"],
            "patient_key": row["patient_key"],
            "split": row["split"],
            "image_label": row["label"],
            "label": t.label,
            "label_source": t.label_source,
            "y": t.y,
            "x": t.x,
            "size": options.size,
            "overlap": float(t.overlap),
            "tissue": float(t.tissue),
            "channels": channels,
            "pixels": encode_png(cut_tile(image, t.y, t.x, options.size)),
        }
        for t in labels
    ]


TILE_BATCH = 16  # images whose tiles a Python worker holds before handing them to Spark


def cut_tiles(images: DataFrame, options: TileOptions) -> DataFrame:
    """Executors: cut and label the tiles of every image.

    Args:
        images: rows of the images table with a ``findings`` column (:func:`with_findings`).
        options: grid and labelling thresholds.

    Returns:
        Rows of :data:`TILE_SCHEMA`.
    """
    columns = TILE_SCHEMA.fieldNames()
    selected = images.select(
        "image_id", "collection", "modality", "patient_key", "split", "label", "pixels", "findings"
    )

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            records = batch.to_dict("records")
            for start in range(0, len(records), TILE_BATCH):
                chunk = records[start : start + TILE_BATCH]
                rows = [tile for row in chunk for tile in cut_image(row, options)]
                yield pd.DataFrame(rows, columns=columns)

    return selected.mapInPandas(run, TILE_SCHEMA)
