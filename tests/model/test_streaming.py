"""``oncolake stream``: drop folders to predictions, exactly once.

In process: the queries drain the folders with ``--once`` semantics (images landed, tiled and scored by
each champion; reports read; a never-completed temporary file never read; a link out of the folder, a
corrupt file and a malformed reports file quarantined), a second run on the same checkpoints commits
nothing, and a new checkpoint over the same files adds no row.

Out of process (real ``oncolake stream`` processes, real SIGKILL, real SIGTERM): while a writer drops
files at a steady rate (write under a hidden name, then rename), the stream is killed at the injected
points (images, tiles and one champion's predictions committed but not the other's; every write
committed but not the checkpoint) and restarted on the same checkpoint,
then stopped with SIGTERM and drained with ``--once``. Afterwards the invariants of the issue hold.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

from conf import Settings, load_settings
from core.tasks import TASKS
from model.streaming import FAULT_ENV, IMAGES, REPORTS, LandingStream, relative_files
from model.tracking import use_tracking
from pipelines.io import current_version, read_table, table_exists
from pipelines.pseudonym import DEMO_SECRET
from pipelines.sources.files import escape_reason
from synth import landing as synth_landing

REPO = Path(__file__).resolve().parents[2]
TASK_NAMES = ("histo_benign_vs_malignant", "mammo_normal_vs_abnormal")
COLLECTIONS = ("breakhis", "mias")


@pytest.fixture(scope="module")
def lake(
    spark: SparkSession, tiles: Settings, tmp_path_factory: pytest.TempPathFactory, champions: Any
) -> Path:
    """BreaKHis and MIAS images and tiles in a lakehouse of this module's own, with an untrained champion
    per task in its MLflow store."""
    root = tmp_path_factory.mktemp("stream")
    champions.lakehouse(spark, tiles, root, COLLECTIONS, TASK_NAMES)
    return root


def _settings(root: Path, drop: Path, *extra: str) -> Settings:
    return load_settings(
        "tiny",
        [
            f"lakehouse.root={root}",
            "spark.master=local[2]",
            f"landing.images={drop / 'images'}",
            f"landing.reports={drop / 'reports'}",
            "landing.max_files_per_trigger=64",  # one batch per query here; the kill test takes several
            "landing.trigger_seconds=1",
            f"landing.checkpoints={drop / 'checkpoints'}",
            *extra,
        ],
    )


def _copy_lake(lake: Path, to: Path) -> Path:
    shutil.copytree(lake, to)
    return to


def _reports(spark: SparkSession, root: Path, folder: Path) -> int:
    """A reports file naming three of the lakehouse's images, and one that breaks on its second line."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = [r["image_id"] for r in read_table(spark, f"{root}/images").orderBy("image_id").limit(3).collect()]
    lines = [
        {
            "report_id": f"r{i}",
            "reporter": "reader-1",
            "image_id": image,
            "label": "benign",
            "reported_at": "2026-06-01T10:00:00Z",
        }
        for i, image in enumerate(ids)
    ]
    (folder / "reader-1.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (folder / "broken.jsonl").write_text(json.dumps(lines[0]) + "\n{not json\n")
    return len(lines)


def _image_id(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:32]


def _commits(spark: SparkSession, path: str) -> list[dict]:
    """Data commits (WRITE / MERGE) of a table with the stream batch their metadata names."""
    history = spark.sql(f"DESCRIBE HISTORY delta.`{path}`").where("operation IN ('WRITE', 'MERGE')")
    found = []
    for row in history.select("version", "userMetadata").collect():
        meta = json.loads(row["userMetadata"] or "{}")
        found.append({"version": row["version"], **meta.get("stream", {})})
    return found


def test_relative_files_strip_the_uri_and_refuse_a_path_outside(tmp_path: Path) -> None:
    root = tmp_path / "drop"
    root.mkdir()
    base = root.resolve().as_posix()
    assert relative_files(str(root), [f"file:{base}/b/x y.png", f"file://{base}/a.dcm"]) == [
        "a.dcm",
        "b/x y.png",
    ]
    with pytest.raises(ValueError, match="not below"):
        relative_files(str(root), [f"file:{tmp_path.resolve().as_posix()}/elsewhere.png"])


def test_links_are_resolved_and_a_loop_or_a_way_out_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "drop"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.png").write_bytes(b"x")
    (tmp_path / "secret.txt").write_bytes(b"s")
    os.symlink(root / "a" / "x.png", root / "inside.png")  # a link to a file inside: followed
    os.symlink(tmp_path / "secret.txt", root / "out.png")
    os.symlink(root, root / "a" / "loop")  # what Spark lists as a/loop/a/loop/.../x.png
    os.symlink(root / "gone.png", root / "dangling.png")
    assert escape_reason(root, "a/x.png") is None and escape_reason(root, "inside.png") is None
    assert "leaves the drop folder" in (escape_reason(root, "out.png") or "")
    assert "linked folder (a/loop)" in (escape_reason(root, "a/loop/a/x.png") or "")
    assert "does not resolve" in (escape_reason(root, "dangling.png") or "")


def test_once_lands_scores_and_reads_reports_and_a_rerun_commits_nothing(
    spark: SparkSession, lake: Path, tmp_path: Path
) -> None:
    root = _copy_lake(lake, tmp_path / "lake")
    drop = tmp_path / "drop"
    settings = _settings(root, drop)
    manifest = synth_landing.generate(drop / "images", 6, seed=11)
    images = drop / "images"
    (images / ".arriving.png").write_bytes(
        (images / manifest["files"][0]).read_bytes()[:100]
    )  # never renamed
    outside = tmp_path / "outside.png"
    shutil.copy(images / manifest["files"][0], outside)
    (images / "mammography").mkdir(exist_ok=True)
    os.symlink(outside, images / "mammography" / "escape.png")
    elsewhere = tmp_path / "elsewhere" / "mammography"  # another folder linked in: nothing under it is read
    elsewhere.mkdir(parents=True)
    shutil.copy(images / manifest["files"][1], elsewhere / "other.png")
    os.symlink(elsewhere.parent, images / "linked")
    reports = _reports(spark, root, drop / "reports")
    use_tracking(settings)

    lines: list[str] = []
    stream = LandingStream(spark, settings, DEMO_SECRET, TASK_NAMES, echo=lines.append)
    totals = stream.run(once=True)
    assert totals[IMAGES].new == manifest["images"]
    # The planted bad files (truncated PNG, a text file, a PNG of no modality) and the two links out.
    assert totals[IMAGES].quarantined == len(manifest["planted"]) + 2
    assert totals[REPORTS].new == reports and totals[REPORTS].quarantined == 1

    lake_path = settings.lakehouse.table
    landed = read_table(spark, lake_path("landing_images"))
    expected = {_image_id(images / f) for f in manifest["files"]}
    assert {r["image_id"] for r in landed.select("image_id").collect()} == expected
    predictions = read_table(spark, lake_path("predictions")).join(landed, "image_id", "left_semi")
    per_model = {r["model"]: r["count"] for r in predictions.groupBy("model").count().collect()}
    assert per_model == {f"oncolake-{t}": manifest["modalities"][TASKS[t].modality] for t in TASK_NAMES}
    quarantine = read_table(spark, lake_path("quarantine"))
    reasons = {r["path"]: r["reason"] for r in quarantine.where("collection = 'landing'").collect()}
    assert "leaves the drop folder" in reasons["mammography/escape.png"]
    assert "linked folder (linked)" in reasons["linked/mammography/other.png"]
    assert ".arriving.png" not in reasons and not any(".arriving" in p for p in reasons)
    broken = quarantine.where("path LIKE '%broken.jsonl%'").collect()
    assert len(broken) == 1 and "line 2" in broken[0]["reason"]

    versions = {
        t: current_version(spark, lake_path(t)) for t in ("landing_images", "predictions", "annotations")
    }
    again = LandingStream(spark, settings, DEMO_SECRET, TASK_NAMES, echo=lines.append).run(once=True)
    assert again[IMAGES].batches == 0 and again[REPORTS].batches == 0  # the checkpoints hold every file
    assert {t: current_version(spark, lake_path(t)) for t in versions} == versions

    # A new checkpoint over the same files: batch ids restart at 0 under a new query id; nothing is added.
    fresh = _settings(root, drop, f"landing.checkpoints={tmp_path / 'new-checkpoints'}")
    replay = LandingStream(spark, fresh, DEMO_SECRET, TASK_NAMES, echo=lines.append).run(once=True)
    assert replay[IMAGES].new == 0 and replay[IMAGES].already_present == manifest["images"]
    assert replay[REPORTS].new == 0
    assert read_table(spark, lake_path("landing_images")).count() == len(expected)
    assert read_table(spark, lake_path("predictions")).join(landed, "image_id", "left_semi").count() == sum(
        per_model.values()
    )


def test_empty_and_corrupt_files_are_quarantined_and_consumed_files_archived(
    spark: SparkSession, lake: Path, tmp_path: Path
) -> None:
    root = _copy_lake(lake, tmp_path / "lake")
    drop, archive = tmp_path / "drop", tmp_path / "archive"
    settings = _settings(
        root, drop, "landing.reports=null", "landing.clean_source=archive", f"landing.archive_dir={archive}"
    )
    manifest = synth_landing.generate(drop / "images", 2, seed=5)
    mammo = drop / "images" / "mammography"
    mammo.mkdir(exist_ok=True)
    (mammo / "empty.png").write_bytes(b"")
    (mammo / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage" * 8)
    use_tracking(settings)
    totals = LandingStream(spark, settings, DEMO_SECRET, TASK_NAMES, echo=lambda _: None).run(once=True)
    assert totals[IMAGES].new == manifest["images"]
    assert totals[IMAGES].quarantined == len(manifest["planted"]) + 2
    quarantine = read_table(spark, settings.lakehouse.table("quarantine")).where("collection = 'landing'")
    reasons = {r["path"]: r["reason"] for r in quarantine.collect()}
    assert "empty file" in reasons["mammography/empty.png"]
    assert "DICOM" in reasons["mammography/broken.dcm"]
    # Spark archives a batch's files (good or quarantined) when it plans the next batch: the next file
    # to arrive moves the first batch's out of the drop folder.
    first = {p.name for p in (drop / "images").rglob("*") if p.is_file()}
    synth_landing.generate(tmp_path / "later", 1, seed=6)
    later = next(p for p in (tmp_path / "later").rglob("*.png") if "new-" in p.name)
    shutil.copy(later, mammo / "later.png")
    again = LandingStream(spark, settings, DEMO_SECRET, TASK_NAMES, echo=lambda _: None).run(once=True)
    assert again[IMAGES].files == 1
    archived = {p.name for p in archive.rglob("*") if p.is_file()}
    left = {p.name for p in (drop / "images").rglob("*") if p.is_file()}
    assert first <= archived and not (first & left), (first, archived, left)


class Writer(threading.Thread):
    """Drops files into the images folder at a steady rate: written under a hidden name, then renamed."""

    def __init__(self, pool: Path, drop: Path, every: float) -> None:
        super().__init__(daemon=True)
        self.files = sorted(p for p in pool.rglob("*") if p.is_file())
        self.pool, self.drop, self.every = pool, drop, every
        self.written: list[Path] = []

    def run(self) -> None:
        for source in self.files:
            target = self.drop / source.relative_to(self.pool)
            target.parent.mkdir(parents=True, exist_ok=True)
            hidden = target.parent / f".{target.name}.part"
            hidden.write_bytes(source.read_bytes())
            hidden.rename(target)
            self.written.append(target)
            time.sleep(self.every)


def _stream(args: list[str], fault: str | None, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    out = log.open("a")
    out.write(f"\n=== oncolake stream {' '.join(args)} (fault {fault})\n")
    out.flush()
    return subprocess.Popen(
        [sys.executable, "-m", "jobs.cli", "stream", *args],
        cwd=REPO,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def _wait_for(log: Path, text: str, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and log.read_text().count(text) >= count:
            return
        time.sleep(0.5)
    raise AssertionError(f"{text!r} did not appear {count} times in {timeout} s: {log.read_text()[-3000:]}")


def test_killed_at_every_point_and_restarted_the_invariants_hold(
    spark: SparkSession, lake: Path, tmp_path: Path
) -> None:
    root = _copy_lake(lake, tmp_path / "lake")
    drop = tmp_path / "drop"
    pool = tmp_path / "pool"
    manifest = synth_landing.generate(pool, 8, seed=23)
    (drop / "images").mkdir(parents=True)
    (drop / "images" / ".never-finished.png").write_bytes(b"\x89PNG\r\n")  # left under its temporary name
    args = ["--config", "tiny", "--set", f"lakehouse.root={root}", "--set", "spark.master=local[2]"]
    for key, value in (
        ("landing.images", drop / "images"),
        ("landing.checkpoints", drop / "checkpoints"),
        ("landing.max_files_per_trigger", 4),
        ("landing.trigger_seconds", 1),
    ):
        args += ["--set", f"{key}={value}"]
    log = tmp_path / "stream.log"
    writer = Writer(pool, drop / "images", every=1.0)
    writer.start()

    # Killed during scoring (images, tiles and one champion's predictions committed, the other's not) and
    # after every write committed but before the checkpoint recorded the batch. (Killed as a batch begins,
    # before any write, is the easy case: it was run here before, and the two kept cover its recovery.)
    for fault in ("scoring:1", "committed:1"):
        process = _stream(args, fault, log)
        assert process.wait(timeout=420) == -signal.SIGKILL, log.read_text()[-3000:]
    writer.join(timeout=120)
    # Continuous again until everything written is in, then SIGTERM: the batch in flight commits first.
    process = _stream(args, None, log)
    _wait_for(log, "watching", 3, 180)
    time.sleep(8)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=180) == 0, log.read_text()[-3000:]
    assert "stopping after the batch in flight" in log.read_text()
    stopped_run = log.read_text()
    drained = _stream([*args, "--once"], None, log)
    assert drained.wait(timeout=420) == 0, log.read_text()[-3000:]
    # The batch the SIGTERM let finish was recorded in the checkpoint: the drain does not replay it.
    batch_line = re.compile(r"^stream: landing_images batch (\d+):", re.MULTILINE)
    done_before = [int(b) for b in batch_line.findall(stopped_run.rsplit("\n=== oncolake stream", 1)[-1])]
    done_after = [int(b) for b in batch_line.findall(log.read_text()[len(stopped_run) :])]
    assert not done_before or not done_after or min(done_after) > max(done_before), (done_before, done_after)
    text = log.read_text()
    for point in ("scoring of batch 1", "committed of batch 1"):
        assert f"fault injected at {point}" in text

    table = f"{root}".rstrip("/")
    good = {_image_id(pool / f) for f in manifest["files"]}
    landed = read_table(spark, f"{table}/landing_images")
    ids = [r["image_id"] for r in landed.select("image_id").collect()]
    assert set(ids) == good and len(ids) == len(good)  # every complete file, once; the temporary one never
    for name, key in (
        ("landing_tiles", "tile_id"),
        ("predictions", "prediction_id"),
        ("quarantine", "quarantine_id"),
    ):
        frame = read_table(spark, f"{table}/{name}")
        assert frame.count() == frame.select(key).distinct().count(), f"{name} holds a duplicate"
    quarantine = read_table(spark, f"{table}/quarantine").where("collection = 'landing'")
    planted = [p["path"] for p in manifest["planted"]]
    assert sorted(r["path"] for r in quarantine.collect()) == sorted(planted)
    predictions = read_table(spark, f"{table}/predictions").join(landed, "image_id", "left_semi")
    per_image = predictions.groupBy("image_id", "model", "version").count()
    assert per_image.where("count > 1").count() == 0
    per_model = {r["model"]: r["count"] for r in predictions.groupBy("model").count().collect()}
    assert per_model == {f"oncolake-{t}": manifest["modalities"][TASKS[t].modality] for t in TASK_NAMES}
    for name in ("landing_images", "landing_tiles", "predictions", "quarantine"):
        if not table_exists(spark, f"{table}/{name}"):
            continue
        commits = [c for c in _commits(spark, f"{table}/{name}") if "batch" in c]
        # One data commit per batch and write site at most (predictions: one site per champion).
        sites = 2 if name == "predictions" else 1
        per_batch: dict[int, int] = {}
        for commit in commits:
            per_batch[commit["batch"]] = per_batch.get(commit["batch"], 0) + 1
        assert all(n <= sites for n in per_batch.values()), (name, per_batch)
