"""``oncolake maintain``: the tiles layout survives compaction, a version a registered model pins still
reads after VACUUM, and what nothing pins is really deleted (a copy of the session lakehouse, a real
SQLite MLflow registry, the job's own entry point)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from conf import Settings, load_settings
from jobs.maintain import main as maintain_main
from pipelines.io import current_version, files_holding, read_table


def _content(spark: SparkSession, path: str, version: int | None = None) -> list[tuple[str, str, str]]:
    frame = read_table(spark, path, version)
    return sorted(
        (r["tile_id"], r["split"], r["digest"])
        for r in frame.select("tile_id", "split", F.sha2("pixels", 256).alias("digest")).collect()
    )


@pytest.fixture()
def lake(tiles: Settings, tmp_path: Path, mlflow_uri: str) -> Settings:
    root = tmp_path / "lake"
    for table in ("images", "tiles"):
        shutil.copytree(Path(tiles.lakehouse.table(table)), root / table)
    return load_settings(
        "tiny",
        [
            f"lakehouse.root={root}",
            "spark.master=local[2]",
            f"mlflow.tracking_uri={mlflow_uri}",
            "maintain.min_retention_hours=0",
            "maintain.margin_hours=1",
        ],
    )


def test_maintain_keeps_the_tiles_layout_and_every_pinned_version(
    spark: SparkSession, lake: Settings, tmp_path: Path
) -> None:
    tiles_path, images_path = lake.lakehouse.table("tiles"), lake.lakehouse.table("images")
    # A small load after the first: the train/mammography group is now spread over one more file.
    group = "split = 'train' AND modality = 'mammography'"
    extra = read_table(spark, tiles_path).where(group).limit(5)
    late = extra.withColumn("tile_id", F.concat("tile_id", F.lit("-late")))
    late.write.format("delta").mode("append").save(tiles_path)
    pinned = current_version(spark, tiles_path)
    assert len(files_holding(spark, tiles_path, pinned, group)) == 2
    before = _content(spark, tiles_path, pinned)
    images_first = current_version(spark, images_path)
    images_files = len(read_table(spark, images_path).inputFiles())
    assert images_files > 1  # OPTIMIZE has files to merge
    images_rows = read_table(spark, images_path).count()

    # A registered model version trained on that tiles version (its lineage tags, as training writes them).
    client = MlflowClient()
    client.create_registered_model("oncolake-maintain-test")
    client.create_model_version(
        "oncolake-maintain-test",
        source=str(tmp_path),
        tags={"lineage.table": tiles_path, "lineage.version": str(pinned)},
    )

    summary = tmp_path / "maintain.json"
    root = lake.lakehouse.root
    args = ["--config", "tiny", "--set", f"lakehouse.root={root}", "--set", "spark.master=local[2]"]
    args += ["--set", f"mlflow.tracking_uri={lake.mlflow.tracking_uri}"]
    args += ["--set", "maintain.min_retention_hours=0", "--set", "maintain.margin_hours=1"]
    args += ["--summary-json", str(summary)]
    assert maintain_main(args) == 0
    done = {t["table"]: t for t in json.loads(summary.read_text())["tables"]}
    assert json.loads(summary.read_text())["pins"] == {tiles_path: pinned}

    tiles_done = done["tiles"]
    assert tiles_done["compacted"] == ["train/mammography"]
    assert tiles_done["pinned_version"] == pinned and tiles_done["retention_hours"] == 24
    # Every group in files of its own (the layout), the compacted one in one file again.
    placed = read_table(spark, tiles_path).select("split", "modality", F.input_file_name().alias("file"))
    groups_per_file = placed.distinct().groupBy("file").count().where("count > 1").count()
    files_per_group = placed.distinct().groupBy("split", "modality").count().where("count > 1").count()
    assert groups_per_file == 0 and files_per_group == 0
    # The pinned version still reads, whole and unchanged, after VACUUM; compaction changed no row.
    assert _content(spark, tiles_path, pinned) == before
    assert _content(spark, tiles_path) == before
    properties = read_table(spark, tiles_path).sparkSession.sql(f"SHOW TBLPROPERTIES delta.`{tiles_path}`")
    props = {r["key"]: r["value"] for r in properties.collect()}
    assert props["delta.logRetentionDuration"] == f"interval {tiles_done['log_retention_days']} days"
    assert props["delta.deletedFileRetentionDuration"].startswith("interval ")

    # Nothing pins the images table: OPTIMIZE merged its files and VACUUM deleted the replaced ones.
    images_done = done["images"]
    assert images_done["compacted"] == ["all"] and images_done["files_after"] < images_files
    assert images_done["files_deleted"] >= images_files
    assert read_table(spark, images_path).count() == images_rows
    with pytest.raises(Exception, match=r"(?i)FILE_NOT_EXIST|does not exist"):
        read_table(spark, images_path, images_first).select("pixels").collect()

    # Re-running has nothing left to do: no compaction, nothing to delete, no new version.
    assert maintain_main(args) == 0
    again = {t["table"]: t for t in json.loads(summary.read_text())["tables"]}
    assert again["tiles"]["compacted"] == [] and again["images"]["compacted"] == []
    assert all(t["files_deleted"] == 0 for t in again.values())
    assert all(t["version_after"] == t["version_before"] for t in again.values())
