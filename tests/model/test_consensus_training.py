"""Training on consensus labels (``train.labels``), end to end on the ``tiny`` profile.

The shared ``crowd`` lakehouse (tests/conftest.py: a copy of the session lakehouse with the crowd's
reports, a landing folder with DICOM patients, expert reports on those landed images and a consensus); with
``train.labels: {mias: consensus, landing: consensus}`` the tile job cuts consensus-labelled tiles beside
the collection's own, training reads them (its lineage names the labels), curated landed images join
training with a split by patient, landed images without a DICOM patient stay out, and evaluation keeps
MIAS's own ground truth and says which labels each figure used.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from conf import Settings, load_settings
from core.tasks import TASKS
from model.registry_evaluation import evaluate_version
from model.tracking import use_tracking
from model.training.runner import Refused, train_tasks
from pipelines.io import read_table
from pipelines.tiles import tile_images

TASK = TASKS["mammo_normal_vs_abnormal"]


def _settings(root: Path, *extra: str) -> Settings:
    return load_settings(
        "tiny",
        [
            f"lakehouse.root={root}",
            "spark.master=local[2]",
            f"mlflow.tracking_uri=sqlite:///{root / 'mlflow.db'}",
            "train.model_prefix=consensus-test-",
            *extra,
        ],
    )


def test_training_on_consensus_labels_keeps_evaluation_on_ground_truth(spark: SparkSession, crowd) -> None:
    root = Path(crowd.settings.lakehouse.root)
    plain = _settings(root, "train.labels={mias: consensus}")
    with pytest.raises(Refused, match="no consensus-labelled tiles of mias"):
        train_tasks(spark, plain, [TASK.name])

    settings = _settings(root, "train.labels={mias: consensus, landing: consensus}", "train.epochs=1")
    tile_images(spark, settings)
    tiles = read_table(spark, settings.lakehouse.table("tiles"))
    consensus = read_table(spark, settings.lakehouse.table("consensus"))
    version = consensus.agg(F.max("annotations_version")).first()[0]
    mias = tiles.where(F.col("label_origin") == f"mias:consensus:{version}")
    assert mias.count() > 0 and mias.where(~F.col("tile_id").endswith(f"-c{version}")).count() == 0
    assert tiles.where(F.col("label_origin") == "mias:collection").count() > 0  # kept for evaluation
    landed = tiles.where(F.col("collection") == "landing")
    assert landed.count() > 0 and landed.where(F.col("split").isNull()).count() == 0
    images = read_table(spark, settings.lakehouse.table("landing_images"))
    curated = {r["image_id"] for r in landed.select("image_id").distinct().collect()}
    from_files = images.where(F.col("attributes")["patient_from"] == "file").select("image_id").collect()
    assert curated and not curated & {r["image_id"] for r in from_files}  # no DICOM patient: out
    per_patient = landed.groupBy("patient_key").agg(F.countDistinct("split").alias("n"))
    assert per_patient.where("n > 1").count() == 0
    again = read_table(spark, settings.lakehouse.table("tiles")).count()
    tile_images(spark, settings)  # re-running cuts nothing twice
    assert read_table(spark, settings.lakehouse.table("tiles")).count() == again

    [result] = train_tasks(spark, settings, [TASK.name])
    use_tracking(settings)
    client = MlflowClient()
    run = client.get_run(result["run_id"])
    labels = json.loads(run.data.tags["lineage.labels"])
    assert labels == {"mias": f"consensus:{version}", "landing": f"consensus:{version}"}
    assert run.data.tags["lineage.consensus"].startswith(settings.lakehouse.table("consensus") + "@")
    assert f"mias:consensus:{version}" in run.data.tags["lineage.filter"]
    assert "mias:collection" not in run.data.tags["lineage.filter"]
    name = f"consensus-test-{TASK.name}"
    assert json.loads(client.get_model_version(name, result["version"]).tags["lineage.labels"]) == labels

    evaluated = evaluate_version(spark, settings, TASK, name, result["version"])
    report = Path(evaluated["report"]).read_text() if "report" in evaluated else ""
    folder = root / settings.evaluate.reports / name / f"v{result['version']}"
    report = report or (folder / "report.md").read_text()
    assert "mias: its own" in report and "ddsm: its own" in report
    assert f"landing: expert consensus (dawid_skene, annotations {version})" in report
