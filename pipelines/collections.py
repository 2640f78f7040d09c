"""Ingest the collections: every file scanned, decoded, split by patient and accounted for.

The driver scans each collection's metadata (:mod:`pipelines.sources`) and pseudonymises patients; the
executors decode, normalise and hash the pixels (:mod:`pipelines.decode`). The quarantine, annotations
and images tables are written in that order, each with the rows whose keys are new (an anti-join on the
keys, then one append commit): the images table is the commit marker, so a run killed before it
re-decodes those images next time and their annotations are already present. New images
are given a split by patient group (:mod:`pipelines.split`, near-duplicates linked by
:mod:`pipelines.links`), and the run fails if a patient or a linked group spans two splits. Re-running
adds nothing; adding files to a collection ingests only them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from conf import ConfigError, Settings, absolute_path
from pipelines import ingest
from pipelines.erasure import skip_erased
from pipelines.io import append_new, read_table, table_exists
from pipelines.keycheck import verify_secret
from pipelines.links import HashedImage, find_links
from pipelines.sources import SOURCES
from pipelines.sources.base import Scan
from pipelines.split import ImageMeta, assign_splits, check_no_leak, moved_by_official
from pipelines.summary import CollectionSummary, SystemicFailure, systemic_failure


def absolute(roots: Mapping[str, str]) -> dict[str, str]:
    """The roots with every path made absolute on the driver.

    The executors open the files from these roots: a relative one would resolve against each executor's
    own working directory (on ``local-cluster`` or a real cluster), where the files are not.
    """
    return {name: absolute_path(path) for name, path in roots.items()}


def source_roots(settings: Settings, overrides: Iterable[str]) -> dict[str, str]:
    """Collection name -> absolute root folder, from ``sources.<name>`` and ``--source NAME=PATH``.

    Raises:
        ConfigError: for an override that is not ``NAME=PATH`` with a known name, or names no path.
    """
    roots = {name: path for name, path in settings.sources.model_dump().items() if path}
    for text in overrides:
        name, sep, path = text.partition("=")
        if not sep or name not in SOURCES:
            raise ConfigError(f"--source {text!r}: expected NAME=PATH with NAME in {sorted(SOURCES)}")
        if not Path(path).exists():
            raise ConfigError(f"--source {text!r}: path {path!r} does not exist")
        roots[name] = path
    return absolute(roots)


def _scan(name: str, root: str) -> Scan:
    started = time.monotonic()
    scan = SOURCES[name].scan(Path(root)).with_readable_names()
    print(
        f"ingest: scanned {name}: {len(scan.records)} images, {len(scan.rejections)} rejected, "
        f"{scan.auxiliary} auxiliary files ({time.monotonic() - started:.1f} s)",
        flush=True,
    )
    return scan


def image_metadata(frame: DataFrame) -> list[dict[str, Any]]:
    from pyspark.sql import functions as F

    columns = ["image_id", "collection", "patient_key", "label", "phash", "view", "split"]
    official = F.col("attributes")["official_split"].alias("official")
    return [row.asDict() for row in frame.select(*columns, official).collect()]


def _links(settings: Settings, metas: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    images = [HashedImage(m["image_id"], m["collection"], m["phash"], m["view"]) for m in metas]
    return find_links(images, settings.split.link_max_hamming)


def _split_metas(metas: Iterable[Mapping[str, Any]]) -> list[ImageMeta]:
    return [
        ImageMeta(m["image_id"], m["collection"], m["patient_key"], m["label"], m["split"], m.get("official"))
        for m in metas
    ]


def splits_for_new(
    settings: Settings, existing: list[dict[str, Any]], new: list[dict[str, Any]]
) -> dict[str, str]:
    """``image_id -> split`` for the new images (``existing`` keep theirs), one entry per image id."""
    fresh = {m["image_id"]: m for m in new}
    metas = [*existing, *fresh.values()]
    fractions = settings.split.fractions()
    return assign_splits(
        _split_metas(metas),
        _links(settings, metas),
        fractions,
        settings.split.seed,
        settings.split.official(),
    )


def ingest_collections(
    spark: SparkSession, settings: Settings, roots: Mapping[str, str], secret: bytes
) -> dict[str, CollectionSummary]:
    """Scan, decode and write every collection of ``roots`` into the lakehouse (the ingest job).

    Args:
        spark: the session.
        settings: the configuration (lakehouse, privacy, normalise, split).
        roots: collection name (a key of :data:`pipelines.sources.SOURCES`) -> root folder; made
            absolute here (:func:`absolute`).
        secret: the pseudonym key (:func:`pipelines.pseudonym.resolve_secret`).

    Returns:
        The per-collection accounting of this run, with the label counts of all its images.

    Raises:
        SplitLeak: when a patient or a linked group of images would span two splits.
        SystemicFailure: when nearly all of a collection's files failed for one reason that is not the
            files' own (:func:`pipelines.summary.systemic_failure`); nothing is written then.
    """
    roots = absolute(roots)
    verify_secret(spark, settings, secret)
    lake = settings.lakehouse
    metadata = {"job": "ingest", "config": settings.public_dict(), "sources": sorted(roots)}
    scans = {name: _scan(name, root) for name, root in roots.items()}
    summaries = {name: ingest.scan_summary(scan) for name, scan in scans.items()}
    scans, erased = skip_erased(spark, settings, scans, secret)
    for name, count in erased.items():
        summaries[name].erased = count
        if count:
            print(f"ingest: {name}: {count} files of erased patients skipped (not read)", flush=True)

    images_path = lake.table("images")
    existing_images = read_table(spark, images_path) if table_exists(spark, images_path) else None
    decoded = ingest.decode_new(spark, settings, scans, roots, existing_images, secret)
    outcome = ingest.outcomes(decoded)
    print(f"ingest: decoded {len(outcome)} new files", flush=True)
    stop = systemic_failure(outcome)
    if stop:
        decoded.unpersist()
        raise SystemicFailure(stop)

    ingest.merge_quarantine(spark, settings, scans, decoded, metadata, outcome)
    # Annotations before images: the images table is the commit marker; a job killed in between
    # re-decodes those images on the next run and their annotations are found already present.
    append_new(spark, ingest.annotation_rows(decoded), lake.table("annotations"), ["annotation_id"], metadata)

    existing_meta = image_metadata(existing_images) if existing_images is not None else []
    known = {m["image_id"] for m in existing_meta}
    ok = decoded.where(F.col("status") == "ok").withColumn("split", F.lit(None))
    new_meta = [m for m in image_metadata(ok) if m["image_id"] not in known]
    fresh_split = splits_for_new(settings, existing_meta, new_meta)
    strategies = {m["image_id"]: settings.split.strategy_of(m["collection"]) for m in new_meta}
    for name, scan in scans.items():  # files skipped by path, before decoding: already present
        summaries[name].already_present = len(scan.records) - sum(r["collection"] == name for r in outcome)
        summaries[name].split_strategy = settings.split.strategy_of(name)
    kept = ingest.new_files(outcome, summaries.__getitem__, set(known))
    ingest.merge_images(spark, decoded, kept, fresh_split, images_path, metadata, strategies)
    decoded.unpersist()

    # The leak check runs on exactly the rows the images table now holds: those it held before this run
    # and the new ones with the splits just merged (re-reading the table would cost a scan of its pixels'
    # files for the same rows).
    final_meta = {m["image_id"]: m for m in existing_meta}
    for meta in new_meta:
        final_meta.setdefault(meta["image_id"], {**meta, "split": fresh_split[meta["image_id"]]})
    links = _links(settings, final_meta.values())
    placed = _split_metas(final_meta.values())
    check_no_leak(placed, links)
    print(f"ingest: splits checked: no patient or linked group spans two splits ({len(links)} links)")

    official = settings.split.official()
    this_run = [image for image in placed if image.image_id in fresh_split]
    for name, moved in moved_by_official(this_run, official).items():
        summaries[name].moved_to_test = moved
    for name in sorted(official & set(summaries)):
        print(
            f"ingest: {name} split by its own train/test division (split.strategy official): "
            f"{summaries[name].moved_to_test} of its training-set images went to test with their patient "
            "group (patients and linked re-releases never span splits)",
            flush=True,
        )

    for meta in final_meta.values():
        if meta["collection"] in summaries:
            summaries[meta["collection"]].labels[meta["label"]] += 1
    return summaries
