"""``oncolake erase``: a patient's rows leave every table, the erasure is recorded, models are flagged.

On a copy of the crowd lakehouse (collections' images and tiles, experts' annotations and consensus, a
landed folder) with a registered champion whose lineage pins the tiles version it "trained" on, and the
predictions a real scoring run made: a collection patient with images, tiles, annotations, consensus and
predictions, and a landed patient, are erased through the job. Then: no row of theirs in any table's
current version; one ``erasures`` row each, holding no data; the champion tagged and listed, with the
tiles files kept while it pins them (its pinned version still reads, as maintain promises); a re-run
changes nothing; a typo'd pseudonym exits 1, an original identifier is refused before anything is
touched; and landing the same folder again skips the erased patient's file (counted ``erased``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from pyspark.sql import SparkSession

import synth.landing
from conf import Settings, load_settings
from jobs import erase as erase_job
from model.registry import model_name
from model.scoring import score_images
from model.tracking import use_tracking
from pipelines.io import current_version, read_table
from pipelines.land import land_folder
from pipelines.pseudonym import DEMO_SECRET

TASK = "histo_benign_vs_malignant"
TABLES = ("images", "annotations", "tiles", "landing_images", "landing_tiles", "consensus", "reporters")


@pytest.fixture(scope="module")
def lake(spark: SparkSession, crowd, tmp_path_factory: pytest.TempPathFactory, champions: Any) -> Settings:
    root = tmp_path_factory.mktemp("erase-lakehouse")
    for table in TABLES:
        shutil.copytree(Path(crowd.settings.lakehouse.table(table)), root / table)
    settings = load_settings("tiny", [f"lakehouse.root={root}", "spark.master=local[2]"])
    use_tracking(settings)
    tiles = settings.lakehouse.table("tiles")
    lineage = {"lineage.table": tiles, "lineage.version": str(current_version(spark, tiles))}
    tags = {"threshold": "0.5", "task": TASK, **champions.RULE.tags(), **lineage}
    champions.register(settings, TASK, 0, champions.example(spark, settings), tags)
    score_images(spark, settings, [TASK], splits=["test"])
    return settings


def _rows_of(
    spark: SparkSession, settings: Settings, patients: list[str], images: list[str]
) -> dict[str, int]:
    found = {}
    for table in (*TABLES, "predictions"):
        frame = read_table(spark, settings.lakehouse.table(table))
        column, keys = ("patient_key", patients) if "patient_key" in frame.columns else ("image_id", images)
        if column in frame.columns:
            found[table] = frame.where(frame[column].isin(keys)).count()
    return found


def test_erase_removes_every_row_records_it_and_flags_the_model(
    spark: SparkSession, lake: Settings, tmp_path: Path
) -> None:
    table = lake.lakehouse.table
    predictions = read_table(spark, table("predictions")).select("image_id")
    consensus = read_table(spark, table("consensus")).select("image_id")
    images = read_table(spark, table("images"))
    candidates = images.join(predictions, "image_id").join(consensus, "image_id").select("patient_key")
    patient = candidates.orderBy("patient_key").first()["patient_key"]
    landed = read_table(spark, table("landing_images")).join(consensus, "image_id")
    landed_patient = (
        landed.where("attributes['patient_from'] = 'file'").orderBy("patient_key").first()["patient_key"]
    )
    patients = [patient, landed_patient]
    image_ids = [
        r["image_id"]
        for name in ("images", "landing_images")
        for r in read_table(spark, table(name)).where(f"patient_key IN {tuple(patients)}").collect()
    ]
    before = _rows_of(spark, lake, patients, image_ids)
    assert all(before[t] > 0 for t in ("images", "tiles", "annotations", "consensus", "predictions")), before
    assert before["landing_images"] and before["landing_tiles"]
    pinned = int(MlflowClient().get_model_version(model_name(lake, TASK), "1").tags["lineage.version"])

    args = ["--config", "tiny", "--set", f"lakehouse.root={lake.lakehouse.root}"]
    summary_path = tmp_path / "erase.json"
    code = erase_job.main(
        [*args, "--patient", patient, "--patient", landed_patient, "--summary-json", str(summary_path)]
    )
    assert code == 0
    summary = json.loads(summary_path.read_text())
    after = _rows_of(spark, lake, patients, image_ids)
    assert after == dict.fromkeys(after, 0)
    deleted = {t["table"]: t["rows"] for t in summary["tables"]}
    assert {t: n for t, n in before.items() if n and t != "reporters"} == deleted

    erasures = read_table(spark, table("erasures"))
    assert sorted(r["patient_key"] for r in erasures.collect()) == sorted(patients)
    assert set(erasures.columns) == {"erasure_row_id", "erasure_id", "patient_key", "erased_at", "tables"}

    flagged = summary["flagged"]
    assert [(f["model"], f["version"], f["table"], f["table_version"]) for f in flagged] == [
        (model_name(lake, TASK), "1", "tiles", pinned)
    ]
    tag = (
        MlflowClient().get_model_version(model_name(lake, TASK), "1").tags[f"erasure.{summary['erasure_id']}"]
    )
    assert tag.startswith(f"tiles@v{pinned}:")
    assert summary["disk"]["tiles"] == {"kept_by_pin": pinned}
    assert "vacuum_after" in summary["disk"]["images"]
    # What the pin promises: the version the model trained on still reads (until that version is deleted).
    old = read_table(spark, table("tiles"), pinned).where(f"patient_key = '{patient}'").count()
    assert old == before["tiles"]

    versions = {t: current_version(spark, table(t)) for t in (*TABLES, "predictions", "erasures")}
    assert erase_job.main([*args, "--patient", patient, "--patient", landed_patient]) == 0  # already erased
    assert {t: current_version(spark, table(t)) for t in versions} == versions
    assert erase_job.main([*args, "--patient", "0123456789abcdef0123"]) == 1  # found nowhere
    with pytest.raises(SystemExit) as refused:
        erase_job.main([*args, "--patient", "P_00001"])  # an original identifier: never written anywhere
    assert refused.value.code == 2
    assert {t: current_version(spark, table(t)) for t in versions} == versions

    # Landing the same folder again (crowd's, regenerated byte for byte) skips the erased patient's file.
    folder = tmp_path / "landing"
    synth.landing.generate(folder, images=12, seed=3)
    landed_summary = land_folder(spark, lake, folder, None, DEMO_SECRET)
    assert landed_summary.erased == 1 and landed_summary.ingested == 0 and landed_summary.balanced()
    assert _rows_of(spark, lake, patients, image_ids)["landing_images"] == 0
