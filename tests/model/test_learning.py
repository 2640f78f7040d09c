"""Models learn what is in the images, and only that: on the tiny profile a mammography model trained on
synthetic MIAS tells abnormal patients from normal ones; the same training on labels shuffled between
images finds nothing, is refused by the promotion gate, and ``score`` says that the task has no champion.

One MIAS corpus is ingested and tiled once for the module (``mammograms``), in a lakehouse and an MLflow
store of its own.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from mlflow import MlflowClient
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from conf import Settings, load_settings
from core.tasks import TASKS, SplitRule
from model import registry
from model.registry_evaluation import evaluate_version
from model.scoring import score_images
from model.training.common import task_data
from model.training.runner import fit_task, train_tasks
from pipelines.collections import ingest_collections
from pipelines.io import append_new, current_version, read_table, row_group_properties, table_exists
from pipelines.tiles import by_layout, tile_images

TASK = TASKS["mammo_normal_vs_abnormal"]
# MIAS alone (two films per patient, a third of them abnormal): 160 films give a test split of about ten
# patients of each class at the tiny corpus's downscale, where a few dozen films would give two or three.
FILMS = 160


def lake_settings(lake: Path, store: Path, *overrides: str) -> Settings:
    """The tiny profile on ``lake`` with the module's MLflow store."""
    return load_settings(
        "tiny",
        [
            f"lakehouse.root={lake}",
            "spark.master=local[2]",
            f"mlflow.tracking_uri=sqlite:///{store / 'mlflow.db'}",
            "train.model_prefix=learns-",
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def mammograms(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A synthetic MIAS of :data:`FILMS` films ingested and tiled (tiny profile, downscale 16)."""
    from synth import mias

    folder = tmp_path_factory.mktemp("learning")
    root = folder / mias.ROOT
    root.mkdir()
    mias.generate(root, FILMS, 16, 0, np.random.default_rng(7), lambda _: None)
    settings = lake_settings(folder / "lake", folder)
    ingest_collections(spark, settings, {"mias": str(root)}, b"learns")
    tile_images(spark, settings)
    return SimpleNamespace(folder=folder, settings=settings)


def overall(table) -> dict[str, dict]:
    """Level -> the ``all`` row of an evaluation's figures."""
    rows = table[table["collection"] == "all"].set_index("level")
    return {level: rows.loc[level].to_dict() for level in rows.index}


def test_the_mammography_model_learns_on_the_tiny_profile(spark: SparkSession, mammograms) -> None:
    """Two workers, the tiny profile's epochs: patient-level test AUC of normal vs abnormal >= 0.75."""
    settings = mammograms.settings
    tiles_table = settings.lakehouse.table("tiles")
    data = task_data(spark, tiles_table, current_version(spark, tiles_table), TASK)
    [result] = train_tasks(spark, settings, [TASK.name])
    name = registry.model_name(settings, TASK.name)
    figures = overall(evaluate_version(spark, settings, TASK, name, result["version"])["figures"])
    patient = figures["patient"]
    print(
        f"test AUC tile {figures['tile']['auc']:.3f} image {figures['image']['auc']:.3f} patient "
        f"{patient['auc']:.3f} ({patient['patients_positive']}/{patient['patients_negative']} patients); "
        f"{data.counts}"
    )
    # Enough patients of each class for a patient-level figure (else the rule is the tile level).
    assert min(patient["patients_positive"], patient["patients_negative"]) >= 5
    assert patient["auc"] >= 0.75

    # Leakage audit: the same training on a random image-level split, reported beside the real figures.
    audit_data = task_data(spark, data.table, data.version, TASK, SplitRule("image"))
    assert audit_data.rule.by == "image" and sum(audit_data.counts["test"].values()) > 0
    audit = fit_task(spark, settings, TASK, audit_data, num_proc=2)
    assert audit["version"] is None  # never registered
    MlflowClient().set_model_version_tag(name, result["version"], "audit.run_id", audit["run_id"])
    report = evaluate_version(spark, settings, TASK, name, result["version"])["report"].read_text()
    assert "Leakage audit" in report and "image-level split (leaky)" in report


# The shuffled copy's splits, by patient: a large test split, so that a model at chance seldom reaches
# the floor by luck (the gate's interval alone lets about 2.5 % of chance models through).
SHUFFLED_SPLITS = {"train": 0.3, "val": 0.1, "test": 0.6}


def write_shuffled_tiles(spark: SparkSession, source: Settings, target: Settings, seed: int) -> dict:
    """``target``'s tiles: ``source``'s, each image given the label of another image at random, and each
    patient a new split (:data:`SHUFFLED_SPLITS`).

    The pixels stay; every labelled tile of an image takes the image's new label. Nothing in a tile then
    says anything about its label. The images and annotations tables are ``source``'s (linked).

    Returns:
        How many images changed between normal and abnormal, per split.
    """
    for table in ("images", "annotations"):
        os.symlink(source.lakehouse.table(table), target.lakehouse.table(table))
    tiles = read_table(spark, source.lakehouse.table("tiles"))
    columns = ["image_id", "patient_key", "image_label"]
    images = tiles.select(*columns).distinct().toPandas().sort_values("image_id")
    rng = np.random.default_rng(seed)
    images["shuffled"] = rng.permutation(images["image_label"].to_numpy())
    patients = sorted(set(images["patient_key"]))
    drawn = rng.choice(list(SHUFFLED_SPLITS), size=len(patients), p=list(SHUFFLED_SPLITS.values()))
    images["new_split"] = images["patient_key"].map(dict(zip(patients, drawn, strict=True)))
    mapping = spark.createDataFrame(images[["image_id", "shuffled", "new_split"]])
    shuffled = (
        tiles.join(mapping, "image_id")
        .withColumn("image_label", F.col("shuffled"))
        .withColumn("label", F.when(F.col("label").isNotNull(), F.col("shuffled")))
        .withColumn("split", F.col("new_split"))
        .select(*tiles.columns)
    )
    append_new(
        spark,
        shuffled,
        target.lakehouse.table("tiles"),
        ["tile_id"],
        {"job": "test: shuffled labels"},
        layout=by_layout(spark),
        properties=row_group_properties(target.tiles.row_group_rows),
    )
    moved = images[(images["shuffled"] == "normal") != (images["image_label"] == "normal")]
    return moved.groupby("new_split").size().to_dict()


def test_a_model_trained_on_shuffled_labels_is_not_promoted_and_score_says_so(
    spark: SparkSession, mammograms
) -> None:
    folder = mammograms.folder
    (folder / "shuffled").mkdir()
    settings = lake_settings(folder / "shuffled", folder, "train.model_prefix=shuffled-")
    moved = write_shuffled_tiles(spark, mammograms.settings, settings, seed=3)
    assert set(moved) == {"train", "val", "test"}  # abnormal and normal films did trade labels everywhere

    [result] = train_tasks(spark, settings, [TASK.name])
    name = registry.model_name(settings, TASK.name)
    evaluated = evaluate_version(spark, settings, TASK, name, result["version"])
    decision, patient = evaluated["decision"], overall(evaluated["figures"])["patient"]
    print(f"shuffled labels: patient-level test AUC {patient['auc']:.3f}; {decision.summary()}")
    assert not decision.promoted and set(decision.failed) & {"floor", "interval"}
    assert registry.alias_version(name, registry.CHAMPION) is None
    tags = registry.find_version(name, version=result["version"]).tags
    assert tags["promotion.decision"] == "not promoted" and tags["promotion.failed"]

    lines: list[str] = []
    summary = score_images(spark, settings, [TASK.name], echo=lines.append)
    [why] = summary.skipped
    assert f"task {TASK.name} has no champion: the promotion gate refused {name} v{result['version']}" in why
    assert any(why in line and "nothing scored" in line for line in lines)
    assert not summary.counts
    predictions = settings.lakehouse.table("predictions")
    assert not table_exists(spark, predictions) or read_table(spark, predictions).count() == 0
