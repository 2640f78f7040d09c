"""All Delta Lake reads and writes: tables addressed by path, idempotent MERGEs, pinned snapshots.

Writes go through :func:`merge_into`, an insert-only MERGE keyed by the table's key columns, or
:func:`append_new`, an anti-join on the keys and a plain append that keeps the file layout the caller
chose (the tiles table's), so that re-running a job adds nothing and a job killed mid-write leaves the
table at its previous version (a Delta commit is atomic). Every commit carries the producing job's
configuration as its ``userMetadata``, so ``DESCRIBE HISTORY`` says how each version was made.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
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
_TXN_APP_ID = "spark.databricks.delta.write.txnAppId"
_TXN_VERSION = "spark.databricks.delta.write.txnVersion"


LOCK_WAIT_SECONDS = 900.0
"""How long a write waits for another process's write to the same local table before giving up."""

_THREAD_LOCKS: dict[str, threading.RLock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()
_HELD: dict[str, int] = {}  # path -> depth of the thread holding it (guarded by that path's RLock)


class TableLocked(RuntimeError):
    """Another process kept writing to the same local table for longer than :data:`LOCK_WAIT_SECONDS`."""


def local_path(path: str) -> Path | None:
    """``path`` (a plain path or a ``file:`` URI) on the local file system, absolute; ``None`` for an object
    store or HDFS URI."""
    if "://" in path and not path.startswith("file://"):
        return None
    return Path(path.removeprefix("file://").removeprefix("file:")).resolve()


@contextmanager
def table_lock(path: str, wait: float | None = None) -> Iterator[None]:
    """Hold the write lock of a table on local disk (a ``flock`` on ``_locks/<table>.lock`` beside it).

    Delta's commit is atomic only within one JVM on a local file system: two drivers can both write
    version N and one commit is lost. Every write of this module takes the lock around its read of the
    table's keys and its commit, so a second job waits (saying so once) and then sees the first's rows:
    no duplicates, nothing lost. Threads of one process (a stream's two queries) take it in turn too.
    Object stores need the LogStore of their own (docs/cluster.md) and take no lock here.

    Raises:
        TableLocked: still held by another process after ``wait`` seconds (:data:`LOCK_WAIT_SECONDS`).
    """
    local = local_path(path)
    if local is None:
        yield
        return
    key = str(local)
    with _THREAD_LOCKS_GUARD:
        in_process = _THREAD_LOCKS.setdefault(key, threading.RLock())
    with in_process:
        if _HELD.get(key):  # this thread holds it already (a maintenance step writing through here)
            _HELD[key] += 1
            try:
                yield
            finally:
                _HELD[key] -= 1
            return
        folder = local.parent / "_locks"
        folder.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + (LOCK_WAIT_SECONDS if wait is None else wait)
        with open(folder / f"{local.name}.lock", "a+") as handle:
            said = False
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TableLocked(
                            f"another job has been writing to the table {local.name} for too long "
                            f"(lock {folder / local.name}.lock): try again when it has finished"
                        ) from None
                    if not said:
                        print(
                            f"waiting for another job's write to the table {local.name} to finish",
                            file=sys.stderr,
                            flush=True,
                        )
                        said = True
                    time.sleep(0.2)
            try:
                handle.seek(0)
                handle.truncate()
                handle.write(f"{os.getpid()}\n")  # who holds it, for a person looking
                handle.flush()
                _HELD[key] = 1
                yield
            finally:
                _HELD[key] = 0
                fcntl.flock(handle, fcntl.LOCK_UN)


class WriteSiteReused(RuntimeError):
    """Two writes of one batch used the same (app id, version): Delta would skip the second silently."""


@dataclass
class _Batch:
    app_id: str
    version: int
    used: set[str] = field(default_factory=set)


_BATCH: ContextVar[_Batch | None] = ContextVar("oncolake_exactly_once_batch", default=None)


@contextmanager
def exactly_once(app_id: str, version: int) -> Iterator[None]:
    """Make every :func:`append_new` and :func:`merge_into` inside the block an idempotent Delta write.

    Each write commits with Delta's ``SetTransaction`` (``txnAppId`` = ``<app_id>:<table>:<site>``,
    ``txnVersion`` = ``version``): replaying the block with the same ``version`` (a streaming batch id
    after a crash) commits nothing where the first attempt committed. ``app_id`` must change whenever
    versions restart (a new streaming checkpoint restarts batch ids at 0): the stream passes its
    checkpoint's query id. Two writes of one block to the same table need different ``site`` names;
    reusing one raises :class:`WriteSiteReused` instead of losing the second write's rows.
    """
    token = _BATCH.set(_Batch(app_id, version))
    try:
        yield
    finally:
        _BATCH.reset(token)


def _transaction(path: str, site: str | None) -> tuple[str, int] | None:
    """The (txnAppId, txnVersion) of a write to ``path`` inside :func:`exactly_once`, else ``None``."""
    batch = _BATCH.get()
    if batch is None:
        return None
    table = path.rstrip("/").rsplit("/", 1)[-1]
    app_id = f"{batch.app_id}:{table}:{site or 'rows'}"
    if app_id in batch.used:
        raise WriteSiteReused(
            f"a second write to {table} as site {site or 'rows'!r} in batch {batch.version}"
        )
    batch.used.add(app_id)
    return app_id, batch.version


@contextmanager
def _session_transaction(spark: SparkSession, txn: tuple[str, int] | None) -> Iterator[None]:
    """Delta reads the idempotent-write pair of a MERGE from the session (writer options cover appends)."""
    if txn is None:
        yield
        return
    with session_conf(spark, {_TXN_APP_ID: txn[0], _TXN_VERSION: str(txn[1])}):
        yield


def _with_transaction(writer: Any, txn: tuple[str, int] | None) -> Any:
    return writer if txn is None else writer.option("txnAppId", txn[0]).option("txnVersion", str(txn[1]))


def table_exists(spark: SparkSession, path: str) -> bool:
    """Whether a Delta table has been created at ``path``, by this process or by any other.

    ``DeltaTable.isDeltaTable`` answers from the session's cached snapshot of the table's log: once this
    JVM has looked at a path before its table existed, it keeps saying "no" after another driver
    created the table (two jobs started at once on a fresh lakehouse). So a "no" is checked against the
    log folder itself, and a table found there is read once to refresh the cache.
    """
    if DeltaTable.isDeltaTable(spark, path):
        return True
    fs, commit_files = hadoop_path(spark, path.rstrip("/") + "/_delta_log/*.{json,parquet}")
    commits = fs.globStatus(commit_files)
    if commits is None or len(commits) == 0:
        return False
    DeltaTable.forPath(spark, path).history(1).collect()  # refreshes the cached snapshot
    return True


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
    reading files that hold none. The tile job writes each split and modality in files of their own
    (:func:`pipelines.tiles.by_layout`), so a split's files hold only that split's rows.
    """
    rows = read_table(spark, path, version).where(condition).select(F.input_file_name().alias("f")).distinct()
    return sorted(r["f"] for r in rows.collect())


@contextmanager
def session_conf(spark: SparkSession, values: Mapping[str, str]) -> Iterator[None]:
    """Set these session settings for the block; each goes back to its previous value (or unset) after."""
    previous: dict[str, str | None] = {key: spark.conf.get(key, None) for key in values}
    for key, value in values.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, old in previous.items():
            if old is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, old)


@contextmanager
def commit_metadata(spark: SparkSession, metadata: Mapping[str, Any] | None) -> Iterator[None]:
    """Record ``metadata`` (JSON) as the ``userMetadata`` of every Delta commit made in the block."""
    if metadata is None:
        yield
        return
    batch = _BATCH.get()
    if batch is not None:  # a streaming batch's commits say which batch made them
        metadata = {**metadata, "stream": {"app_id": batch.app_id, "batch": batch.version}}
    with session_conf(spark, {_USER_METADATA: json.dumps(metadata, sort_keys=True, default=str)}):
        yield


def add_missing_columns(spark: SparkSession, df: DataFrame, path: str) -> None:
    """Add to the table at ``path`` the columns of ``df`` it lacks (nullable; older rows read null).

    Tables gain columns as the product grows (``annotations.report_id`` came with expert reports): a
    lakehouse written by an earlier release takes the new rows without being rebuilt.
    """
    current = set(read_table(spark, path).columns)
    missing = [f for f in df.schema.fields if f.name not in current]
    if missing:
        listed = ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in missing)
        spark.sql(f"ALTER TABLE delta.`{path}` ADD COLUMNS ({listed})")


def merge_into(
    spark: SparkSession,
    df: DataFrame,
    path: str,
    keys: Sequence[str],
    metadata: Mapping[str, Any] | None = None,
    partition_by: Sequence[str] = (),
    site: str | None = None,
) -> None:
    """Insert the rows of ``df`` whose keys are not in the table yet; create the table if needed.

    Args:
        spark: the session.
        df: rows to add; must hold the table's columns.
        path: the table's location.
        keys: columns that identify a row; rows whose keys exist already are left untouched.
        metadata: recorded as the commit's ``userMetadata`` (the producing config, never secrets).
        partition_by: partition columns, used only when the table is created.
        site: names this write among a batch's writes to the same table (:func:`exactly_once`).
    """
    txn = _transaction(path, site)
    with table_lock(path), commit_metadata(spark, metadata):
        if not table_exists(spark, path):
            writer = _with_transaction(df.write.format("delta").mode("errorifexists"), txn)
            for key, value in TABLE_PROPERTIES.items():
                writer = writer.option(key, value)
            if partition_by:
                writer = writer.partitionBy(*partition_by)
            with commit_fault(path):
                writer.save(path)
            return
        add_missing_columns(spark, df, path)
        condition = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)
        with _session_transaction(spark, txn), commit_fault(path):
            (
                DeltaTable.forPath(spark, path)
                .alias("t")
                .merge(df.alias("s"), condition)
                .whenNotMatchedInsertAll()
                .execute()
            )


COMMIT_FAULT_ENV = "ONCOLAKE_COMMIT_FAULT"
"""Fault injection for the reliability benchmark (benchmarks/kills.py): ``<when>:<table>`` SIGKILLs this
process and its driver JVM ``before`` a write to that table starts, ``during`` it (a timer fires 0.2 s
in, while Delta writes data files or its log entry), or ``after`` its commit returned. Unset, it costs
one lookup per write."""


@contextmanager
def commit_fault(path: str) -> Iterator[None]:
    """The injection point around one table write (see :data:`COMMIT_FAULT_ENV`)."""
    wanted = os.environ.get(COMMIT_FAULT_ENV)
    if not wanted:
        yield
        return
    when, _, table = wanted.partition(":")
    if table != path.rstrip("/").rsplit("/", 1)[-1]:
        yield
        return

    def kill() -> None:
        print(f"io: fault injected {when} the write to {table}: SIGKILL", file=sys.stderr, flush=True)
        # The driver is this process and the JVM it launched (which runs the commit): both at once.
        from pyspark import SparkContext

        jvm = getattr(getattr(SparkContext, "_gateway", None), "proc", None)
        if jvm is not None:
            os.kill(jvm.pid, signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)

    if when == "before":
        kill()
    if when == "during":
        threading.Timer(0.2, kill).start()
    yield
    if when in ("after", "during"):
        kill()  # "during" on a write shorter than the timer: killed right after its commit instead


def delete_where(
    spark: SparkSession, path: str, condition: str, metadata: Mapping[str, Any] | None = None
) -> tuple[int, int, int]:
    """Delete the table's rows matching ``condition`` in one commit (none when no row matches).

    Deletion vectors are off (:data:`TABLE_PROPERTIES`), so the files holding those rows are rewritten
    without them: the rows are gone from the current version's files, and from disk once VACUUM removes
    the old files. Returns ``(rows deleted, version before, version after)``.
    """
    with table_lock(path), commit_metadata(spark, metadata):
        before = current_version(spark, path)
        rows = read_table(spark, path).where(condition).count()
        if rows:
            DeltaTable.forPath(spark, path).delete(condition)
        return rows, before, current_version(spark, path)


def hadoop_path(spark: SparkSession, name: str) -> tuple[Any, Any]:
    """The Hadoop ``FileSystem`` and ``Path`` (JVM objects) of ``name``: any URI the session can read."""
    jvm: Any = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(name)
    return path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), path


def materialise(frame: DataFrame) -> DataFrame:
    """``frame`` computed once and its lineage cut: a reliable checkpoint where the session has a
    checkpoint directory (``jobs.session.build_spark`` sets one wherever executors are their own
    processes: it survives a lost executor), else a local one (driver and executor are one JVM)."""
    if frame.sparkSession.sparkContext.getCheckpointDir():
        return frame.checkpoint()
    return frame.localCheckpoint()


def set_table_properties(spark: SparkSession, path: str, wanted: Mapping[str, str]) -> dict[str, str]:
    """Set the table properties of ``wanted`` that differ from the table's (one ``ALTER TABLE`` commit,
    none when all match). Returns the properties changed."""
    current = DeltaTable.forPath(spark, path).detail().select("properties").collect()[0][0] or {}
    changed = {k: v for k, v in wanted.items() if current.get(k) != v}
    if changed:
        listed = ", ".join(f"'{k}' = '{v}'" for k, v in changed.items())
        spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ({listed})")
    return changed


def row_group_properties(rows: int) -> dict[str, str]:
    """Table properties that make every Parquet row group of the table's files ``rows`` rows long.

    The Parquet writer checks its buffered size every ``page.size.row.check`` rows and closes the row
    group when it exceeds ``block.size``: a 1-byte block size and a check every ``rows`` rows close one
    exactly every ``rows`` rows. Delta hands its table properties to the Parquet writer, so every write of
    the table (appends, and later OPTIMIZE) keeps them.
    """
    return {
        "parquet.block.size": "1",
        "parquet.page.size.row.check.min": str(rows),
        "parquet.page.size.row.check.max": str(rows),
    }


def append_new(
    spark: SparkSession,
    df: DataFrame,
    path: str,
    keys: Sequence[str],
    metadata: Mapping[str, Any] | None = None,
    layout: Callable[[DataFrame], DataFrame] | None = None,
    properties: Mapping[str, str] | None = None,
    site: str | None = None,
) -> None:
    """Append the rows of ``df`` whose keys are not in the table yet; create the table if needed.

    Unlike :func:`merge_into` (whose join plan decides which rows share a file), the files are written
    as ``layout(new rows)`` partitions them: an anti-join on the key columns only (never on pixel
    columns), ``layout``, one append commit.

    Args:
        layout: a repartitioning of the new rows (one file per partition); ``None`` keeps them as they are.
        properties: table properties beyond :data:`TABLE_PROPERTIES`, set when the table is created and
            updated when they differ (e.g. :func:`row_group_properties`).
        site: names this write among a batch's writes to the same table (:func:`exactly_once`).
    """
    txn = _transaction(path, site)
    wanted = {**TABLE_PROPERTIES, **(properties or {})}
    with table_lock(path), commit_metadata(spark, metadata):
        if not table_exists(spark, path) and not properties:
            # A new table holds no key yet: one write, no anti-join, one commit.
            writer = _with_transaction(
                (layout(df) if layout else df).write.format("delta").mode("errorifexists"), txn
            )
            for key, value in TABLE_PROPERTIES.items():
                writer = writer.option(key, value)
            with commit_fault(path):
                writer.save(path)
            return
        if not table_exists(spark, path):
            builder = DeltaTable.createIfNotExists(spark).location(path).addColumns(df.schema)
            for key, value in wanted.items():
                builder = builder.property(key, value)
            builder.execute()
        else:
            set_table_properties(spark, path, wanted)
            add_missing_columns(spark, df, path)
        existing = read_table(spark, path).select(*keys)
        new = df.join(existing, list(keys), "left_anti")
        writer = _with_transaction((layout(new) if layout else new).write.format("delta").mode("append"), txn)
        with commit_fault(path):
            writer.save(path)
