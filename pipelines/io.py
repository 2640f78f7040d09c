"""All Delta Lake reads and writes: tables addressed by path, idempotent MERGEs, pinned snapshots.

Writes go through :func:`merge_into`, an insert-only MERGE keyed by the table's key columns, so that
re-running a job adds nothing and a job killed mid-write leaves the table at its previous version (a
Delta commit is atomic). Every commit carries the producing job's configuration as its
``userMetadata``, so ``DESCRIBE HISTORY`` says how each version was made.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

# Deletion vectors are off: Petastorm reads a snapshot's Parquet files directly, and a deletion vector
# would make rows it cannot see disappear from Delta but not from the files.
TABLE_PROPERTIES: dict[str, str] = {
    "delta.enableDeletionVectors": "false",
    "delta.appendOnly": "false",
}

_USER_METADATA = "spark.databricks.delta.commitInfo.userMetadata"


def table_exists(spark: SparkSession, path: str) -> bool:
    """Whether a Delta table has been created at ``path``."""
    return DeltaTable.isDeltaTable(spark, path)


def read_table(spark: SparkSession, path: str, version: int | None = None) -> DataFrame:
    """Read a table, optionally as it was at ``version`` (time travel)."""
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(path)


def current_version(spark: SparkSession, path: str) -> int:
    """The table's latest committed version."""
    return int(DeltaTable.forPath(spark, path).history(1).select("version").collect()[0][0])


def snapshot_files(spark: SparkSession, path: str, version: int) -> list[str]:
    """The Parquet files that make up the table at ``version``, for readers outside Spark (Petastorm)."""
    return sorted(read_table(spark, path, version).inputFiles())


def files_holding(spark: SparkSession, path: str, version: int, condition: str) -> list[str]:
    """The files of the table at ``version`` that hold at least one row matching ``condition``.

    Petastorm reads whole files, so narrowing the file list to those that hold matching rows saves
    reading files that hold none. The tile job writes splits and collections mixed within its files, so
    most files hold some of every split; readers filter rows themselves.
    """
    rows = read_table(spark, path, version).where(condition).select(F.input_file_name().alias("f")).distinct()
    return sorted(r["f"] for r in rows.collect())


@contextmanager
def _commit_metadata(spark: SparkSession, metadata: Mapping[str, Any] | None) -> Iterator[None]:
    if metadata is None:
        yield
        return
    spark.conf.set(_USER_METADATA, json.dumps(metadata, sort_keys=True, default=str))
    try:
        yield
    finally:
        spark.conf.unset(_USER_METADATA)


def merge_into(
    spark: SparkSession,
    df: DataFrame,
    path: str,
    keys: Sequence[str],
    metadata: Mapping[str, Any] | None = None,
    partition_by: Sequence[str] = (),
) -> None:
    """Insert the rows of ``df`` whose keys are not in the table yet; create the table if needed.

    Args:
        spark: the session.
        df: rows to add; must hold the table's columns.
        path: the table's location.
        keys: columns that identify a row; rows whose keys exist already are left untouched.
        metadata: recorded as the commit's ``userMetadata`` (the producing config, never secrets).
        partition_by: partition columns, used only when the table is created.
    """
    with _commit_metadata(spark, metadata):
        if not table_exists(spark, path):
            writer = df.write.format("delta").mode("errorifexists")
            for key, value in TABLE_PROPERTIES.items():
                writer = writer.option(key, value)
            if partition_by:
                writer = writer.partitionBy(*partition_by)
            writer.save(path)
            return
        condition = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)
        (
            DeltaTable.forPath(spark, path)
            .alias("t")
            .merge(df.alias("s"), condition)
            .whenNotMatchedInsertAll()
            .execute()
        )
