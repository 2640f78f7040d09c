"""Erase patients: their rows leave every table, the erasure is recorded, and no later run brings them back.

A request to erase a patient (a data subject's right, or a site withdrawing a case) names the patient by
pseudonym (``patient_key``: sites that hold the secret recompute it from their own identifier; nothing
here can). :func:`erase_patients` then, table by table, each under its lock and in one commit:

- deletes the patient's rows from the tables that carry ``patient_key`` (:data:`PATIENT_TABLES`) and the
  rows of the patient's images from those keyed by image (:data:`IMAGE_TABLES`); deletion vectors are
  off, so each file holding such rows is rewritten without them;
- records the erasure in the ``erasures`` table: one row per patient with the erasure id, the time and,
  per table, the rows deleted and the versions before and after — no pixel, path, label or other data.

The deleted rows stay in the tables' older versions, and so on disk, until ``oncolake maintain``'s VACUUM
removes the replaced files: after ``maintain.min_retention_hours``, unless a registered model's lineage
pins an older version (model.erasure flags those model versions and says which they are).
:func:`skip_erased` keeps erased patients out of later ingests and landings (their files are counted
``erased`` in the summary and read no further), so re-running a job over the same download does not
undo an erasure. Expert reports on an erased image name an image that no longer exists and are
quarantined as such (only the report file's path and the reason are kept).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql import types as T

from conf import Settings
from core.ids import stable_id
from pipelines.io import append_new, delete_where, read_table, table_exists
from pipelines.pseudonym import pseudonymise
from pipelines.sources.base import Scan

PATIENT_TABLES = ("images", "tiles", "landing_images", "landing_tiles")
"""Tables with a ``patient_key`` column: the patient's rows are those."""
IMAGE_TABLES = ("annotations", "predictions", "consensus")
"""Tables keyed by image: the rows of the patient's images (found in ``images`` and ``landing_images``)."""
ERASURES = "erasures"
PSEUDONYM = re.compile(r"[0-9a-f]{20}")

ERASURE_SCHEMA = T.StructType(
    [
        T.StructField("erasure_row_id", T.StringType(), False),
        T.StructField("erasure_id", T.StringType(), False),
        T.StructField("patient_key", T.StringType(), False),
        T.StructField("erased_at", T.TimestampType(), False),
        T.StructField(
            "tables",
            T.ArrayType(
                T.StructType(
                    [
                        T.StructField("table", T.StringType(), False),
                        T.StructField("rows", T.LongType(), False),
                        T.StructField("version_before", T.LongType(), False),
                        T.StructField("version_after", T.LongType(), False),
                    ]
                )
            ),
            False,
        ),
    ]
)


class NotAPseudonym(ValueError):
    """A patient was named by something that is not a pseudonym (20 lowercase hex characters)."""


@dataclass(frozen=True)
class TableErasure:
    """What one table lost: the rows deleted and the versions around the delete commit."""

    table: str
    rows: int
    version_before: int
    version_after: int


@dataclass
class Erasure:
    """One erasure: who, when, what each table lost; the patients found nowhere; those erased before."""

    erasure_id: str
    erased_at: datetime
    patients: list[str]
    image_ids: list[str] = field(repr=False)  # used, never recorded: the record holds no data
    tables: list[TableErasure] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    already_erased: list[str] = field(default_factory=list)

    @property
    def images(self) -> int:
        return len(self.image_ids)

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables)

    def table(self, name: str) -> TableErasure | None:
        return next((t for t in self.tables if t.table == name), None)

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        del data["image_ids"]
        return {**data, "erased_at": self.erased_at.isoformat(), "images": self.images}


def check_pseudonyms(patients: Sequence[str]) -> list[str]:
    """The patients, stripped and de-duplicated in order; refuses anything that is not a pseudonym (an
    original identifier typed by mistake must not be written anywhere, even as an unknown patient)."""
    cleaned = list(dict.fromkeys(p.strip() for p in patients if p.strip()))
    bad = [p for p in cleaned if not PSEUDONYM.fullmatch(p)]
    if bad:
        raise NotAPseudonym(
            f"{len(bad)} of the patients given are not pseudonyms (20 lowercase hex characters, the "
            "tables' patient_key): give the pseudonym, never the original identifier"
        )
    if not cleaned:
        raise NotAPseudonym("no patient given")
    return cleaned


def erased_patients(spark: SparkSession, settings: Settings) -> set[str]:
    """Every pseudonym the ``erasures`` table records (empty before the first erasure)."""
    path = settings.lakehouse.table(ERASURES)
    if not table_exists(spark, path):
        return set()
    return {r["patient_key"] for r in read_table(spark, path).select("patient_key").distinct().collect()}


def in_list(column: str, values: Iterable[str]) -> str:
    """A Spark SQL condition: ``column`` is one of ``values``."""
    return f"{column} IN ({', '.join(repr(v) for v in sorted(values))})"


def erase_patients(
    spark: SparkSession, settings: Settings, patients: Sequence[str], now: datetime | None = None
) -> Erasure:
    """Delete every row of ``patients`` from every table and record the erasure (the erase job).

    Args:
        spark: the session.
        settings: the lakehouse.
        patients: pseudonyms (``patient_key``); :func:`check_pseudonyms` is applied.
        now: the erasure's time (tests); the current time by default.

    Returns:
        What was deleted where. A patient with no row anywhere is ``unknown`` (or ``already_erased`` when
        the ``erasures`` table names it); neither is recorded again, so a re-run changes nothing.
    """
    patients = check_pseudonyms(patients)
    lake = settings.lakehouse
    now = now or datetime.now(UTC)
    erasure_id = stable_id("erasure", now.isoformat(), *patients)
    metadata = {"job": "erase", "erasure_id": erasure_id, "patients": len(patients)}

    present: set[str] = set()  # the patients with a row in some table
    image_ids: set[str] = set()  # their images
    for table in PATIENT_TABLES:
        path = lake.table(table)
        if table_exists(spark, path):
            matching = read_table(spark, path).where(in_list("patient_key", patients))
            for row in matching.select("patient_key", "image_id").distinct().collect():
                present.add(row["patient_key"])
                image_ids.add(row["image_id"])
    erasure = Erasure(erasure_id, now, patients, sorted(image_ids))
    for table in (*PATIENT_TABLES, *IMAGE_TABLES):
        path = lake.table(table)
        if not table_exists(spark, path):
            continue
        if table in PATIENT_TABLES:
            condition = in_list("patient_key", patients)
        elif image_ids:
            condition = in_list("image_id", image_ids)
        else:
            continue
        rows, before, after = delete_where(spark, path, condition, metadata)
        if rows:
            erasure.tables.append(TableErasure(table, rows, before, after))
            print(f"erase: {table}: {rows} rows deleted (v{before} -> v{after})", flush=True)

    previously = erased_patients(spark, settings)
    erasure.already_erased = [p for p in patients if p in previously and p not in present]
    erasure.unknown = [p for p in patients if p not in present and p not in previously]
    recorded = [p for p in patients if p in present]
    if recorded:
        tables = [dataclasses.astuple(t) for t in erasure.tables]
        records = [(stable_id(erasure_id, p), erasure_id, p, now, tables) for p in recorded]
        append_new(
            spark,
            spark.createDataFrame(records, ERASURE_SCHEMA),
            lake.table(ERASURES),
            ["erasure_row_id"],
            metadata,
        )
    return erasure


def skip_erased(
    spark: SparkSession, settings: Settings, scans: Mapping[str, Scan], secret: bytes
) -> tuple[dict[str, Scan], dict[str, int]]:
    """The scans without the records of erased patients, and how many each collection lost.

    Ingest and landing call this before decoding anything, so an erased patient's files, still in the
    download, are not read again; the summary counts them as ``erased``.
    """
    erased = erased_patients(spark, settings)
    counts = dict.fromkeys(scans, 0)
    if not erased:
        return dict(scans), counts
    kept: dict[str, Scan] = {}
    for name, scan in scans.items():
        records = [r for r in scan.records if pseudonymise(secret, name, r.patient_ref) not in erased]
        counts[name] = len(scan.records) - len(records)
        kept[name] = dataclasses.replace(scan, records=records)
    return kept, counts
