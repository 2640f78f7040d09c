"""Land a folder of new, unlabelled images into the landing tables, ready to score.

Every file below the folder (PNG 8/16-bit, PGM, DICOM; see :mod:`pipelines.sources.landing` for how each
image's modality is found) goes through the same decode, normalise and tile path as the collections
(:mod:`pipelines.ingest`, :mod:`pipelines.tiles`), with no label and no split, into ``landing_images``
and ``landing_tiles``. A corrupt or unknown file is quarantined (collection ``landing``) and does not
stop the run. Files already landed (same path, or same bytes) are skipped, so it can run on every drop.
"""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import SparkSession

from conf import Settings
from pipelines import ingest, tiles
from pipelines.erasure import skip_erased
from pipelines.io import read_table, table_exists
from pipelines.keycheck import verify_secret
from pipelines.sources import landing
from pipelines.summary import CollectionSummary


def land_folder(
    spark: SparkSession,
    settings: Settings,
    root: Path | str,
    modality: str | None,
    secret: bytes,
    files: list[str] | None = None,
) -> CollectionSummary:
    """Scan, decode, normalise and tile the landing folder (the land job; a stream's micro-batch).

    Args:
        spark: the session.
        settings: the configuration (lakehouse, privacy, normalise, tiles).
        root: the landing folder; made absolute here, since the executors open its files.
        modality: the modality of images that neither a DICOM tag nor a top folder names.
        secret: the pseudonym key.
        files: only these paths relative to ``root`` (a stream's micro-batch); every file by default.

    Returns:
        The folder's accounting (its label counts stay 0: landed images have none).
    """
    root = Path(root).resolve()
    verify_secret(spark, settings, secret)
    lake = settings.lakehouse
    metadata = {"job": "land", "config": settings.public_dict()}
    scans = {landing.NAME: landing.scan(root, modality, files).with_readable_names()}
    summary = ingest.scan_summary(scans[landing.NAME])
    scans, erased = skip_erased(spark, settings, scans, secret)
    summary.erased = erased[landing.NAME]
    images_path = lake.table("landing_images")
    existing = read_table(spark, images_path) if table_exists(spark, images_path) else None
    known = {r["image_id"] for r in existing.select("image_id").collect()} if existing is not None else set()
    decoded = ingest.decode_new(spark, settings, scans, {landing.NAME: str(root)}, existing, secret)
    outcome = ingest.outcomes(decoded)

    ingest.merge_quarantine(spark, settings, scans, decoded, metadata, outcome)
    summary.already_present = len(scans[landing.NAME].records) - len(outcome)  # skipped by path
    kept = ingest.new_files(outcome, lambda _: summary, known)
    ingest.merge_images(spark, decoded, kept, None, images_path, metadata)
    decoded.unpersist()

    options = tiles.TileOptions.from_settings(settings.tiles)
    tiles.merge_new_tiles(
        spark,
        images_path,
        lake.table("landing_tiles"),
        None,
        options,
        metadata,
        settings.tiles.row_group_rows,
    )
    return summary
