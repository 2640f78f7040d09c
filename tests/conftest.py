"""Shared fixtures: one Delta SparkSession for the whole run, a synthetic corpus ingested and tiled once
(``tiles``), and a throw-away MLflow store.

Tests that need several executor JVMs (local-cluster) or a standalone master start the job as a
subprocess instead, so this session stays the only one in the test process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from pyspark.sql import SparkSession

from conf import Settings, load_settings
from jobs.session import build_spark
from pipelines.collections import ingest_collections
from pipelines.pseudonym import DEMO_SECRET
from pipelines.summary import CollectionSummary
from pipelines.tiles import tile_images

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def lakehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lakehouse")


@pytest.fixture(scope="session")
def settings(lakehouse: Path) -> Settings:
    # local[2]: Horovod tests need two task slots at once, whatever the machine's core count.
    return load_settings("tiny", [f"lakehouse.root={lakehouse}", "spark.master=local[2]"])


@pytest.fixture(scope="session")
def spark(settings: Settings) -> Iterator[SparkSession]:
    session = build_spark(settings, "tests")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A small synthetic corpus of all four collections in their real layouts, and its manifest."""
    import synth

    out = tmp_path_factory.mktemp("corpus")
    return out, synth.generate(out, images=60, downscale=16, seed=0)


@pytest.fixture(scope="session")
def corpus_roots(corpus: tuple[Path, dict]) -> dict[str, str]:
    """Collection name -> root folder of the session corpus."""
    out, manifest = corpus
    return {name: str(out / entry["root"]) for name, entry in manifest.items() if isinstance(entry, dict)}


@pytest.fixture(scope="session")
def ingested(
    spark: SparkSession, settings: Settings, corpus_roots: dict[str, str]
) -> dict[str, CollectionSummary]:
    """The session corpus ingested into the session lakehouse (demo secret): that run's summary.

    Read-only for tests: a test that writes to a lakehouse makes its own.
    """
    return ingest_collections(spark, settings, corpus_roots, DEMO_SECRET)


@pytest.fixture(scope="session")
def tiles(spark: SparkSession, settings: Settings, ingested: dict[str, CollectionSummary]) -> Settings:
    """The session corpus ingested and tiled: the session settings, whose lakehouse tables
    (``images``, ``annotations``, ``quarantine``, ``tiles``) are then built. Read-only for tests."""
    tile_images(spark, settings)
    return settings


@pytest.fixture(scope="session")
def crowd(
    spark: SparkSession, tiles: Settings, corpus: tuple[Path, dict], tmp_path_factory: pytest.TempPathFactory
) -> SimpleNamespace:
    """A writable copy of the session lakehouse (images, annotations, tiles) with the crowd's reports
    ingested and their consensus built once; the tests of reports, consensus and consensus training share
    it.

    Beside the session corpus's crowd (``reports/``, ``reports.json``), a landing folder is landed (its
    DICOMs name a ``PatientID``, its PNGs do not) and three readers report on each landed mammogram
    (``landing.jsonl``: alternately normal and malignant), so landed images have consensus labels too.
    ``landing_reports`` counts those reports.
    """
    import synth.landing
    from pipelines.crowd import build_consensus
    from pipelines.io import read_table
    from pipelines.land import land_folder
    from pipelines.reports import ingest_reports

    root = tmp_path_factory.mktemp("crowd-lakehouse")
    for table in ("images", "annotations", "tiles"):
        shutil.copytree(Path(tiles.lakehouse.table(table)), root / table)
    settings = load_settings(
        "tiny",
        [
            f"lakehouse.root={root}",
            "spark.master=local[2]",
            f"mlflow.tracking_uri=sqlite:///{root / 'mlflow.db'}",
        ],
    )
    landing = tmp_path_factory.mktemp("crowd-landing") / "landing"
    synth.landing.generate(landing, images=12, seed=3)
    land_folder(spark, settings, landing, None, DEMO_SECRET)
    reports = tmp_path_factory.mktemp("crowd-reports") / "reports"
    shutil.copytree(corpus[0] / "reports", reports)
    landed = read_table(spark, settings.lakehouse.table("landing_images")).where("modality = 'mammography'")
    lines = [
        {
            "reporter": reader,
            "image_id": row["image_id"],
            "label": "malignant" if number % 2 else "normal",
            "reported_at": "2026-06-01T10:00:00Z",
        }
        for number, row in enumerate(landed.select("image_id").orderBy("image_id").collect())
        for reader in ("reader-01", "reader-02", "reader-03")
    ]
    (reports / "landing.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    manifest = json.loads((corpus[0] / "reports.json").read_text())
    first = ingest_reports(spark, settings, reports, DEMO_SECRET)
    consensus = build_consensus(spark, settings, manifest["truth"])
    return SimpleNamespace(
        settings=settings,
        reports=reports,
        manifest=manifest,
        first=first,
        consensus=consensus,
        landing_reports=len(lines),
    )


@pytest.fixture()
def mlflow_uri(tmp_path: Path) -> Iterator[str]:
    """A fresh SQLite-backed MLflow store, made the current tracking and registry URI, with its own
    ``Default`` experiment active (MLflow remembers the active experiment's id across stores: an earlier
    test's experiment 1 does not exist in this one)."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    mlflow.set_experiment("Default")
    yield uri
    mlflow.set_tracking_uri(previous)


OncolakeRunner = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def oncolake() -> OncolakeRunner:
    """Run the ``oncolake`` command as a user would, in its own process (and its own JVMs)."""

    def run(*args: str, cwd: Path = REPO, timeout: int = 600) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        return subprocess.run(
            [sys.executable, "-m", "jobs.cli", *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run
