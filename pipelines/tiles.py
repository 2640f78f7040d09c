"""Tiles: normalised images and their findings in, labelled ``tiles.size`` training tiles out.

Each image is cut on a regular grid in the executors; background tiles are dropped, and each kept tile
is labelled from the geometry of the collection's own findings (see :func:`pipelines.tiling.label_tiles`
for the rules; expert annotations are not read). A tile carries its image's split and patient pseudonym,
so training and evaluation never need a join and a leak shows up in the tiles table as well.
:func:`tile_images` is the tile job; :func:`merge_new_tiles` is shared with the landing zone.

The tiles table's file layout is this module's (:func:`by_layout`): every file holds the tiles of one
split and one modality, in Parquet row groups of ``tiles.row_group_rows`` rows, so that a training
worker reading one split's files with Petastorm (which reads whole row groups and prunes nothing) reads
only that split's rows, and every split has many row groups to shard among workers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from conf import Settings
from conf.schema import TileSettings
from core.codec import decode_png, encode_png
from core.quiet import quiet
from core.tasks import label_origin
from pipelines.curation import consensus_images
from pipelines.io import append_new, read_table, row_group_properties, table_exists
from pipelines.sources.base import Geometry
from pipelines.split import SplitLeak
from pipelines.summary import TileSummary
from pipelines.tiling import cut_tile, label_tiles, lesion_patches, rasterise

# The findings column of images without any (the landing zone's): what cut_tiles reads.
NO_FINDINGS = "array<struct<label:string,geometry_kind:string,geometry:string,mask_png:binary>>"

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
        T.StructField("label_origin", T.StringType(), True),
    ]
)


@dataclass(frozen=True)
class TileOptions:
    """Plain values shipped to the executors (``scored_stride``: per modality, the grid step of images
    that are scored, where it differs from ``stride``)."""

    size: int
    stride: int
    min_tissue: float
    overlap_threshold: float
    lesion_patches: int = 0
    lesion_jitter: float = 0.25
    scored_stride: tuple[tuple[str, int], ...] = ()

    def stride_of(self, modality: str, split: str | None) -> int:
        """The grid step of an image of this modality and split (``None``: a landed image)."""
        if split == "train":
            return self.stride
        return dict(self.scored_stride).get(modality, self.stride)

    @classmethod
    def from_settings(cls, tiles: TileSettings) -> TileOptions:
        return cls(
            tiles.size,
            tiles.stride,
            tiles.min_tissue,
            tiles.overlap_threshold,
            tiles.lesion_patches,
            tiles.lesion_jitter,
            tuple(sorted(tiles.scored_stride.items())),
        )


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
    """Attach each image's own findings (label and normalised geometry) as an array column ``findings``.

    Only annotations with ``source = 'collection'`` (the collection's own metadata) are read: an expert
    report never changes a tile label. The findings are broadcast: they are a few hundred bytes per image
    (masks are small PNGs), while the images carry their pixels, which a shuffle join would move across
    the cluster for nothing.
    """
    findings = (
        annotations.where(F.col("source") == "collection")
        .groupBy("image_id")
        .agg(F.collect_list(F.struct("label", "geometry_kind", "geometry", "mask_png")).alias("findings"))
    )
    return images.join(F.broadcast(findings), "image_id", "left")


def _tile_id(image_id: str, y: int, x: int, size: int, source: str = "") -> str:
    """A grid tile's id; a lesion patch's names its kind (a patch may start where a grid tile does)."""
    return f"{image_id}-{size}-{y}-{x}" if source != "lesion_patch" else f"{image_id}-{size}-p-{y}-{x}"


def cut_image(row: Mapping, options: TileOptions) -> list[dict]:
    """The labelled tiles of one image row (with its ``findings``), as :data:`TILE_SCHEMA` dicts."""
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
        options.stride_of(row["modality"], row["split"]),
        options.min_tissue,
        options.overlap_threshold,
    )
    if (
        options.lesion_patches
        and row["split"] == "train"
        and row["modality"] == "mammography"
        and row["label"] not in (None, "normal")
    ):
        labels += lesion_patches(
            image,
            regions,
            options.size,
            options.lesion_patches,
            options.lesion_jitter,
            options.min_tissue,
            options.overlap_threshold,
            int(row["image_id"][:8], 16),
        )
    channels = 3 if image.ndim == 3 else 1
    own = label_origin(row["collection"]) if row["label"] is not None else None  # landed images: none
    origin = row.get("label_origin") or own
    suffix = row.get("tile_suffix") or ""
    return [
        {
            "tile_id": _tile_id(row["image_id"], t.y, t.x, options.size, t.label_source) + suffix,
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
            "label_origin": origin,
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
    extra = [c for c in ("label_origin", "tile_suffix") if c in images.columns]
    selected = images.select(
        "image_id", "collection", "modality", "patient_key", "split", "label", "pixels", "findings", *extra
    )

    def run(batches: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        quiet()
        for batch in batches:
            records = batch.to_dict("records")
            for start in range(0, len(records), TILE_BATCH):
                chunk = records[start : start + TILE_BATCH]
                rows = [tile for row in chunk for tile in cut_image(row, options)]
                yield pd.DataFrame(rows, columns=columns)

    return selected.mapInPandas(run, TILE_SCHEMA)


SPLITS = ("train", "val", "test", None)  # None: unlabelled tiles (the landing zone's)
MODALITIES = ("mammography", "histology")


def _spread_keys(spark: SparkSession, partitions: int) -> list[int]:
    """``partitions`` integers that Spark's hash partitioning sends to ``partitions`` different tasks.

    ``repartition(n, column)`` places a row in task ``pmod(hash(column), n)`` (Murmur3, as SQL ``hash``);
    hashing the group names themselves would put two groups in one task (one file) most of the time.
    """
    rows = spark.range(0, 64 * partitions).select("id", F.expr(f"pmod(hash(id), {partitions})")).collect()
    first: dict[int, int] = {}
    for key, task in rows:
        first.setdefault(int(task), int(key))
    return [first[task] for task in range(partitions)]


def by_layout(spark: SparkSession, files_per_group: int = 1) -> Callable[[DataFrame], DataFrame]:
    """The tiles table's layout: one task (so one file) per split and modality, rows in a hashed order.

    Args:
        files_per_group: the files each (split, modality) group's new tiles are written in (their
            tasks write in parallel); tile ids are spread among them by hash.

    Returns:
        A repartitioning of new tile rows for :func:`pipelines.io.append_new`. Groups outside
        :data:`SPLITS` x :data:`MODALITIES` share one more group.
    """
    groups = [(s, m) for s in SPLITS for m in MODALITIES]
    partitions = (len(groups) + 1) * files_per_group
    keys = _spread_keys(spark, partitions)
    cases = " ".join(
        f"WHEN split {'IS NULL' if s is None else f'= {s!r}'} AND modality = {m!r} THEN {i}"
        for i, (s, m) in enumerate(groups)
    )
    group = F.expr(f"CASE {cases} ELSE {len(groups)} END")
    part = group * files_per_group + F.expr(f"pmod(xxhash64(tile_id), {files_per_group})")
    lookup = F.array(*[F.lit(k).cast("long") for k in keys])  # hashed as the longs they were found as

    def layout(tiles: DataFrame) -> DataFrame:
        keyed = tiles.withColumn("_layout", F.element_at(lookup, (part + 1).cast("int")))
        # Hashed order inside a file: each row group is a random sample of its group's tiles (of every
        # label and image), which is what shuffling whole row groups needs.
        return (
            keyed.repartition(partitions, "_layout")
            .sortWithinPartitions(F.xxhash64("tile_id"))
            .drop("_layout")
        )

    return layout


IMAGES_PER_FILE = 1000
"""A run writes each (split, modality) group's new tiles in one file per this many images it cuts: the
layout's sort holds one file's rows at a time, so an executor's memory does not grow with the size of a
load (at 4,000 images one file per group held 1.5 GB of tile bytes in one sort)."""


def files_per_group_for(images: int) -> int:
    """The files per (split, modality) group of a run cutting ``images`` images (:data:`IMAGES_PER_FILE`)."""
    return max(1, -(-images // IMAGES_PER_FILE))


class NoImages(RuntimeError):
    """There is no images table to tile yet."""


def merge_new_tiles(
    spark: SparkSession,
    images_path: str,
    tiles_path: str,
    annotations_path: str | None,
    options: TileOptions,
    metadata: Mapping[str, object],
    row_group_rows: int,
    files_per_group: int | None = None,
) -> int:
    """Cut the images of ``images_path`` that have no tiles yet and append their tiles (new tile ids
    only) in the tiles layout (:func:`by_layout`, row groups of ``row_group_rows``).

    Args:
        annotations_path: the findings to label from (:func:`with_findings`); ``None`` for images that
            have none (the landing zone's, unlabelled).
        metadata: the commit's ``userMetadata``.
        files_per_group: see :func:`by_layout`; ``None``: :func:`files_per_group_for` the images to cut.

    Returns:
        How many images were cut (0: nothing was written, no commit made).
    """
    done = read_table(spark, tiles_path) if table_exists(spark, tiles_path) else None
    todo = images_to_tile(read_table(spark, images_path), done)
    count = todo.count()
    if not count:
        return 0
    if annotations_path is None:
        todo = todo.withColumn("findings", F.lit(None).cast(NO_FINDINGS))
    else:
        todo = with_findings(todo, read_table(spark, annotations_path))
    append_new(
        spark,
        cut_tiles(todo, options),
        tiles_path,
        ["tile_id"],
        metadata,
        layout=by_layout(spark, files_per_group or files_per_group_for(count)),
        properties=row_group_properties(row_group_rows),
    )
    return count


def tile_images(spark: SparkSession, settings: Settings, files_per_group: int | None = None) -> TileSummary:
    """The tile job: tile every image of the lakehouse not yet tiled, check splits, count the tiles.

    With ``train.labels`` naming consensus collections, the images the newest expert consensus labelled
    (and curated landed images) also get tiles labelled from it (:mod:`pipelines.curation`), beside their
    collection-labelled ones.

    Re-running adds nothing.

    Args:
        files_per_group: see :func:`by_layout`; ``None``: one file per :data:`IMAGES_PER_FILE` images cut.

    Returns:
        The tiles table's counts per collection, split and label.

    Raises:
        NoImages: before the first ingest.
        SplitLeak: when one patient's tiles span two splits.
    """
    lake = settings.lakehouse
    if not table_exists(spark, lake.table("images")):
        raise NoImages("no images table yet: run 'oncolake ingest' first")
    tiles_path = lake.table("tiles")
    metadata = {"job": "tile", "config": settings.public_dict()}
    options = TileOptions.from_settings(settings.tiles)
    merge_new_tiles(
        spark,
        lake.table("images"),
        tiles_path,
        lake.table("annotations"),
        options,
        metadata,
        settings.tiles.row_group_rows,
        files_per_group,
    )
    consensus = consensus_images(spark, settings, tiles_path)
    to_cut = consensus.count() if consensus is not None else 0  # no pixel column is read to count
    if consensus is not None and to_cut:
        append_new(
            spark,
            cut_tiles(consensus, options),
            tiles_path,
            ["tile_id"],
            {**metadata, "labels": "consensus"},
            layout=by_layout(spark, files_per_group or files_per_group_for(to_cut)),
            properties=row_group_properties(settings.tiles.row_group_rows),
        )
    # One pass over the table's label columns answers both the leak check and the counts.
    label = F.coalesce("label", F.lit("(none)")).alias("label")
    table = read_table(spark, tiles_path)
    rows = table.groupBy("collection", "patient_key", "split", label).count().collect()
    splits_of: dict[tuple[str, str], set[str]] = {}
    counts: dict[tuple[str, str, str], int] = {}
    for r in rows:
        splits_of.setdefault((r["collection"], r["patient_key"]), set()).add(r["split"])
        key = (r["collection"], r["split"], r["label"])
        counts[key] = counts.get(key, 0) + r["count"]
    leaks = sum(len(splits) > 1 for splits in splits_of.values())
    if leaks:
        raise SplitLeak(f"tiles of {leaks} patients span two splits")
    return TileSummary(sorted((c, s, lab, n) for (c, s, lab), n in counts.items()))
