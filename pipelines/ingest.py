"""Ingest's table rows, and the steps that the collections and the landing zone share.

The driver only scans metadata (see :mod:`pipelines.sources`) and pseudonymises patients
(:func:`record_rows`); :func:`decode_new` has the executors decode the files not yet in the images
table (:mod:`pipelines.decode`). The decoded rows become ``images`` rows (:func:`image_rows`, one file
kept per content hash: :func:`new_files`), ``annotations`` rows (:func:`annotation_rows`) and
``quarantine`` rows (:func:`merge_quarantine`). Used by :func:`pipelines.collections.ingest_collections`
and :func:`pipelines.land.land_folder`.
"""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from conf import Settings
from core.ids import stable_id, stable_id_sql
from pipelines.decode import NormaliseOptions, decode_images
from pipelines.io import append_new, table_exists
from pipelines.pseudonym import hide_paths, path_key, pseudonymise
from pipelines.sources import READERS
from pipelines.sources.base import Rejection, Scan
from pipelines.split import SPLIT_STRATEGY
from pipelines.summary import CollectionSummary, count_outcome

RECORD_SCHEMA = T.StructType(
    [
        T.StructField("source_key", T.StringType(), False),
        T.StructField("collection", T.StringType(), False),
        T.StructField("modality", T.StringType(), False),
        T.StructField("source_path", T.StringType(), True),
        T.StructField("patient_key", T.StringType(), False),
        T.StructField("record", T.BinaryType(), False),
    ]
)

QUARANTINE_SCHEMA = T.StructType(
    [
        T.StructField("quarantine_id", T.StringType(), False),
        T.StructField("collection", T.StringType(), False),
        T.StructField("path", T.StringType(), False),
        T.StructField("stage", T.StringType(), False),
        T.StructField("reason", T.StringType(), False),
        T.StructField("is_image", T.BooleanType(), False),
        T.StructField("first_seen_at", T.TimestampType(), False),
    ]
)


def display_path(collection: str, path: str, hash_paths: bool) -> str:
    """How a source path appears in tables: as is, or only as its key for private collections."""
    return path_key(collection, path) if hash_paths else path


def record_rows(
    scans: Mapping[str, Scan], secret: bytes, hash_paths: bool
) -> list[tuple[str, str, str, str | None, str, bytes]]:
    """Driver side: one row per scanned image, with the patient already pseudonymised.

    The original patient identifier is replaced inside the pickled record too, so it never reaches an
    executor, a table or a log.
    """
    rows = []
    for collection, scan in scans.items():
        for record in scan.records:
            modality = record.modality or READERS[collection].MODALITY
            key = pseudonymise(secret, collection, record.patient_ref)
            safe = dataclasses.replace(record, patient_ref=key)
            rows.append(
                (
                    path_key(collection, record.path),
                    collection,
                    modality,
                    None if hash_paths else record.path,
                    key,
                    pickle.dumps(safe),
                )
            )
    return rows


def records_frame(spark: SparkSession, rows: list[tuple], per_partition: int = 256) -> DataFrame:
    """The scanned records as a DataFrame: four tasks per core at least (so one task holding a full-size
    film does not leave a core idle at the end), and at most about ``per_partition`` images per task.

    Each task costs a round trip to a Python worker, so small corpora are not cut finer than that; the
    decoder yields small batches, so a large task does not hold more decoded images in memory.
    """
    partitions = max(4 * spark.sparkContext.defaultParallelism, -(-len(rows) // per_partition), 1)
    return spark.createDataFrame(rows, RECORD_SCHEMA).repartition(partitions, "source_key")


def without_present(records: DataFrame, images: DataFrame | None) -> DataFrame:
    """Drop records whose source file is already in the images table (re-runs decode nothing twice).

    Args:
        records: scanned records.
        images: the current images table, or ``None`` before the first run.

    Returns:
        The records still to decode.
    """
    if images is None:
        return records
    return records.join(images.select("source_key"), "source_key", "left_anti")


def _now() -> datetime:
    return datetime.now(UTC)


def image_rows(decoded: DataFrame, chosen: DataFrame) -> DataFrame:
    """The ``images`` table's rows for newly decoded images, with their (already assigned) split.

    Args:
        decoded: :func:`pipelines.decode.decode_images` output.
        chosen: ``source_key, split, split_strategy``: the one file kept per new content hash (the
            driver picked it, so no shuffle moves pixels to deduplicate), the image's split and the
            strategy that drew it (null: none recorded), kept as ``attributes['split_strategy']``.

    Returns:
        Rows in the ``images`` contract of docs/tables.md, one per distinct content hash.
    """
    strategy = F.col("split_strategy")
    attributes = F.when(strategy.isNull(), F.col("attributes")).otherwise(
        F.map_concat(F.col("attributes"), F.create_map(F.lit(SPLIT_STRATEGY), strategy))
    )
    return (
        decoded.where(F.col("status") == "ok")
        .join(F.broadcast(chosen), "source_key")
        .withColumn("attributes", attributes)
        .select(
            "image_id",
            "collection",
            "modality",
            "source_key",
            "source_path",
            "patient_key",
            "label",
            "split",
            "view",
            "laterality",
            "magnification",
            "original_height",
            "original_width",
            "bit_depth",
            "pixel_spacing_mm",
            "attributes",
            "transform",
            "height",
            "width",
            "phash",
            "notes",
            "pixels",
            F.lit(_now()).alias("ingested_at"),
        )
    )


def annotation_rows(decoded: DataFrame) -> DataFrame:
    """The ``annotations`` table's rows: one per finding, sourced from the collection's own metadata.

    Every row has ``source = 'collection'``; expert reports (:mod:`pipelines.reports`) add rows with
    ``source = 'expert'``, a reporter and a report id on the same images, which tile labels do not read
    (:func:`pipelines.tiles.with_findings`).
    """
    finding = F.col("finding")
    return (
        decoded.where(F.col("status") == "ok")
        .dropDuplicates(["image_id"])
        .select("image_id", "collection", F.explode("findings").alias("finding"))
        .select(
            F.expr(stable_id_sql("image_id", "'collection'", "CAST(finding.`index` AS STRING)")).alias(
                "annotation_id"
            ),
            "image_id",
            "collection",
            finding["label"].alias("label"),
            finding["subtype"].alias("subtype"),
            finding["descriptors"].alias("descriptors"),
            finding["geometry_kind"].alias("geometry_kind"),
            finding["geometry"].alias("geometry"),
            finding["mask_png"].alias("mask_png"),
            F.lit("collection").alias("source"),
            F.lit(None).cast("string").alias("reporter"),
            F.lit(_now()).alias("created_at"),
            F.lit(None).cast("string").alias("report_id"),
            F.lit(None).cast("timestamp").alias("reported_at"),
            F.lit(None).cast("string").alias("text"),
        )
    )


def scan_quarantine_rows(
    spark: SparkSession, rejections: Mapping[str, list[Rejection]], hash_paths: bool
) -> DataFrame:
    """``quarantine`` rows for what the scans rejected (malformed rows, missing files, unknown labels)."""
    now = _now()
    rows = [
        (
            stable_id(collection, r.path, r.stage, reason),
            collection,
            display_path(collection, r.path, hash_paths),
            r.stage,
            reason,
            r.is_image,
            now,
        )
        for collection, items in rejections.items()
        for r in items
        for reason in (hide_paths(r.reason) if hash_paths else r.reason,)
    ]
    return spark.createDataFrame(rows, QUARANTINE_SCHEMA)


def decode_quarantine_rows(decoded: DataFrame) -> DataFrame:
    """``quarantine`` rows for files that failed to decode or normalise."""
    path = "coalesce(source_path, source_key)"
    return decoded.where(F.col("status") == "quarantined").select(
        F.expr(stable_id_sql("collection", path, "stage", "reason")).alias("quarantine_id"),
        "collection",
        F.expr(path).alias("path"),
        "stage",
        "reason",
        F.lit(True).alias("is_image"),
        F.lit(_now()).alias("first_seen_at"),
    )


def scan_summary(scan: Scan) -> CollectionSummary:
    """A collection's accounting as its scan leaves it: every image file seen, those it rejected counted
    quarantined, and the rejected metadata rows (not files) apart."""
    image_rejections = sum(r.is_image for r in scan.rejections)
    return CollectionSummary(
        seen=len(scan.records) + image_rejections,
        quarantined=image_rejections,
        auxiliary=scan.auxiliary,
        rejected_rows=len(scan.rejections) - image_rejections,
    )


def decode_new(
    spark: SparkSession,
    settings: Settings,
    scans: Mapping[str, Scan],
    roots: Mapping[str, str],
    images: DataFrame | None,
    secret: bytes,
) -> DataFrame:
    """Decode, in the executors, the scanned files whose path is not in ``images`` yet.

    Args:
        spark: the session.
        settings: privacy (path hashing) and normalise settings.
        scans: collection name -> its scan.
        roots: collection name -> its root folder, absolute (the executors open the files from it).
        images: the current images table, or ``None`` before the first run.
        secret: the pseudonym key.

    Returns:
        The :func:`pipelines.decode.decode_images` rows, persisted: the caller unpersists them.
    """
    rows = record_rows(scans, secret, settings.privacy.hash_source_paths)
    todo = without_present(records_frame(spark, rows), images)
    options = NormaliseOptions.from_settings(settings.normalise)
    # Kept on the executors' local disks, not in their heaps: the job reads the decoded rows four times
    # (outcomes, quarantine, annotations, images), and a heap that held them would grow with the corpus
    # (it did: 2.2 -> 3.5 GB from 1,000 to 4,000 images). Written a few rows per batch (jobs.session sets
    # spark.sql.inMemoryColumnarStorage.batchSize), so no buffer holds a whole task's images either.
    return decode_images(todo, roots, options).persist(StorageLevel.DISK_ONLY)


def outcomes(decoded: DataFrame) -> list[dict[str, Any]]:
    """What became of each decoded file (``collection, status, image_id, source_key, reason``), on the
    driver."""
    columns = ("collection", "status", "image_id", "source_key", "reason")
    return [r.asDict() for r in decoded.select(*columns).collect()]


def merge_quarantine(
    spark: SparkSession,
    settings: Settings,
    scans: Mapping[str, Scan],
    decoded: DataFrame,
    metadata: Mapping[str, Any],
    outcome: list[dict[str, Any]] | None = None,
) -> None:
    """Append to the ``quarantine`` table what the scans rejected and the files that failed to decode
    (rows whose id is new: :func:`pipelines.io.append_new`).

    Args:
        outcome: :func:`outcomes` of ``decoded``, when the caller has them: with no rejection and no
            failed file, nothing is written to an existing table (no Spark job, no commit: a stream's
            clean micro-batch); the table is still created on a first run.
    """
    path = settings.lakehouse.table("quarantine")
    rejections = {name: scan.rejections for name, scan in scans.items()}
    clean = outcome is not None and all(row["status"] != "quarantined" for row in outcome)
    if clean and not any(rejections.values()) and table_exists(spark, path):
        return
    quarantine = scan_quarantine_rows(spark, rejections, settings.privacy.hash_source_paths)
    append_new(
        spark,
        quarantine.unionByName(decode_quarantine_rows(decoded)),
        path,
        ["quarantine_id"],
        metadata,
    )


def new_files(
    outcome: list[dict[str, Any]], summary_of: Callable[[str], CollectionSummary], known: set[str]
) -> dict[str, str]:
    """Count every decoded file in its collection's summary and pick the one file kept per new image.

    Files are taken in ``source_key`` order, so the same corpus always keeps the same file of identical
    ones. See :func:`pipelines.summary.count_outcome`.

    Args:
        outcome: :func:`outcomes`.
        summary_of: collection name -> the summary to count its files in.
        known: the image ids already in the table; the new ones are added to it.

    Returns:
        ``image_id -> source_key`` of the files to write, one per image not in the table before.
    """
    kept: dict[str, str] = {}
    for row in sorted(outcome, key=lambda r: r["source_key"]):
        if count_outcome(summary_of(row["collection"]), row["status"], row["image_id"], known):
            kept[row["image_id"]] = row["source_key"]
    return kept


def merge_images(
    spark: SparkSession,
    decoded: DataFrame,
    kept: Mapping[str, str],
    splits: Mapping[str, str] | None,
    path: str,
    metadata: Mapping[str, Any],
    strategies: Mapping[str, str] | None = None,
) -> None:
    """Append the kept files' :func:`image_rows` to the images table at ``path`` (image ids not in it yet:
    an anti-join on ``image_id`` alone, :func:`pipelines.io.append_new`; no join touches the pixels).

    Args:
        kept: :func:`new_files`.
        splits: ``image_id -> split`` for every kept image; ``None`` for images without a split (landing).
        strategies: ``image_id -> split strategy`` (``patient``, ``official``) that drew the split,
            kept in the image's ``attributes['split_strategy']``; ``None`` for none.
    """
    strategies = strategies or {}
    chosen = spark.createDataFrame(
        sorted(
            (key, None if splits is None else splits[image], strategies.get(image))
            for image, key in kept.items()
        ),
        "source_key string, split string, split_strategy string",
    )
    append_new(spark, image_rows(decoded, chosen), path, ["image_id"], metadata)
