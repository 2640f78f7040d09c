"""The tile job's library function on the session corpus: labels from the collections' own findings only,
the image's split kept, re-runs adding nothing."""

from __future__ import annotations

import dataclasses
import json

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from conf import Settings
from pipelines.io import current_version, read_table
from pipelines.sources.base import Geometry
from pipelines.tiles import (
    IMAGES_PER_FILE,
    TileOptions,
    cut_tiles,
    files_per_group_for,
    tile_images,
    with_findings,
)


def test_tiles_are_labelled_from_findings_and_keep_the_image_split(
    spark: SparkSession, tiles: Settings
) -> None:
    lake = tiles.lakehouse
    images = read_table(spark, lake.table("images"))
    table = read_table(spark, lake.table("tiles"))
    assert table.count() == table.select("tile_id").distinct().count() > 0
    sources = {r["label_source"] for r in table.select("label_source").distinct().collect()}
    assert {"finding", "normal_tissue", "normal_image", "whole_image"} <= sources
    joined = table.join(images.select("image_id", F.col("split").alias("image_split")), "image_id")
    assert joined.where("split != image_split").count() == 0
    # Every abnormal mammogram with geometry has at least one tile labelled from its finding.
    labelled = table.where("label_source = 'finding'").select("image_id").distinct().count()
    assert labelled >= 0.5 * images.where("label != 'normal' AND modality = 'mammography'").count()


def test_a_rerun_adds_no_tile_and_counts_the_table(spark: SparkSession, tiles: Settings) -> None:
    table = read_table(spark, tiles.lakehouse.table("tiles"))
    before = table.count()
    summary = tile_images(spark, tiles)
    assert read_table(spark, tiles.lakehouse.table("tiles")).count() == before
    assert sum(count for *_, count in summary.rows) == before
    counted = {(c, s, lb): n for c, s, lb, n in summary.rows}
    normal_train = table.where("collection = 'mias' AND split = 'train' AND label = 'normal'").count()
    assert counted.get(("mias", "train", "normal"), 0) == normal_train


def test_each_file_holds_one_split_and_modality_in_row_groups_of_the_configured_rows(
    spark: SparkSession, tiles: Settings
) -> None:
    """The layout training reads: a split's files hold only that split's rows (Petastorm reads whole
    row groups and prunes nothing), in row groups of ``tiles.row_group_rows`` (the last of a file fewer)."""
    import pyarrow.parquet as pq

    from pipelines.io import snapshot_files

    path = tiles.lakehouse.table("tiles")
    rows = tiles.tiles.row_group_rows
    files = snapshot_files(spark, path, current_version(spark, path))
    groups = set()
    for name in files:
        parquet = pq.ParquetFile(name.removeprefix("file:"))
        kinds = parquet.read(columns=["split", "modality"]).to_pandas().drop_duplicates()
        assert len(kinds) == 1, f"{name} mixes {kinds.to_dict('records')}"
        groups.add(tuple(kinds.iloc[0]))
        sizes = [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)]
        assert all(n == rows for n in sizes[:-1]) and 0 < sizes[-1] <= rows
    assert {s for s, _ in groups} == {"train", "val", "test"}
    assert {m for _, m in groups} == {"mammography", "histology"}
    properties = spark.sql(f"DESCRIBE DETAIL delta.`{path}`").collect()[0]["properties"]
    assert properties["delta.enableDeletionVectors"] == "false"
    assert properties["parquet.page.size.row.check.max"] == str(rows)


def test_a_big_run_spreads_each_group_over_one_file_per_thousand_images() -> None:
    """What one sort in an executor holds stays the tiles of about 1,000 images, however big the load."""
    assert IMAGES_PER_FILE == 1000
    assert [files_per_group_for(n) for n in (0, 1, 1000, 1001, 4000, 12000)] == [1, 1, 1, 2, 4, 12]


def _labels(spark: SparkSession, settings: Settings, image_id: str, annotations) -> dict[str, str | None]:
    image = read_table(spark, settings.lakehouse.table("images")).where(F.col("image_id") == image_id)
    cut = cut_tiles(with_findings(image, annotations), TileOptions.from_settings(settings.tiles))
    return {r["tile_id"]: r["label"] for r in cut.select("tile_id", "label").collect()}


def test_expert_annotations_never_change_a_tile_label(spark: SparkSession, tiles: Settings) -> None:
    """An expert row putting a malignant lesion on a normal-tissue tile leaves the tile normal; the same
    row as the collection's own finding would label it malignant."""
    lake = tiles.lakehouse
    tile = (
        read_table(spark, lake.table("tiles"))
        .where("label_source = 'normal_tissue'")
        .join(read_table(spark, lake.table("images")).select("image_id", "height", "width"), "image_id")
        .orderBy("tile_id")
        .select("image_id", "tile_id", "y", "x", "size", "height", "width")
        .first()
    )
    assert tile is not None
    # The middle of the part of the tile inside the image (an edge tile may be padded).
    middle_x = tile["x"] + min(tile["size"], tile["width"] - tile["x"]) / 2
    middle_y = tile["y"] + min(tile["size"], tile["height"] - tile["y"]) / 2
    annotations = read_table(spark, lake.table("annotations"))
    stored = {
        r["tile_id"]: r["label"]
        for r in read_table(spark, lake.table("tiles")).where(F.col("image_id") == tile["image_id"]).collect()
    }
    circle = Geometry(kind="circle", x=middle_x, y=middle_y, radius=20.0)
    report = (
        annotations.where(F.col("image_id") == tile["image_id"])
        .limit(1)
        .withColumn("annotation_id", F.lit("expert-report-1"))
        .withColumn("label", F.lit("malignant"))
        .withColumn("geometry_kind", F.lit("circle"))
        .withColumn("geometry", F.lit(json.dumps(dataclasses.asdict(circle))))
        .withColumn("mask_png", F.lit(None).cast("binary"))
        .withColumn("reporter", F.lit("reader-7"))
    )
    expert = report.withColumn("source", F.lit("expert"))
    assert _labels(spark, tiles, tile["image_id"], annotations.unionByName(expert)) == stored
    as_collection = _labels(spark, tiles, tile["image_id"], annotations.unionByName(report))
    assert stored[tile["tile_id"]] == "normal" and as_collection[tile["tile_id"]] == "malignant"
