"""Ingest the collections into the lakehouse: images, annotations and quarantine Delta tables.

    oncolake ingest [--source NAME=PATH ...] [--summary-json FILE] [--config NAME|FILE] [--set k=v ...]
    spark-submit --py-files dist/oncolake-0.1.0.zip jobs/ingest.py --config cluster --source mias=/mnt/mias

Collections come from ``sources.<name>`` in the configuration and from ``--source`` (names: breakhis,
mias, ddsm, cbis_ddsm); absent ones are skipped. The driver scans metadata and pseudonymises patients
(key from ``$ONCOLAKE_PSEUDONYM_SECRET``); executors decode, normalise and hash the pixels. Every file
seen is ingested, already present or quarantined, and the summary proves it. Splits are assigned by
patient once, and the job fails if a patient or a linked group of near-duplicate images spans two splits.
Re-running adds nothing; adding files to a collection ingests only them.
"""

from __future__ import annotations

import time
from pathlib import Path

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from conf import ConfigError, Settings
from jobs.options import job_parser, settings_from
from jobs.session import build_spark
from pipelines import ingest
from pipelines.io import merge_into, read_table, table_exists
from pipelines.links import HashedImage, find_links
from pipelines.pseudonym import SecretMissing, resolve_secret
from pipelines.sources import SOURCES
from pipelines.sources.base import Scan
from pipelines.split import ImageMeta, assign_splits, check_no_leak
from pipelines.summary import CollectionSummary, count_outcome, render_table, write_json


def _sources(settings: Settings, overrides: list[str]) -> dict[str, str]:
    roots = {name: path for name, path in settings.sources.model_dump().items() if path}
    for text in overrides:
        name, sep, path = text.partition("=")
        if not sep or name not in SOURCES:
            raise ConfigError(f"--source {text!r}: expected NAME=PATH with NAME in {sorted(SOURCES)}")
        if not Path(path).exists():
            raise ConfigError(f"--source {text!r}: path {path!r} does not exist")
        roots[name] = path
    return roots


def _image_metadata(frame: DataFrame) -> list[dict]:
    columns = ["image_id", "collection", "patient_key", "label", "phash", "view", "split"]
    return [row.asDict() for row in frame.select(*columns).collect()]


def _splits_for_new(settings: Settings, existing: list[dict], new: list[dict]) -> dict[str, str]:
    known = {m["image_id"] for m in existing}
    fresh = {m["image_id"]: m for m in new if m["image_id"] not in known}
    metas = [*existing, *fresh.values()]
    links = find_links(
        [HashedImage(m["image_id"], m["collection"], m["phash"], m["view"]) for m in metas],
        settings.split.link_max_hamming,
    )
    images = [
        ImageMeta(m["image_id"], m["collection"], m["patient_key"], m["label"], m.get("split")) for m in metas
    ]
    return assign_splits(images, links, settings.split.fractions(), settings.split.seed)


def run(
    spark: SparkSession, settings: Settings, roots: dict[str, str], secret: bytes
) -> dict[str, CollectionSummary]:
    """Scan, decode and write every configured collection; returns the per-collection summary."""
    lake = settings.lakehouse
    metadata = {"job": "ingest", "config": settings.public_dict(), "sources": sorted(roots)}
    hash_paths = settings.privacy.hash_source_paths
    summaries: dict[str, CollectionSummary] = {}
    scans: dict[str, Scan] = {}
    for name, root in roots.items():
        started = time.monotonic()
        scan = SOURCES[name].scan(Path(root))
        scans[name] = scan
        image_rejections = sum(r.is_image for r in scan.rejections)
        summaries[name] = CollectionSummary(
            seen=len(scan.records) + image_rejections,
            quarantined=image_rejections,
            auxiliary=scan.auxiliary,
            rejected_rows=len(scan.rejections) - image_rejections,
        )
        print(
            f"ingest: scanned {name}: {len(scan.records)} images, {len(scan.rejections)} rejected, "
            f"{scan.auxiliary} auxiliary files ({time.monotonic() - started:.1f} s)",
            flush=True,
        )

    images_path, annotations_path = lake.table("images"), lake.table("annotations")
    existing_images = read_table(spark, images_path) if table_exists(spark, images_path) else None
    records = ingest.records_frame(spark, ingest.record_rows(scans, secret, hash_paths))
    todo = ingest.without_present(records, existing_images)
    options = ingest.NormaliseOptions(
        settings.normalise.mammography_height, settings.normalise.histology_height
    )
    decoded = ingest.decode_images(todo, roots, options).persist(StorageLevel.MEMORY_AND_DISK)
    outcome = [r.asDict() for r in decoded.select("collection", "status", "image_id", "source_key").collect()]
    print(f"ingest: decoded {len(outcome)} new files", flush=True)

    quarantine = ingest.scan_quarantine_rows(
        spark, {n: s.rejections for n, s in scans.items()}, hash_paths
    ).unionByName(ingest.decode_quarantine_rows(decoded))
    merge_into(spark, quarantine, lake.table("quarantine"), ["quarantine_id"], metadata)
    # Annotations before images: the images table is the commit marker; a job killed in between
    # re-decodes those images on the next run and their annotations MERGE as already present.
    merge_into(spark, ingest.annotation_rows(decoded), annotations_path, ["annotation_id"], metadata)

    existing_meta = _image_metadata(existing_images) if existing_images is not None else []
    new_meta = _image_metadata(decoded.where(F.col("status") == "ok").withColumn("split", F.lit(None)))
    fresh_split = _splits_for_new(settings, existing_meta, new_meta)
    kept: dict[str, str] = {}  # image id -> the file kept for it: identical files are one image
    for row in sorted(outcome, key=lambda r: r["source_key"]):
        if row["status"] == "ok":
            kept.setdefault(row["image_id"], row["source_key"])
    chosen = spark.createDataFrame(
        sorted((key, fresh_split[image]) for image, key in kept.items()), "source_key string, split string"
    )
    merge_into(spark, ingest.image_rows(decoded, chosen), images_path, ["image_id"], metadata)
    decoded.unpersist()

    # The leak check runs on exactly the rows the images table now holds: those it held before this run
    # and the new ones with the splits just merged (re-reading the table would cost a scan of its pixels'
    # files for the same rows).
    final_meta = {m["image_id"]: m for m in existing_meta}
    for meta in new_meta:
        final_meta.setdefault(meta["image_id"], {**meta, "split": fresh_split[meta["image_id"]]})
    links = find_links(
        [HashedImage(m["image_id"], m["collection"], m["phash"], m["view"]) for m in final_meta.values()],
        settings.split.link_max_hamming,
    )
    check_no_leak(
        [
            ImageMeta(m["image_id"], m["collection"], m["patient_key"], m["label"], m["split"])
            for m in final_meta.values()
        ],
        links,
    )
    print(f"ingest: splits checked: no patient or linked group spans two splits ({len(links)} links)")

    known = {m["image_id"] for m in existing_meta}
    for name, scan in scans.items():  # files skipped by path, before decoding: already present
        summaries[name].already_present = len(scan.records) - sum(r["collection"] == name for r in outcome)
    for row in outcome:
        count_outcome(summaries[row["collection"]], row["status"], row["image_id"], known)
    for meta in final_meta.values():
        if meta["collection"] in summaries:
            summaries[meta["collection"]].labels[meta["label"]] += 1
    return summaries


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("oncolake ingest", __doc__)
    parser.add_argument(
        "--source", action="append", default=[], metavar="NAME=PATH", help="a collection root"
    )
    parser.add_argument("--summary-json", type=Path, help="write the run's summary as JSON here")
    args = parser.parse_args(argv)
    settings = settings_from(args)
    try:
        roots = _sources(settings, args.source)
        secret, _ = resolve_secret(settings.privacy)
    except (ConfigError, SecretMissing) as exc:
        parser.exit(2, f"oncolake ingest: {exc}\n")
    if not roots:
        parser.exit(2, "oncolake ingest: no collection configured (set sources.<name> or pass --source)\n")
    spark = build_spark(settings, "ingest")
    summaries = run(spark, settings, roots, secret)
    print(render_table(summaries))
    if args.summary_json:
        write_json(args.summary_json, summaries)
    unbalanced = [name for name, s in summaries.items() if not s.balanced()]
    if unbalanced:
        print(f"ingest: accounting does not balance for {unbalanced}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
