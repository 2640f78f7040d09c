"""The task-row predicate and the split rule: one definition, the same rows in Spark and in pandas."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from core.tasks import ORIGIN, TASKS, SplitRule, label_origin


def _tiles() -> pd.DataFrame:
    rows = []
    kinds = [("mias", "mammography"), ("ddsm", "mammography"), ("cbis_ddsm", "mammography")]
    for i, (collection, modality) in enumerate([*kinds, ("breakhis", "histology")] * 6):
        label = ["normal", "benign", "malignant", None][(i // 4) % 4]
        image_id = hashlib.sha256(str(i).encode()).hexdigest()
        source = {"normal": ["normal_image", "normal_tissue"][i % 2], None: "ambiguous"}.get(label, "finding")
        split = ["train", "val", "test"][i % 3]
        origin = label_origin(collection)
        rows.append((f"t{i}", image_id, collection, modality, label, source, split, origin))
        # The same tile labelled by an expert consensus: never a row of a task unless asked for.
        consensus = label_origin(collection, "consensus:4")
        rows.append((f"t{i}-c4", image_id, collection, modality, label, source, split, consensus))
    columns = ["tile_id", "image_id", "collection", "modality", "label", "label_source", "split", ORIGIN]
    return pd.DataFrame(rows, columns=columns)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_sql_and_pandas_forms_select_the_same_rows(spark: SparkSession, name: str) -> None:
    task, frame = TASKS[name], _tiles()
    in_pandas = set(frame.loc[task.rows_of(frame), "tile_id"])
    in_spark = {r["tile_id"] for r in spark.createDataFrame(frame).where(task.sql_condition()).collect()}
    assert in_pandas == in_spark
    assert in_pandas, "every task has rows in the fixture"
    assert all(frame.set_index("tile_id").loc[list(in_pandas), "label"].isin(list(task.label_map)))


def test_a_task_keeps_only_its_collections_and_known_labels() -> None:
    task, frame = TASKS["mammo_normal_vs_abnormal"], _tiles()
    kept = frame[task.rows_of(frame)]
    assert set(kept["collection"]) == {"mias", "ddsm"}
    assert kept["label"].notna().all()
    assert task.sql_condition() == (
        "modality = 'mammography' AND collection IN ('mias', 'ddsm') "
        "AND label IN ('normal', 'benign', 'malignant') "
        "AND label_origin IN ('mias:collection', 'ddsm:collection')"
    )
    assert not kept["tile_id"].str.endswith("-c4").any()  # consensus-labelled tiles only when asked


def test_with_labels_trains_a_collection_on_consensus_and_adds_landed_images(spark: SparkSession) -> None:
    task = TASKS["mammo_normal_vs_abnormal"].with_labels({"mias": "consensus:4", "landing": "consensus:4"})
    frame = _tiles()
    landed = frame[frame["collection"] == "mias"].assign(
        collection="landing", tile_id=lambda f: "l" + f["tile_id"], label_origin="landing:consensus:4"
    )
    frame = pd.concat([frame, landed], ignore_index=True)
    kept = frame[task.rows_of(frame)]
    by_origin = set(kept[ORIGIN])
    assert by_origin == {"mias:consensus:4", "ddsm:collection", "landing:consensus:4"}
    assert task.label_sources() == {"mias": "consensus:4", "ddsm": "collection", "landing": "consensus:4"}
    in_spark = {r["tile_id"] for r in spark.createDataFrame(frame).where(task.sql_condition()).collect()}
    assert in_spark == set(kept["tile_id"])
    # A frame read without the column (older tiles) holds collection-labelled tiles.
    own = TASKS["mammo_normal_vs_abnormal"]
    assert own.rows_of(frame.drop(columns=[ORIGIN])).sum() > 0


def test_benign_vs_malignant_learns_the_normal_tissue_of_abnormal_images_only() -> None:
    """Its image scores read every tile of an image: normal tissue of abnormal images trains as
    "no malignancy"; normal images stay out of its tiles and of its image-level figures."""
    task, frame = TASKS["mammo_benign_vs_malignant"], _tiles()
    kept = frame[task.rows_of(frame)]
    normal = kept[kept["label"] == "normal"]
    assert len(normal) and set(normal["label_source"]) == {"normal_tissue"}
    assert set(kept["label"]) == {"normal", "benign", "malignant"}
    assert task.label_map["normal"] == task.label_map["benign"] == 0
    assert task.image_labels == ("benign", "malignant")
    assert task.applicable("cbis_ddsm") == (True, "")  # no normal images needed
    assert TASKS["mammo_normal_vs_abnormal"].image_labels == ("normal", "benign", "malignant")


def test_image_level_split_rule_agrees_between_spark_and_pandas(spark: SparkSession) -> None:
    frame = _tiles()
    rule = SplitRule("image", 0.6, 0.2)
    in_pandas = dict(zip(frame["tile_id"], rule.of(frame), strict=True))
    rows = spark.createDataFrame(frame).select("tile_id", F.expr(rule.sql()).alias("s")).collect()
    assert {r["tile_id"]: r["s"] for r in rows} == in_pandas
    assert set(in_pandas.values()) == {"train", "val", "test"}
    assert (SplitRule().of(frame) == frame["split"]).all()  # by patient: the stored split, untouched
