"""Bulk scoring with registered models as Spark UDFs: routing by modality, incremental and idempotent runs,
a new champion version, UDF probabilities equal to the model's own output, a version without its
threshold or aggregation rule refused (never scored with a default), and a landing folder of new
unlabelled images (PNG 8/16-bit, PGM, DICOM) with corrupt and unroutable files quarantined."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from pydicom.data import get_testdata_file
from pyspark.sql import SparkSession

from conf import Settings
from core.aggregation import AggregationRule
from jobs import score as score_job
from model.registry import VersionIncomplete, model_name
from model.scoring import score_images, scoring_model
from model.tracking import CHAMPION
from pipelines.io import current_version, read_table
from pipelines.sources import landing
from synth import landing as synth_landing

TASK_NAMES = ("histo_benign_vs_malignant", "mammo_normal_vs_abnormal")
COLLECTIONS = ("breakhis", "mias")


RULE = AggregationRule()  # the rule the registered versions record (tests/model/conftest.py)


@pytest.fixture(scope="module")
def lake(
    spark: SparkSession, tiles: Settings, tmp_path_factory: pytest.TempPathFactory, champions: Any
) -> Settings:
    """The session's ingested and tiled BreaKHis and MIAS (one histology and one mammography collection),
    copied into a lakehouse (and MLflow store) of this module's own: the predictions, landing tables and
    registered models these tests count are theirs alone."""
    settings = champions.lakehouse(spark, tiles, tmp_path_factory.mktemp("score"), COLLECTIONS, TASK_NAMES)
    return settings


def _job(settings: Settings, tmp_path: Path, *extra: str) -> dict:
    """``oncolake score`` as the schedules run it; its summary JSON."""
    summary = tmp_path / "summary.json"
    args = ["--config", "tiny", "--set", f"lakehouse.root={settings.lakehouse.root}"]
    args += [f"--task={t}" for t in TASK_NAMES]
    assert score_job.main([*args, "--summary-json", str(summary), *extra]) == 0
    return json.loads(summary.read_text())


def _score(spark: SparkSession, settings: Settings, **options) -> dict:
    """The library call the job makes; the same summary."""
    return score_images(spark, settings, TASK_NAMES, **options).as_dict()


def test_scoring_is_routed_incremental_and_idempotent(
    spark: SparkSession, lake: Settings, tmp_path, champions: Any
) -> None:
    images = read_table(spark, lake.lakehouse.table("images"))
    tiled = read_table(spark, lake.lakehouse.table("tiles")).select("image_id").distinct()
    per_modality = {
        r["modality"]: r["count"]
        for r in images.join(tiled, "image_id").groupBy("modality").count().collect()
    }
    dry = _job(lake, tmp_path, "--dry-run")
    assert dry["scored"] == 0 and not Path(lake.lakehouse.table("predictions")).exists()

    first = _score(spark, lake)
    assert first["scored"] == per_modality["histology"] + per_modality["mammography"]
    assert sum(first["labels"].values()) == first["scored"]
    predictions = read_table(spark, lake.lakehouse.table("predictions"))
    routed = {
        (r["model"], r["modality"]) for r in predictions.select("model", "modality").distinct().collect()
    }
    assert routed == {
        ("oncolake-histo_benign_vs_malignant", "histology"),
        ("oncolake-mammo_normal_vs_abnormal", "mammography"),
    }
    for row in predictions.collect():
        assert row["alias"] == CHAMPION and row["threshold"] == 0.5
        assert (row["predicted_label"] == row["positive_class"]) == (row["p_positive"] >= 0.5)

    version = current_version(spark, lake.lakehouse.table("predictions"))
    again = _score(spark, lake)
    assert again["scored"] == 0 and again["already_scored"] == first["scored"]
    assert current_version(spark, lake.lakehouse.table("predictions")) == version

    # A new champion scores everything again under its own version; the old rows stay.
    new = champions.register(lake, "histo_benign_vs_malignant", 1, champions.example(spark, lake))
    third = _score(spark, lake)
    assert third["scored"] == per_modality["histology"]
    versions = predictions.where("model = 'oncolake-histo_benign_vs_malignant'").groupBy("version").count()
    histology = per_modality["histology"]
    assert {r["version"]: r["count"] for r in versions.collect()} == {"1": histology, new: histology}


def test_udf_probabilities_equal_the_models_own_output(spark: SparkSession, lake: Settings, tmp_path) -> None:
    _score(spark, lake)
    name = "oncolake-mammo_normal_vs_abnormal"
    predictions = read_table(spark, lake.lakehouse.table("predictions")).where(f"model = '{name}'")
    row = predictions.orderBy("image_id").first()
    tiles = (
        read_table(spark, lake.lakehouse.table("tiles"))
        .where(f"image_id = '{row['image_id']}'")
        .select("image_id", "pixels")
        .toPandas()
    )
    model = mlflow.pyfunc.load_model(f"models:/{name}/{row['version']}")
    own = pd.concat([tiles[["image_id"]], model.predict(tiles[["pixels"]])], axis=1)
    expected = RULE.images(own, ("normal", "abnormal"), "abnormal").iloc[0]
    assert row["tiles"] == len(tiles)
    assert np.isclose(row["p_positive"], expected["p_abnormal"], atol=1e-6)
    assert np.isclose(row["probabilities"]["normal"], expected["p_normal"], atol=1e-6)


@pytest.mark.parametrize("missing", ["threshold", "aggregation.image_top_k"])
def test_a_version_without_its_threshold_or_rule_is_skipped_not_scored_with_a_default(
    spark: SparkSession, lake: Settings, missing: str, champions: Any
) -> None:
    task_name = "mammo_benign_vs_malignant"  # a model of its own: the other tests' counts stay theirs
    tags = {"threshold": "0.5", "task": task_name, **RULE.tags()}
    del tags[missing]
    version = champions.register(lake, task_name, 2, champions.example(spark, lake), tags)
    with pytest.raises(VersionIncomplete, match=f"v{version}.*{missing.split('.')[0]}"):
        scoring_model(lake, task_name)
    lines: list[str] = []
    summary = score_images(spark, lake, [task_name], echo=lines.append)
    assert summary.scored == 0 and summary.already_scored == 0
    assert len(summary.skipped) == 1 and missing.split(".")[0] in summary.skipped[0]
    said = f": nothing scored for {task_name}"
    assert any(line.endswith(said) and missing.split(".")[0] in line for line in lines)
    path = Path(lake.lakehouse.table("predictions"))
    if path.exists():
        written = read_table(spark, str(path)).where(f"model = '{model_name(lake, task_name)}'")
        assert written.count() == 0


def test_landing_scan_routes_by_tag_folder_and_default(tmp_path: Path) -> None:
    root = tmp_path / "landing"
    manifest = synth_landing.generate(root, 8, seed=3)
    shutil.copy(get_testdata_file("CT_small.dcm"), root / "ct-slice.dcm")
    scan = landing.scan(root)
    modalities = {r.path: r.modality for r in scan.records}
    assert modalities["new-0001.dcm"] == "mammography"  # the DICOM Modality tag, no folder
    assert modalities["histology/new-0003.png"] == "histology"
    assert {r.path: r.reason.split(" ")[0] for r in scan.rejections} == {
        "ct-slice.dcm": "DICOM",
        "mammography/readme.txt": "not",
        "unsorted.png": "modality",
    }
    assert len(scan.records) == manifest["images"] + 1  # and the truncated PNG, for the decoder to refuse
    with_default = landing.scan(root, "histology")
    assert {r.path: r.modality for r in with_default.records}["unsorted.png"] == "histology"
    assert "ct-slice.dcm" in {r.path for r in with_default.rejections}  # a CT slice is never a mammogram


def test_landing_folder_is_landed_and_scored_by_modality(
    spark: SparkSession, lake: Settings, tmp_path
) -> None:
    root = tmp_path / "landing"
    manifest = synth_landing.generate(root, 8, seed=4)
    first = _job(lake, tmp_path, "--landing", str(root))
    assert first["quarantined"] == 3  # truncated PNG, a text file, a PNG of unknown modality

    landed = read_table(spark, lake.lakehouse.table("landing_images"))
    assert landed.count() == manifest["images"]
    by_modality = {r["modality"]: r["count"] for r in landed.groupBy("modality").count().collect()}
    assert by_modality == manifest["modalities"]
    assert landed.where("label IS NOT NULL OR split IS NOT NULL").count() == 0
    assert landed.where("patient_key LIKE 'DEVICE%'").count() == 0  # DICOM PatientIDs are pseudonymised
    landing_tiles = read_table(spark, lake.lakehouse.table("landing_tiles"))
    assert {r["label_source"] for r in landing_tiles.select("label_source").distinct().collect()} == {
        "unlabelled"
    }

    predictions = read_table(spark, lake.lakehouse.table("predictions")).join(
        landed.select("image_id"), "image_id", "left_semi"
    )
    routed = {r["model"]: r["count"] for r in predictions.groupBy("model").count().collect()}
    assert routed == {
        "oncolake-mammo_normal_vs_abnormal": manifest["modalities"]["mammography"],
        "oncolake-histo_benign_vs_malignant": manifest["modalities"]["histology"],
    }
    quarantine = read_table(spark, lake.lakehouse.table("quarantine")).where("collection = 'landing'")
    assert {r["path"] for r in quarantine.collect()} == {p["path"] for p in manifest["planted"]}

    dry = _score(spark, lake, dry_run=True, landing=root)
    assert dry["scored"] == 0 and dry["quarantined"] == 0  # a dry run lands and quarantines nothing
    again = _score(spark, lake, landing=root)
    assert again["scored"] == 0 and again["quarantined"] == 3
    assert read_table(spark, lake.lakehouse.table("landing_images")).count() == manifest["images"]


def test_the_job_exits_2_without_a_landing_folder_or_anything_to_score(spark: SparkSession, tmp_path) -> None:
    args = ["--config", "tiny", "--set", f"lakehouse.root={tmp_path / 'empty'}"]
    with pytest.raises(SystemExit) as missing:
        score_job.main([*args, "--landing", str(tmp_path / "no-such-folder")])
    assert missing.value.code == 2
    with pytest.raises(SystemExit) as nothing:
        score_job.main(args)
    assert nothing.value.code == 2
