"""Delta maintenance after big loads: compaction that keeps each table's layout, and a VACUUM that never
removes what a registered model's lineage still reads.

Appends (ingest, landing, scoring, streaming) leave many small files behind, and every compaction or
MERGE leaves the files it replaced on disk until ``VACUUM`` deletes them. :func:`maintain_table` does both
for one table:

- **Compaction.** The tiles table keeps its layout (:func:`pipelines.tiles.by_layout`: every file holds
  one split and modality, so a training worker reads only its split's files); plain bin-packing, or a
  Z-order whose files straddle two groups, would mix splits again. So each (split, modality) group that
  is spread over more files than its size needs is rewritten on its own with the layout's rule, by a
  ``replaceWhere`` overwrite of that group (the same rows). Every other table is bin-packed with Delta's
  ``OPTIMIZE`` (a ``dataChange = false`` commit).
- **Retention.** A table's oldest *pinned* version (the one a registered model's lineage names: the tiles
  version it trained on, the annotations and consensus versions its labels came from; see
  :func:`model.registry.pinned_versions`) must stay readable: VACUUM may only delete files that were
  removed before that version's successor was committed. The retention is therefore the age of that
  successor plus a margin, never less than ``maintain.min_retention_hours``; the table's
  ``delta.deletedFileRetentionDuration`` is set to it (so a plain ``VACUUM`` by hand is just as safe), and
  ``delta.logRetentionDuration`` / ``delta.checkpointRetentionDuration`` to the pinned version's age plus
  ``maintain.log_margin_days``, so that its log entries survive the log clean-up too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from delta.tables import DeltaTable
from pyspark.sql import Column, SparkSession
from pyspark.sql import functions as F

from conf import Settings
from pipelines.io import (
    commit_metadata,
    current_version,
    hadoop_path,
    read_table,
    session_conf,
    set_table_properties,
    table_exists,
    table_lock,
)
from pipelines.tiles import by_layout

TILES = "tiles"


@dataclass
class TableMaintenance:
    """What :func:`maintain_table` did to one table."""

    table: str
    version_before: int
    version_after: int
    files_before: int
    files_after: int
    compacted: list[str]
    """The groups rewritten (tiles: ``split/modality``; other tables: ``all`` when OPTIMIZE merged files)."""
    pinned_version: int | None
    retention_hours: float
    log_retention_days: int
    files_deleted: int

    def line(self) -> str:
        pinned = f"pinned v{self.pinned_version}" if self.pinned_version is not None else "no pinned version"
        compacted = ", ".join(self.compacted) if self.compacted else "nothing to compact"
        return (
            f"{self.table:16} v{self.version_before} -> v{self.version_after}  files {self.files_before} -> "
            f"{self.files_after} ({compacted}); {pinned}: VACUUM retention {self.retention_hours:.1f} h, "
            f"{self.files_deleted} files deleted; log retention {self.log_retention_days} days"
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def lakehouse_tables(spark: SparkSession, settings: Settings) -> list[str]:
    """The names of the Delta tables under ``lakehouse.root`` (a folder holding a ``_delta_log``)."""
    fs, path = hadoop_path(spark, settings.lakehouse.root)
    if not fs.exists(path):
        return []
    names = [status.getPath().getName() for status in fs.listStatus(path) if status.isDirectory()]
    names = [n for n in names if not n.startswith(("_", "."))]
    return sorted(n for n in names if table_exists(spark, settings.lakehouse.table(n)))


def _file_sizes(spark: SparkSession, files: list[str]) -> dict[str, int]:
    sizes = {}
    for name in files:
        fs, path = hadoop_path(spark, name)
        sizes[name] = int(fs.getFileStatus(path).getLen())
    return sizes


def _group_condition(split: str | None, modality: str) -> str:
    split_test = "split IS NULL" if split is None else f"split = '{split}'"
    return f"{split_test} AND modality = '{modality}'"


def compact_tiles(
    spark: SparkSession, path: str, target_file_bytes: int, metadata: Mapping[str, Any]
) -> list[str]:
    """Rewrite each (split, modality) group of the tiles table spread over more files than it needs.

    A group needs ``ceil(bytes / target_file_bytes)`` files; one spread over more (small appends) is
    rewritten alone, with :func:`pipelines.tiles.by_layout` and ``replaceWhere`` on the group. Delta
    refuses ``dataChange = false`` with a ``replaceWhere`` on data columns, so the commit is an ordinary
    overwrite of the group (same rows; nothing streams from the tiles table). Returns the groups
    rewritten (``split/modality``).
    """
    table = read_table(spark, path)
    placed = table.select("split", "modality", F.input_file_name().alias("file")).distinct().collect()
    groups: dict[tuple[str | None, str], list[str]] = {}
    for row in placed:
        groups.setdefault((row["split"], row["modality"]), []).append(row["file"])
    sizes = _file_sizes(spark, sorted({f for files in groups.values() for f in files}))
    rewritten = []
    for (split, modality), files in sorted(groups.items(), key=lambda g: (str(g[0][0]), g[0][1])):
        wanted = max(1, math.ceil(sum(sizes[f] for f in files) / target_file_bytes))
        if len(files) <= wanted:
            continue
        condition = _group_condition(split, modality)
        rows = read_table(spark, path).where(condition)
        with commit_metadata(spark, {**metadata, "compacted": f"{split}/{modality}"}):
            (
                by_layout(spark, wanted)(rows)
                .write.format("delta")
                .mode("overwrite")
                .option("replaceWhere", condition)
                .save(path)
            )
        rewritten.append(f"{split}/{modality}")
    return rewritten


def optimize(spark: SparkSession, path: str, metadata: Mapping[str, Any]) -> list[str]:
    """Bin-pack the table's small files with Delta's ``OPTIMIZE`` (nothing is committed when there is
    nothing to merge). Returns ``["all"]`` when files were merged."""
    with commit_metadata(spark, metadata):
        metrics = DeltaTable.forPath(spark, path).optimize().executeCompaction().collect()
    removed = metrics[0]["metrics"]["numFilesRemoved"] if metrics else 0
    return ["all"] if removed else []


def retention_hours(
    spark: SparkSession,
    path: str,
    pinned: int | None,
    minimum_hours: float,
    margin_hours: float,
    now: datetime,
) -> float:
    """Hours of removed files VACUUM must keep so that version ``pinned`` stays readable.

    The files of version ``pinned`` are removed, at the earliest, by the commit that follows it: every
    file removed since that commit's time is kept. Without a pinned version (or when it is the newest),
    ``minimum_hours``.
    """
    if pinned is None:
        return minimum_hours
    later = _commit_seconds(spark, path, F.col("version") > pinned)
    if later is None:
        return minimum_hours
    age = max(0.0, now.timestamp() - later) / 3600
    # Whole days: the retention (a table property) then changes once a day as the pin ages, not each run.
    return max(minimum_hours, 24.0 * math.ceil((age + margin_hours) / 24))


def _commit_seconds(spark: SparkSession, path: str, which: Column) -> float | None:
    """The earliest commit time (seconds since the epoch) among the versions ``which`` selects."""
    history = DeltaTable.forPath(spark, path).history().where(which)
    seconds = history.agg(F.min(F.col("timestamp").cast("double")).alias("at")).collect()[0]["at"]
    return None if seconds is None else float(seconds)


def _version_age_days(spark: SparkSession, path: str, version: int, now: datetime) -> float:
    at = _commit_seconds(spark, path, F.col("version") == version)
    return 0.0 if at is None else (now.timestamp() - at) / 86400


def _live_files(spark: SparkSession, path: str) -> int:
    return len(read_table(spark, path).inputFiles())


def _vacuum(spark: SparkSession, path: str, hours: float) -> int:
    """VACUUM with ``hours`` of retention when a dry run finds files to delete; returns how many it deleted
    (a table with nothing to delete gets no VACUUM commit in its history)."""
    # The retention below Delta's 7-day guard is this module's decision. VACUUM lists the table's folders
    # with `parallelPartitionDiscovery.parallelism` tasks (10,000 by default: minutes of empty tasks on a
    # small cluster for an unpartitioned table); one task per core lists it as fast.
    wanted = {
        "spark.databricks.delta.retentionDurationCheck.enabled": "false",
        "spark.sql.sources.parallelPartitionDiscovery.parallelism": str(
            max(1, spark.sparkContext.defaultParallelism)
        ),
    }
    with session_conf(spark, wanted):
        doomed = spark.sql(f"VACUUM delta.`{path}` RETAIN {hours:g} HOURS DRY RUN").count()
        if doomed:
            DeltaTable.forPath(spark, path).vacuum(hours)
    return doomed


def maintain_table(
    spark: SparkSession,
    settings: Settings,
    name: str,
    pinned: int | None,
    now: datetime | None = None,
) -> TableMaintenance:
    """Compact one table (keeping its layout), set its retention properties from ``pinned``, VACUUM it.

    Args:
        spark: the session.
        settings: ``lakehouse`` and ``maintain``.
        name: the table's name under the lakehouse.
        pinned: the oldest version of this table a registered model's lineage names (``None``: none).
        now: the clock (tests); defaults to now.

    Returns:
        What was done, with the figures the job prints.
    """
    with table_lock(settings.lakehouse.table(name)):  # no job writes to it while it is rewritten
        return _maintain_table(spark, settings, name, pinned, now)


def _maintain_table(
    spark: SparkSession, settings: Settings, name: str, pinned: int | None, now: datetime | None
) -> TableMaintenance:
    options = settings.maintain
    path = settings.lakehouse.table(name)
    metadata = {"job": "maintain", "config": settings.public_dict()}
    before, files_before = current_version(spark, path), _live_files(spark, path)
    if name == TILES:
        compacted = compact_tiles(spark, path, options.target_file_mb * 2**20, metadata)
    else:
        compacted = optimize(spark, path, metadata)
    now = now or datetime.now(UTC)  # after compaction: its commit is never in the future
    hours = retention_hours(spark, path, pinned, options.min_retention_hours, options.margin_hours, now)
    age = _version_age_days(spark, path, pinned, now) if pinned is not None else 0.0
    log_days = max(options.min_log_retention_days, math.ceil(age) + options.log_margin_days)
    retention = {
        "delta.deletedFileRetentionDuration": f"interval {math.ceil(hours)} hours",
        "delta.logRetentionDuration": f"interval {log_days} days",
        "delta.checkpointRetentionDuration": f"interval {log_days} days",
    }
    with commit_metadata(spark, metadata):
        set_table_properties(spark, path, retention)
    deleted = _vacuum(spark, path, hours)
    return TableMaintenance(
        name,
        before,
        current_version(spark, path),
        files_before,
        _live_files(spark, path),
        compacted,
        pinned,
        hours,
        log_days,
        deleted,
    )


def maintain_lakehouse(
    spark: SparkSession,
    settings: Settings,
    pins: Mapping[str, int],
    now: datetime | None = None,
    only: list[str] | None = None,
) -> list[TableMaintenance]:
    """Maintain every Delta table of the lakehouse (:func:`maintain_table`).

    Args:
        pins: table path -> the oldest version of it that a registered model's lineage names
            (:func:`model.registry.pinned_versions`); paths are compared without a ``file:`` prefix.
        now: the clock (tests).
        only: these tables only; every table by default.

    Returns:
        One :class:`TableMaintenance` per table, in name order.
    """
    by_path = {p.removeprefix("file:").rstrip("/"): v for p, v in pins.items()}
    done = []
    for name in lakehouse_tables(spark, settings):
        if only is not None and name not in only:
            continue
        path = settings.lakehouse.table(name).removeprefix("file:").rstrip("/")
        done.append(maintain_table(spark, settings, name, by_path.get(path), now))
        print(f"maintain: {done[-1].line()}", flush=True)
    return done
