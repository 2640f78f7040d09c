"""What an erasure means for the registered models, and when the erased rows leave the disk.

:func:`pipelines.erasure.erase_patients` removes the patients' rows from the current versions of every
table. Two things outlive it, and this module finds and says them:

- **Models trained on them.** A registered version's lineage names the table versions it read
  (:func:`model.registry.version_pins`: the tiles it trained on, the annotations and consensus its labels
  came from). :func:`flag_versions` reads each pinned version that predates the erasure and, where it
  held the erased rows, tags the model version ``erasure.<erasure id>`` with what it read, so that the
  registry shows which models to retrain without those patients and then retire.
- **Files on disk.** The rows stay in the replaced files until VACUUM. ``oncolake maintain`` keeps every
  version some registered model pins (pipelines.maintenance), so :func:`vacuum_note` says, per table,
  either the earliest time its VACUUM removes them (the erasure plus ``maintain.min_retention_hours``)
  or which registered versions keep them, until those versions are deleted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from mlflow import MlflowClient
from pyspark.sql import SparkSession

from conf import Settings
from model.registry import version_pins
from pipelines.erasure import IMAGE_TABLES, PATIENT_TABLES, Erasure, in_list
from pipelines.io import read_table


@dataclass(frozen=True)
class FlaggedVersion:
    """A registered model version whose lineage read rows of the erased patients."""

    model: str
    version: str
    table: str
    table_version: int
    rows: int

    def line(self) -> str:
        return (
            f"{self.model} v{self.version} trained on {self.table}@v{self.table_version}, which holds "
            f"{self.rows} rows of the erased patients"
        )


def _erased_rows(spark: SparkSession, path: str, version: int, table: str, erasure: Erasure) -> int:
    """The erased patients' rows in the table at ``version`` (by patient, or by their images)."""
    if table in PATIENT_TABLES:
        condition = in_list("patient_key", erasure.patients)
    elif erasure.image_ids:
        condition = in_list("image_id", erasure.image_ids)
    else:
        return 0
    return read_table(spark, path, version).where(condition).count()


def flag_versions(
    spark: SparkSession, settings: Settings, erasure: Erasure, client: MlflowClient | None = None
) -> list[FlaggedVersion]:
    """Tag every version of the product's models whose lineage held the erased rows; returns them.

    The tag is ``erasure.<erasure id>`` = ``<table>@v<version>: <rows> rows of erased patients; retrain
    without them, then delete this version``. Tagging again (a re-run) sets the same value.
    """
    client = client or MlflowClient()
    erased = {settings.lakehouse.table(t.table): t for t in erasure.tables}
    if not erased:
        return []
    names = {settings.lakehouse.table(t): t for t in (*PATIENT_TABLES, *IMAGE_TABLES)}
    prefix = settings.train.model_prefix
    flagged = []
    for model in client.search_registered_models(filter_string=f"name LIKE '{prefix}%'", max_results=1000):
        for version in client.search_model_versions(f"name = '{model.name}'", max_results=10000):
            pins = version_pins(dict(version.tags or {}), settings.lakehouse.table("annotations"))
            for path, pinned in sorted(pins.items()):
                done = erased.get(path)
                if done is None or pinned > done.version_before:
                    continue
                rows = _erased_rows(spark, path, pinned, names[path], erasure)
                if rows:
                    flag = FlaggedVersion(model.name, str(version.version), names[path], pinned, rows)
                    flagged.append(flag)
                    client.set_model_version_tag(
                        model.name,
                        str(version.version),
                        f"erasure.{erasure.erasure_id}",
                        f"{flag.table}@v{pinned}: {rows} rows of erased patients; retrain without them, "
                        "then delete this version",
                    )
    return flagged


def vacuum_note(settings: Settings, erasure: Erasure, pins: dict[str, int]) -> dict[str, Any]:
    """Per erased table, when ``oncolake maintain``'s VACUUM removes the old files holding the rows.

    ``pins`` is :func:`model.registry.pinned_versions`. A table whose oldest pinned version predates the
    erasure keeps those files while the pinning versions are registered (``kept_by_pin``); any other
    loses them at the first maintain run after ``erased_at + maintain.min_retention_hours``.
    """
    earliest = erasure.erased_at + timedelta(hours=settings.maintain.min_retention_hours)
    note: dict[str, Any] = {}
    for done in erasure.tables:
        pinned = pins.get(settings.lakehouse.table(done.table))
        if pinned is not None and pinned <= done.version_before:
            note[done.table] = {"kept_by_pin": pinned}
        else:
            note[done.table] = {"vacuum_after": earliest.isoformat()}
    return note
