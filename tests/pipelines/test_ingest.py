"""Ingest and tile on a synthetic corpus in the real layouts: accounting, idempotence, privacy, splits."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from conf import Settings, load_settings
from jobs import ingest as ingest_job
from pipelines.io import current_version, merge_into, read_table
from pipelines.links import HashedImage, find_links
from pipelines.pseudonym import DEMO_SECRET
from pipelines.tiles import TileOptions, cut_tiles, with_findings
from core.codec import decode_png

SECRET = b"test-secret-5f1e0c"
TABLES = ("images", "annotations", "quarantine")


def _roots(corpus: tuple[Path, dict]) -> dict[str, str]:
    out, manifest = corpus
    return {name: str(out / entry["root"]) for name, entry in manifest.items() if isinstance(entry, dict)}


def _settings(lakehouse: Path, *extra: str) -> Settings:
    return load_settings("tiny", [f"lakehouse.root={lakehouse}", "spark.master=local[2]", *extra])


@pytest.fixture(scope="session")
def ingested(spark: SparkSession, corpus, tmp_path_factory: pytest.TempPathFactory):
    """One ingest of the whole corpus, shared by the read-only tests below."""
    lakehouse = tmp_path_factory.mktemp("ingested")
    settings = _settings(lakehouse)
    summaries = ingest_job.run(spark, settings, _roots(corpus), SECRET)
    return settings, summaries


def _planted_files(corpus: tuple[Path, dict], name: str) -> list[dict]:
    out, manifest = corpus
    root = out / manifest[name]["root"]
    return [p for p in manifest[name]["planted"] if (root / p["path"]).exists()]


def test_every_file_is_ingested_or_quarantined_with_a_reason(spark: SparkSession, corpus, ingested) -> None:
    settings, summaries = ingested
    _, manifest = corpus
    quarantine = read_table(spark, settings.lakehouse.table("quarantine"))
    for name in ("breakhis", "mias", "ddsm", "cbis_ddsm"):
        summary, expected = summaries[name], manifest[name]
        planted = _planted_files(corpus, name)
        assert summary.ingested == expected["images"], name
        assert summary.quarantined == len(planted), (name, planted)
        assert summary.seen == expected["images"] + len(planted)
        assert summary.balanced()
        assert summary.auxiliary == expected["auxiliary"], name
        assert summary.labels == {k: expected["labels"].get(k, 0) for k in ("normal", "benign", "malignant")}
        paths = {r["path"] for r in quarantine.where(F.col("collection") == name).collect()}
        for item in manifest[name]["planted"]:
            assert any(item["path"] in p or p in item["path"] for p in paths), (name, item)
    assert quarantine.where(F.length("reason") == 0).count() == 0


def test_tables_follow_the_contract_and_record_their_config(spark: SparkSession, ingested) -> None:
    settings, _ = ingested
    images = read_table(spark, settings.lakehouse.table("images"))
    documented = (Path(__file__).resolve().parents[1] / "docs" / "tables.md").read_text()
    for column in images.columns:
        assert re.search(rf"[|,] {column}\b", documented), f"{column} is not in docs/tables.md"
    assert images.where(F.col("split").isNull() | F.col("patient_key").isNull()).count() == 0
    history = spark.sql(f"DESCRIBE HISTORY delta.`{settings.lakehouse.table('images')}`").collect()
    recorded = json.loads(history[-1]["userMetadata"])
    assert recorded["job"] == "ingest"
    assert recorded["config"]["normalise"]["mammography_height"] == settings.normalise.mammography_height
    mammograms = images.where("modality = 'mammography'").select("height").distinct().collect()
    assert [r["height"] for r in mammograms] == [settings.normalise.mammography_height]


def test_cbis_re_releases_of_ddsm_films_are_linked_and_share_a_split(
    spark: SparkSession, corpus, ingested
) -> None:
    settings, _ = ingested
    _, manifest = corpus
    rows = read_table(spark, settings.lakehouse.table("images")).collect()
    by_path = {(r["collection"], r["source_path"]): r for r in rows}
    links = set(
        find_links(
            [HashedImage(r["image_id"], r["collection"], r["phash"], r["view"]) for r in rows],
            settings.split.link_max_hamming,
        )
    )
    expected = manifest["cbis_ddsm"]["links"]
    assert expected
    for link in expected:
        cbis = by_path["cbis_ddsm", link["path"]]
        ddsm = by_path["ddsm", link["ddsm"]]
        assert {(cbis["image_id"], ddsm["image_id"]), (ddsm["image_id"], cbis["image_id"])} & links, link
        assert cbis["split"] == ddsm["split"], link
        assert cbis["patient_key"] != ddsm["patient_key"]  # two pseudonyms, one group


def test_cbis_mask_is_told_from_the_crop_by_its_pixels(spark: SparkSession, corpus, ingested) -> None:
    settings, _ = ingested
    _, manifest = corpus
    swapped = [q["path"] for q in manifest["cbis_ddsm"]["quirks"] if q["kind"] == "crop_mask_swapped"]
    assert swapped
    images = read_table(spark, settings.lakehouse.table("images"))
    annotations = read_table(spark, settings.lakehouse.table("annotations"))
    rows = (
        annotations.join(images.select("image_id", "source_path"), "image_id")
        .where(F.col("source_path").isin(swapped))
        .collect()
    )
    assert rows
    for row in rows:
        assert row["geometry_kind"] == "mask"
        mask = decode_png(row["mask_png"]) > 0
        assert 0 < mask.mean() < 0.1, mask.mean()  # a lesion, not the stretched crop


def test_rerun_adds_nothing_and_commits_nothing(spark: SparkSession, corpus, ingested) -> None:
    settings, first = ingested
    versions = {t: current_version(spark, settings.lakehouse.table(t)) for t in TABLES}
    again = ingest_job.run(spark, settings, _roots(corpus), SECRET)
    for name, summary in again.items():
        assert summary.ingested == 0
        assert summary.already_present == first[name].ingested
        assert summary.quarantined == first[name].quarantined
    assert {t: current_version(spark, settings.lakehouse.table(t)) for t in TABLES} == versions


def test_new_files_alone_are_ingested_and_keep_their_patients_split(
    spark: SparkSession, corpus, tmp_path
) -> None:
    breakhis = Path(_roots(corpus)["breakhis"])
    partial = tmp_path / "BreaKHis_v1"
    shutil.copytree(breakhis, partial)
    pngs = sorted(partial.rglob("*.png"))
    held_back = [p for p in pngs if p.stat().st_size > 1000][-3:]
    moved = {p: p.read_bytes() for p in held_back}
    for path in held_back:
        path.unlink()
    settings = _settings(tmp_path / "lake")
    first = ingest_job.run(spark, settings, {"breakhis": str(partial)}, SECRET)
    for path, data in moved.items():
        path.write_bytes(data)
    second = ingest_job.run(spark, settings, {"breakhis": str(partial)}, SECRET)
    assert second["breakhis"].ingested == 3
    assert second["breakhis"].already_present == first["breakhis"].ingested
    images = read_table(spark, settings.lakehouse.table("images"))
    per_patient = images.groupBy("patient_key").agg(F.countDistinct("split").alias("n"))
    assert per_patient.where("n > 1").count() == 0


def test_no_original_identifier_or_secret_reaches_a_table(spark: SparkSession, corpus, tmp_path) -> None:
    settings = _settings(tmp_path, "privacy.hash_source_paths=true")
    ingest_job.run(spark, settings, _roots(corpus), SECRET)
    out, _ = corpus
    forbidden = {SECRET.decode(), DEMO_SECRET.decode()}
    for csv in (out / "CBIS-DDSM").glob("*.csv"):
        forbidden |= {
            line.split(",")[0] for line in csv.read_text().splitlines()[1:] if line.startswith("P_")
        }
    for ics in (out / "DDSM").rglob("*.ics"):
        for line in ics.read_text().splitlines():
            if line.startswith(("DATE_OF_STUDY", "DATE_DIGITIZED")):
                forbidden.add(line.split(None, 1)[1].strip())
    assert len(forbidden) > 5
    for table in TABLES:
        frame = read_table(spark, settings.lakehouse.table(table))
        strings = [
            f.name
            for f in frame.schema.fields
            if f.dataType.simpleString() in ("string", "map<string,string>")
        ]
        text = " ".join(json.dumps(row.asDict(), default=str) for row in frame.select(*strings).collect())
        leaked = sorted(v for v in forbidden if v and v in text)
        assert not leaked, (table, leaked[:5])


def test_tiles_are_labelled_from_findings_and_keep_the_image_split(spark: SparkSession, ingested) -> None:
    settings, _ = ingested
    lake = settings.lakehouse
    images = read_table(spark, lake.table("images"))
    options = TileOptions(settings.tiles.size, settings.tiles.stride, settings.tiles.min_tissue, 0.5)
    tiles = cut_tiles(with_findings(images, read_table(spark, lake.table("annotations"))), options)
    path = lake.table("tiles_test")
    merge_into(spark, tiles, path, ["tile_id"])
    merge_into(spark, tiles, path, ["tile_id"])
    table = read_table(spark, path)
    assert table.count() == table.select("tile_id").distinct().count() > 0
    sources = {r["label_source"] for r in table.select("label_source").distinct().collect()}
    assert {"finding", "normal_tissue", "normal_image", "whole_image"} <= sources
    joined = table.join(images.select("image_id", F.col("split").alias("image_split")), "image_id")
    assert joined.where("split != image_split").count() == 0
    # Every abnormal mammogram with geometry has at least one tile labelled from its finding.
    labelled = table.where("label_source = 'finding'").select("image_id").distinct().count()
    assert labelled >= 0.5 * images.where("label != 'normal' AND modality = 'mammography'").count()


def test_a_killed_ingest_leaves_tables_unchanged_and_a_rerun_completes(oncolake, corpus, tmp_path) -> None:
    lake = tmp_path / "lake"
    args = ["ingest", "--config", "tiny", "--set", f"lakehouse.root={lake}"]
    args += [f"--source={name}={root}" for name, root in _roots(corpus).items()]
    process = subprocess.Popen(
        [sys.executable, "-m", "jobs.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the kill takes the driver JVM down too
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("ingest: decoded"):  # pixels decoded, nothing committed yet
            os.killpg(process.pid, signal.SIGKILL)
            break
    process.wait(timeout=120)
    time.sleep(1)
    assert not any((lake / t / "_delta_log").exists() for t in TABLES)
    summary = tmp_path / "summary.json"
    result = oncolake(*args, "--summary-json", str(summary))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    counts = json.loads(summary.read_text())["collections"]
    assert sum(c["ingested"] for c in counts.values()) == sum(
        e["images"] for e in corpus[1].values() if isinstance(e, dict)
    )
