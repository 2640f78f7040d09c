"""Stable ids: the Python and the Spark SQL form give the same string, and the format does not drift."""

from __future__ import annotations

import hashlib

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from core.ids import SEPARATOR, stable_id, stable_id_sql


def test_stable_id_is_sha256_over_fields_joined_by_the_unit_separator() -> None:
    expected = hashlib.sha256(b"a\x1fb\x1f3").hexdigest()
    assert SEPARATOR == "\x1f"
    assert stable_id("a", "b", 3) == expected[:32]
    assert stable_id("a", "b", 3, length=None) == expected
    assert stable_id("a", "b") != stable_id("ab")  # the separator keeps fields apart


def test_stable_id_refuses_none_which_spark_would_skip() -> None:
    with pytest.raises(ValueError, match="None"):
        stable_id("a", None)


def test_python_and_spark_forms_agree(spark: SparkSession) -> None:
    rows = [("img-1", "mias", 0), ("img-2", "ddsm", 12), ("ü/ä path", "cbis_ddsm", 3)]
    frame = spark.createDataFrame(rows, "image_id string, collection string, n int")
    got = frame.select(
        F.expr(stable_id_sql("image_id", "collection", "CAST(n AS STRING)")).alias("short"),
        F.expr(stable_id_sql("image_id", "'fixed'", length=None)).alias("full"),
    ).collect()
    for (image_id, collection, n), row in zip(rows, got, strict=True):
        assert row["short"] == stable_id(image_id, collection, n)
        assert row["full"] == stable_id(image_id, "fixed", length=None)
