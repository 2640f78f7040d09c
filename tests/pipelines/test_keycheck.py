"""A lakehouse refuses a pseudonym secret other than the one its pseudonyms were made with.

The first writer records the secret's check value; the same secret passes again, another one is refused
before anything is read or written, in the library and as ``oncolake land`` (one line, exit 2).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

import synth.landing
from conf import load_settings
from pipelines.io import read_table, table_exists
from pipelines.keycheck import TABLE, SecretChanged, key_check, verify_secret
from pipelines.land import land_folder

REPO = Path(__file__).resolve().parents[2]
FIRST, OTHER = b"first-secret-of-this-site", b"a-rotated-secret"


def test_another_secret_is_refused_before_anything_is_written(spark: SparkSession, tmp_path: Path) -> None:
    settings = load_settings("tiny", [f"lakehouse.root={tmp_path / 'lake'}", "spark.master=local[2]"])
    folder = tmp_path / "landing"
    synth.landing.generate(folder, images=2, seed=5)
    land_folder(spark, settings, folder, None, FIRST)
    stored = read_table(spark, settings.lakehouse.table(TABLE)).collect()
    assert [r["key_check"] for r in stored] == [key_check(FIRST)]
    assert FIRST.decode() not in str(stored) and key_check(FIRST) != key_check(OTHER)
    verify_secret(spark, settings, FIRST)  # the same secret passes

    with pytest.raises(SecretChanged, match="not the one this lakehouse's pseudonyms were made with"):
        land_folder(spark, settings, tmp_path / "nothing-read", None, OTHER)
    before = read_table(spark, settings.lakehouse.table("landing_images")).count()

    env = {**os.environ, "ONCOLAKE_PSEUDONYM_SECRET": OTHER.decode()}
    args = ["land", str(folder), "--config", "tiny", "--set", f"lakehouse.root={settings.lakehouse.root}"]
    done = subprocess.run(
        [sys.executable, "-m", "jobs.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "oncolake land: refused: the pseudonym secret ($ONCOLAKE_PSEUDONYM_SECRET)" in done.stderr
    assert "Traceback" not in done.stderr and OTHER.decode() not in done.stderr + done.stdout
    assert read_table(spark, settings.lakehouse.table("landing_images")).count() == before
    assert not table_exists(spark, settings.lakehouse.table("images"))
