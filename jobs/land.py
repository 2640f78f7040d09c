"""Land new, unlabelled images: a folder that devices or users feed into the landing tables, ready to score.

    oncolake land DIR [--modality mammography|histology] [--summary-json FILE] [--config NAME|FILE]
    spark-submit --py-files dist/oncolake-0.1.0.zip jobs/land.py /mnt/landing --config cluster

Every file below DIR (PNG 8/16-bit, PGM, DICOM; see :mod:`pipelines.sources.landing` for how each
image's modality is found) goes through the same decode, normalise and tile path as the collections,
with no label and no split, into ``landing_images`` and ``landing_tiles``. A corrupt or unknown file is
quarantined (collection ``landing``) and does not stop the run. Files already landed (same path, or same
bytes) are skipped, so the job can run on every new drop; ``oncolake score --landing DIR`` runs it first.
"""

from __future__ import annotations

from pathlib import Path

from pyspark import StorageLevel
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from conf import Settings
from jobs.options import job_parser, settings_from
from jobs.session import build_spark
from pipelines import ingest, tiles
from pipelines.io import merge_into, read_table, table_exists
from pipelines.pseudonym import SecretMissing, resolve_secret
from pipelines.sources import landing
from pipelines.summary import CollectionSummary, count_outcome, render_table, write_json

# The findings column of an image without any (tiles.cut_tiles reads it; landing images have none).
NO_FINDINGS = "array<struct<label:string,geometry_kind:string,geometry:string,mask_png:binary>>"


def run(
    spark: SparkSession, settings: Settings, root: Path, modality: str | None, secret: bytes
) -> CollectionSummary:
    """Scan, decode, normalise and tile the landing folder; returns its accounting (labels stay 0)."""
    lake = settings.lakehouse
    hash_paths = settings.privacy.hash_source_paths
    metadata = {"job": "land", "config": settings.public_dict()}
    scan = landing.scan(root, modality)
    image_rejections = sum(r.is_image for r in scan.rejections)
    summary = CollectionSummary(
        seen=len(scan.records) + image_rejections, quarantined=image_rejections, auxiliary=scan.auxiliary
    )
    images_path, tiles_path = lake.table("landing_images"), lake.table("landing_tiles")
    existing = read_table(spark, images_path) if table_exists(spark, images_path) else None
    known = {r["image_id"] for r in existing.select("image_id").collect()} if existing is not None else set()
    records = ingest.records_frame(spark, ingest.record_rows({landing.NAME: scan}, secret, hash_paths))
    options = ingest.NormaliseOptions.from_settings(settings.normalise)
    decoded = ingest.decode_images(
        ingest.without_present(records, existing), {landing.NAME: str(root)}, options
    ).persist(StorageLevel.MEMORY_AND_DISK)
    outcome = [r.asDict() for r in decoded.select("status", "image_id", "source_key").collect()]

    quarantine = ingest.scan_quarantine_rows(spark, {landing.NAME: scan.rejections}, hash_paths)
    merge_into(
        spark,
        quarantine.unionByName(ingest.decode_quarantine_rows(decoded)),
        lake.table("quarantine"),
        ["quarantine_id"],
        metadata,
    )
    summary.already_present = len(scan.records) - len(outcome)  # skipped by path before decoding
    kept: dict[str, str] = {}  # image id -> the file kept for it: identical files are one image
    for row in sorted(outcome, key=lambda r: r["source_key"]):
        if count_outcome(summary, row["status"], row["image_id"], known):
            kept[row["image_id"]] = row["source_key"]
    chosen = spark.createDataFrame(
        sorted((key, None) for key in kept.values()), "source_key string, split string"
    )
    merge_into(spark, ingest.image_rows(decoded, chosen), images_path, ["image_id"], metadata)
    decoded.unpersist()

    done = read_table(spark, tiles_path) if table_exists(spark, tiles_path) else None
    todo = tiles.images_to_tile(read_table(spark, images_path), done)
    todo = todo.withColumn("findings", F.lit(None).cast(NO_FINDINGS))
    cut = tiles.cut_tiles(todo, tiles.TileOptions.from_settings(settings.tiles))
    merge_into(spark, cut, tiles_path, ["tile_id"], metadata)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("oncolake land", __doc__)
    parser.add_argument("folder", type=Path, help="the landing folder")
    parser.add_argument("--modality", choices=landing.MODALITIES, help="for images nothing else names")
    parser.add_argument("--summary-json", type=Path, help="write the run's accounting as JSON here")
    args = parser.parse_args(argv)
    settings = settings_from(args)
    if not args.folder.is_dir():
        parser.exit(2, f"oncolake land: {args.folder} is not a folder\n")
    try:
        secret, _ = resolve_secret(settings.privacy)
    except SecretMissing as exc:
        parser.exit(2, f"oncolake land: {exc}\n")
    summary = run(build_spark(settings, "land"), settings, args.folder, args.modality, secret)
    print(render_table({landing.NAME: summary}))
    if args.summary_json:
        write_json(args.summary_json, {landing.NAME: summary})
    return 0 if summary.balanced() else 1


if __name__ == "__main__":
    raise SystemExit(main())
