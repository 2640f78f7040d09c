"""One executor JVM SIGKILLed while an ingest's tasks run, on ``local-cluster`` (two executor JVMs, as on
any real cluster): Spark re-runs its tasks on a new executor and the tables end identical, row by row, to
an undisturbed ingest of the same files. The suite's one case of this fault kind; ``benchmarks/kills.py``
runs it for ingest, tile and score, beside the driver kills.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from benchmarks.kills import INGEST_TABLES, KEYS, ExecutorKiller, compare, table_digest

REPO = Path(__file__).resolve().parents[2]


def _ingest(lake: Path, root: str, master: str) -> subprocess.CompletedProcess:
    args = ["ingest", "--config", "tiny", "--set", f"lakehouse.root={lake}"]
    args += ["--set", f"spark.master={master}"]
    return subprocess.run(
        [sys.executable, "-m", "jobs.cli", *args, "--source", f"mias={root}"],
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_an_executor_killed_mid_ingest_leaves_the_tables_of_an_undisturbed_run(
    spark: SparkSession, corpus_roots: dict[str, str], tmp_path: Path
) -> None:
    undisturbed = _ingest(tmp_path / "reference", corpus_roots["mias"], "local[1]")
    assert undisturbed.returncode == 0, undisturbed.stderr[-3000:]

    killer = ExecutorKiller()
    killer.start()
    try:
        result = _ingest(tmp_path / "lake", corpus_roots["mias"], "local-cluster[2,1,1024]")
    finally:
        killer.stop()
    assert killer.killed is not None, "no executor was busy long enough to be killed"
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    for table in INGEST_TABLES:
        expected = {table: table_digest(spark, tmp_path / "reference" / table, KEYS[table])}
        got = {table: table_digest(spark, tmp_path / "lake" / table, KEYS[table])}
        assert expected[table], table
        assert not compare(expected, got), compare(expected, got)
