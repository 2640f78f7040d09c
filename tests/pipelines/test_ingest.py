"""Ingest on a synthetic corpus in the real layouts: accounting, idempotence, privacy, splits, paths."""

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

from conf import ConfigError, Settings, load_settings
from core.codec import decode_png
from pipelines.collections import ingest_collections, source_roots
from pipelines.io import current_version, read_table
from pipelines.links import HashedImage, find_links
from pipelines.pseudonym import DEMO_SECRET

SECRET = b"test-secret-5f1e0c"
TABLES = ("images", "annotations", "quarantine")


def _settings(lakehouse: Path, *extra: str) -> Settings:
    return load_settings("tiny", [f"lakehouse.root={lakehouse}", "spark.master=local[2]", *extra])


def _planted_files(corpus: tuple[Path, dict], name: str) -> list[dict]:
    out, manifest = corpus
    root = out / manifest[name]["root"]
    return [p for p in manifest[name]["planted"] if (root / p["path"]).exists()]


def test_every_file_is_ingested_or_quarantined_with_a_reason(
    spark: SparkSession, settings: Settings, corpus, ingested
) -> None:
    summaries = ingested
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


def test_tables_follow_the_contract_and_record_their_config(
    spark: SparkSession, settings: Settings, ingested
) -> None:
    images = read_table(spark, settings.lakehouse.table("images"))
    documented = (Path(__file__).resolve().parents[2] / "docs" / "tables.md").read_text()
    for column in images.columns:
        assert re.search(rf"[|,] {column}\b", documented), f"{column} is not in docs/tables.md"
    assert images.where(F.col("split").isNull() | F.col("patient_key").isNull()).count() == 0
    strategies = images.select(F.col("attributes")["split_strategy"].alias("s")).distinct().collect()
    assert [r["s"] for r in strategies] == ["patient"]  # the default strategy, recorded on each image
    history = spark.sql(f"DESCRIBE HISTORY delta.`{settings.lakehouse.table('images')}`").collect()
    recorded = json.loads(history[-1]["userMetadata"])
    assert recorded["job"] == "ingest"
    assert recorded["config"]["normalise"]["mammography_height"] == settings.normalise.mammography_height
    mammograms = images.where("modality = 'mammography'").select("height").distinct().collect()
    assert [r["height"] for r in mammograms] == [settings.normalise.mammography_height]


def test_cbis_re_releases_of_ddsm_films_are_linked_and_share_a_split(
    spark: SparkSession, settings: Settings, corpus, ingested
) -> None:
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


def test_the_official_strategy_keeps_cbis_ddsms_test_set_and_says_so(spark: SparkSession, tmp_path) -> None:
    """``split.strategy: {cbis_ddsm: official}``: CBIS-DDSM's own test set is all in ``test``, its
    training set is dealt between train and val (but for images whose patient group holds a test image,
    which the summary counts: the real division has such patients; splitting them is tests/pipelines/
    test_split.py's), and each image records the strategy that drew its split."""
    import numpy as np

    from synth import cbis_ddsm

    root = tmp_path / cbis_ddsm.ROOT
    root.mkdir()
    cbis_ddsm.generate(root, 48, 16, 0, np.random.default_rng(3), lambda _: None)
    settings = _settings(tmp_path / "lake", "split.strategy={cbis_ddsm: official}")
    [summary] = ingest_collections(spark, settings, {"cbis_ddsm": str(root)}, SECRET).values()
    assert summary.split_strategy == "official" and summary.balanced()
    rows = read_table(spark, settings.lakehouse.table("images")).select("split", "attributes").collect()
    division = [(r["attributes"]["official_split"], r["split"]) for r in rows]
    assert {official for official, _ in division} == {"training", "test"}
    assert {split for official, split in division if official == "test"} == {"test"}
    assert {split for official, split in division if official == "training"} >= {"train", "val"}
    assert summary.moved_to_test == sum(
        1 for official, split in division if (official, split) == ("training", "test")
    )
    assert {r["attributes"]["split_strategy"] for r in rows} == {"official"}


def test_cbis_mask_is_told_from_the_crop_by_its_pixels(
    spark: SparkSession, settings: Settings, corpus, ingested
) -> None:
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


def test_rerun_adds_nothing_and_commits_nothing(
    spark: SparkSession, settings: Settings, corpus_roots, ingested
) -> None:
    first = ingested
    versions = {t: current_version(spark, settings.lakehouse.table(t)) for t in TABLES}
    again = ingest_collections(spark, settings, corpus_roots, DEMO_SECRET)
    for name, summary in again.items():
        assert summary.ingested == 0
        assert summary.already_present == first[name].ingested
        assert summary.quarantined == first[name].quarantined
    assert {t: current_version(spark, settings.lakehouse.table(t)) for t in TABLES} == versions


def test_new_files_alone_are_ingested_and_keep_their_patients_split(
    spark: SparkSession, corpus_roots, tmp_path
) -> None:
    partial = tmp_path / "BreaKHis_v1"
    shutil.copytree(corpus_roots["breakhis"], partial)
    pngs = sorted(partial.rglob("*.png"))
    held_back = [p for p in pngs if p.stat().st_size > 1000][-3:]
    moved = {p: p.read_bytes() for p in held_back}
    for path in held_back:
        path.unlink()
    settings = _settings(tmp_path / "lake")
    first = ingest_collections(spark, settings, {"breakhis": str(partial)}, SECRET)
    for path, data in moved.items():
        path.write_bytes(data)
    # A second file with the bytes of an image already ingested: the same image, already present.
    kept = partial / read_table(spark, settings.lakehouse.table("images")).first()["source_path"]
    shutil.copyfile(kept, kept.with_name(re.sub(r"-\d+\.png$", "-999.png", kept.name)))
    second = ingest_collections(spark, settings, {"breakhis": str(partial)}, SECRET)
    assert second["breakhis"].ingested == 3
    assert second["breakhis"].already_present == first["breakhis"].ingested + 1
    assert second["breakhis"].balanced()
    images = read_table(spark, settings.lakehouse.table("images"))
    assert images.count() == first["breakhis"].ingested + 3
    per_patient = images.groupBy("patient_key").agg(F.countDistinct("split").alias("n"))
    assert per_patient.where("n > 1").count() == 0


def test_relative_source_paths_are_made_absolute(settings: Settings, corpus, monkeypatch) -> None:
    out, manifest = corpus
    monkeypatch.chdir(out)
    relative = manifest["mias"]["root"]
    roots = source_roots(settings, [f"mias={relative}"])
    assert roots == {"mias": str((out / relative).resolve())}
    with pytest.raises(ConfigError, match="NAME=PATH"):
        source_roots(settings, ["nosuch=."])
    with pytest.raises(ConfigError, match="does not exist"):
        source_roots(settings, ["mias=no/such/folder"])


def test_no_original_identifier_or_secret_reaches_a_table(
    spark: SparkSession, corpus, corpus_roots, tmp_path
) -> None:
    settings = _settings(tmp_path, "privacy.hash_source_paths=true")
    ingest_collections(spark, settings, corpus_roots, SECRET)
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


def test_a_killed_ingest_leaves_tables_unchanged_and_a_rerun_completes(
    oncolake, corpus, corpus_roots, tmp_path
) -> None:
    lake = tmp_path / "lake"
    args = ["ingest", "--config", "tiny", "--set", f"lakehouse.root={lake}"]
    args += [f"--source={name}={root}" for name, root in corpus_roots.items()]
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
