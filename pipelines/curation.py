"""Training on consensus labels (``train.labels``): which images get consensus-labelled tiles, and the
landed images that curation lets into training.

``train.labels`` maps a collection (or ``landing``) to ``collection`` (its own labels, the default) or
``consensus``. For each collection mapped to ``consensus``, :func:`consensus_images` gives the tile job
the images that the newest consensus (method ``train.consensus_method``) has labelled, with the consensus
label as the image's label and the readers' merged marks as its findings; their tiles carry
``label_origin = <collection>:consensus:<annotations version>`` and a tile id ending in ``-c<version>``,
beside (never instead of) the collection-labelled tiles of the same images, which evaluation keeps
using. A landed image joins training only once curated: its patient key comes from its DICOM
``PatientID`` (not from the file: the same patient's images must stay on one side), it has a consensus
label, and it gets a split by the same patient rule as the collections (its patient's earlier images,
and near-duplicate images in any collection, decide it first: :func:`pipelines.split.assign_splits`).
Images without one stay out of training.
"""

from __future__ import annotations

from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from conf import Settings
from core.tasks import ORIGIN
from pipelines.collections import image_metadata, splits_for_new
from pipelines.io import read_table, table_exists
from pipelines.sources.landing import PATIENT_FROM

LANDING = "landing"
CONSENSUS = "consensus"


def consensus_collections(settings: Settings) -> list[str]:
    """The collections (and ``landing``) that ``train.labels`` maps to consensus labels."""
    return sorted(name for name, how in settings.train.labels.items() if how == CONSENSUS)


def newest_consensus(spark: SparkSession, settings: Settings) -> tuple[DataFrame, int] | None:
    """The consensus rows of ``train.consensus_method`` from the newest annotations version, and that
    version; ``None`` without a consensus table or rows of that method."""
    path = settings.lakehouse.table("consensus")
    if not table_exists(spark, path):
        return None
    rows = read_table(spark, path).where(F.col("method") == settings.train.consensus_method)
    newest = rows.agg(F.max("annotations_version")).first()
    if newest is None or newest[0] is None:
        return None
    version = int(newest[0])
    return rows.where(F.col("annotations_version") == version), version


def _as_findings(label: F.Column, findings: F.Column) -> F.Column:
    """Consensus findings in the tile job's findings type; an abnormal label without any mark becomes one
    finding without geometry (its tiles are image-level only, as a collection's finding without
    geometry makes them)."""
    merged = F.transform(
        findings, lambda f: F.struct(f["label"], f["geometry_kind"], f["geometry"], f["mask_png"])
    )
    bare = F.array(
        F.struct(
            label.alias("label"),
            F.lit(None).cast("string").alias("geometry_kind"),
            F.lit(None).cast("string").alias("geometry"),
            F.lit(None).cast("binary").alias("mask_png"),
        )
    )
    return F.when(F.coalesce(F.size(findings), F.lit(0)) > 0, merged).otherwise(bare)


def _curated_landing(
    spark: SparkSession, settings: Settings, labelled: DataFrame, done: DataFrame | None
) -> DataFrame | None:
    """Landed images with a DICOM patient and a consensus label, each with its split (assigned once:
    an image that already has consensus tiles keeps its split; new ones are dealt by patient group)."""
    path = settings.lakehouse.table("landing_images")
    if not table_exists(spark, path):
        return None
    landed = read_table(spark, path).where(F.col("attributes")[PATIENT_FROM] == "PatientID")
    candidates = landed.join(labelled.select("image_id", "c_label"), "image_id")
    columns = ["image_id", "collection", "patient_key", "phash", "view"]
    metas = [
        {**r.asDict(), "label": r["c_label"], "split": None, "official": None}
        for r in candidates.select(*columns, "c_label").collect()
    ]
    if not metas:
        return None
    known: dict[str, str] = {}
    if done is not None:
        rows = done.where(F.col("collection") == LANDING).select("image_id", "split").distinct().collect()
        known = {r["image_id"]: r["split"] for r in rows}
    existing = image_metadata(read_table(spark, settings.lakehouse.table("images")))
    curated = [{**m, "split": known[m["image_id"]]} for m in metas if m["image_id"] in known]
    new = [m for m in metas if m["image_id"] not in known]
    splits = dict(known)
    if new:
        splits.update(splits_for_new(settings, [*existing, *curated], new))
    frame = spark.createDataFrame(sorted(splits.items()), "image_id string, c_split string")
    return candidates.join(F.broadcast(frame), "image_id").withColumn("split", F.col("c_split"))


def consensus_images(spark: SparkSession, settings: Settings, tiles_path: str) -> DataFrame | None:
    """The images to cut with consensus labels that have no tiles at the newest consensus version.

    Returns:
        Rows with the tile job's image columns (``image_id, collection, modality, patient_key, split,
        label, pixels, findings``) plus ``label_origin`` and ``tile_suffix``; ``None`` when
        ``train.labels`` names no consensus collection or there is nothing to cut.
    """
    mapped = consensus_collections(settings)
    if not mapped:
        return None
    newest = newest_consensus(spark, settings)
    if newest is None:
        return None
    consensus, version = newest
    labelled = consensus.select(
        "image_id", F.col("label").alias("c_label"), F.col("findings").alias("c_findings")
    )
    done = read_table(spark, tiles_path) if table_exists(spark, tiles_path) else None
    parts = []
    collections = [c for c in mapped if c != LANDING]
    if collections:
        images = read_table(spark, settings.lakehouse.table("images"))
        images = images.where(F.col("collection").isin(collections))
        parts.append(images.join(labelled.select("image_id", "c_label"), "image_id"))
    if LANDING in mapped:
        landed = _curated_landing(spark, settings, labelled, done)
        if landed is not None:
            parts.append(landed)
    if not parts:
        return None
    columns = ["image_id", "collection", "modality", "patient_key", "split", "pixels", "c_label"]
    todo = parts[0].select(*columns)
    for part in parts[1:]:
        todo = todo.unionByName(part.select(*columns))
    labels = f"{CONSENSUS}:{version}"
    origin = F.concat(F.col("collection"), F.lit(":" + labels))
    todo = todo.join(labelled.select("image_id", "c_findings"), "image_id").select(
        "image_id",
        "collection",
        "modality",
        "patient_key",
        "split",
        F.col("c_label").alias("label"),
        "pixels",
        _as_findings(F.col("c_label"), F.col("c_findings")).alias("findings"),
        origin.alias(ORIGIN),
        F.lit(f"-c{version}").alias("tile_suffix"),
    )
    if done is not None and ORIGIN in done.columns:
        cut = done.where(F.col(ORIGIN).endswith(":" + labels)).select("image_id").distinct()
        todo = todo.join(cut, "image_id", "left_anti")
    return todo


def resolve_labels(settings: Settings, tiles: DataFrame) -> dict[str, str]:
    """``train.labels`` resolved against a tiles snapshot: collection -> ``collection`` or
    ``consensus:<the newest annotations version among its consensus tiles>``.

    Raises:
        LookupError: a collection mapped to consensus has no consensus tiles (run ``oncolake reports``,
            ``oncolake consensus`` and ``oncolake tile`` first).
    """
    labels: dict[str, str] = {}
    mapped = consensus_collections(settings)
    if not mapped:
        return labels
    if ORIGIN not in tiles.columns:
        raise LookupError("the tiles table has no label_origin column: it was tiled before consensus labels")
    found = (
        tiles.where(F.col(ORIGIN).contains(f":{CONSENSUS}:"))
        .select(F.split(F.col(ORIGIN), ":").alias("o"))
        .select(F.col("o")[0].alias("collection"), F.col("o")[2].cast("long").alias("version"))
        .groupBy("collection")
        .agg(F.max("version").alias("version"))
        .collect()
    )
    versions = {r["collection"]: int(r["version"]) for r in found}
    for name in mapped:
        if name not in versions:
            raise LookupError(
                f"train.labels maps {name} to consensus but the tiles table holds no consensus-labelled "
                f"tiles of {name}: run oncolake reports, oncolake consensus and oncolake tile first"
            )
        labels[name] = f"{CONSENSUS}:{versions[name]}"
    return labels


def describe_labels(labels: dict[str, Any]) -> str:
    """One line naming the labels each collection trains on."""
    if not labels:
        return "each collection's own labels"
    named = ", ".join(f"{c}: {how}" for c, how in sorted(labels.items()))
    return f"{named}; other collections their own labels"
