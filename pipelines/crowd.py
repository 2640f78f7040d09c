"""The consensus job: expert reports in ``annotations`` -> the ``consensus`` and ``reporters`` tables.

Reads one version of ``annotations`` (its expert rows), keeps the latest report of each reader on each
image (:func:`pipelines.consensus.latest_reports`), and per modality (its own label set: histology has no
normal class) runs every method of ``consensus.methods`` (majority vote, Dawid–Skene). Every image read
gets one ``consensus`` row per method with its posterior per class, and the readers' lesion marks merged
into consensus findings (:func:`pipelines.consensus.merge_marks`); Dawid–Skene's estimated confusion
matrix of every reader goes to ``reporters``. Both tables are insert-only MERGEs keyed by (image or
reporter, method, annotations version): re-running on the same version adds nothing (and skips the
work), and a new version of ``annotations`` adds a new generation beside the old one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import reduce
from pathlib import Path
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from conf import Settings
from core.ids import stable_id, stable_id_sql
from core.quiet import quiet
from pipelines.consensus import dawid_skene, latest_reports, majority_vote, merge_marks, posterior_column
from pipelines.io import current_version, materialise, merge_into, read_table, table_exists
from pipelines.pseudonym import path_key
from pipelines.reports import CLASSES, SOURCE, known_images

FINDINGS_TYPE = T.ArrayType(
    T.StructType(
        [
            T.StructField("label", T.StringType()),
            T.StructField("geometry_kind", T.StringType()),
            T.StructField("geometry", T.StringType()),
            T.StructField("mask_png", T.BinaryType()),
            T.StructField("marks", T.IntegerType()),
            T.StructField("readers", T.IntegerType()),
        ]
    )
)
_SEVERITY = {"normal": 0, "benign": 1, "malignant": 2}


@dataclass
class MethodFigures:
    """One method's outcome on one modality."""

    images: int = 0
    labels: dict[str, int] = field(default_factory=dict)
    iterations: int | None = None
    converged: bool | None = None
    accuracy: float | None = None
    """Against a known truth (``--truth``), where given."""
    truth_images: int = 0


@dataclass
class ConsensusSummary:
    """What a consensus run did: the annotations version it read, reports used, per modality and method."""

    annotations_version: int | None = None
    reports: int = 0
    readers: int = 0
    skipped: bool = False
    """The consensus of this annotations version was in the table already: nothing was computed."""
    methods: dict[str, dict[str, MethodFigures]] = field(default_factory=dict)
    reader_rows: list[dict[str, Any]] = field(default_factory=list)
    priors: dict[str, dict[str, float]] = field(default_factory=dict)
    """Dawid–Skene's class priors per modality."""

    def render(self) -> str:
        lines = [
            f"consensus of annotations version {self.annotations_version}: {self.reports} latest reports, "
            f"{self.readers} readers" + (" (already computed: nothing new)" if self.skipped else "")
        ]
        lines.append(
            f"{'modality':12}{'method':>15}{'images':>8}{'normal':>8}{'benign':>8}{'malignant':>10}"
            f"{'iterations':>11}{'accuracy':>10}"
        )
        for modality, methods in sorted(self.methods.items()):
            for method, f in methods.items():
                accuracy = "" if f.accuracy is None else f"{f.accuracy:.3f}"
                lines.append(
                    f"{modality:12}{method:>15}{f.images:>8}"
                    + "".join(
                        f"{f.labels.get(k, 0):>{w}}"
                        for k, w in (("normal", 8), ("benign", 8), ("malignant", 10))
                    )
                    + f"{'' if f.iterations is None else f.iterations:>11}{accuracy:>10}"
                )
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def _now() -> datetime:
    return datetime.now(UTC)


def _decide(posteriors: DataFrame, classes: tuple[str, ...]) -> DataFrame:
    """``label``: the class of highest posterior; a tie goes to the more severe class (a screening
    program reads again rather than miss)."""
    columns = [F.col(posterior_column(k)) for k in classes]
    top = F.greatest(*columns)
    label = F.lit(None).cast("string")
    for k in classes:  # later (more severe) classes overwrite earlier ones on a tie
        label = F.when(F.col(posterior_column(k)) >= top - F.lit(1e-12), F.lit(k)).otherwise(label)
    return posteriors.withColumn("label", label)


def consensus_rows(
    decided: DataFrame, reports: DataFrame, classes: tuple[str, ...], method: str, modality: str, version: int
) -> DataFrame:
    """``consensus`` rows of one method on one modality (findings added by the caller)."""
    counts = (
        reports.join(decided.select("image_id", F.col("label").alias("_consensus")), "image_id")
        .groupBy("image_id")
        .agg(
            F.count("*").alias("reports"),
            F.avg((F.col("label") == F.col("_consensus")).cast("double")).alias("agreement"),
        )
    )
    probabilities = F.create_map(*[x for k in classes for x in (F.lit(k), F.col(posterior_column(k)))])
    return decided.join(counts, "image_id").select(
        F.expr(stable_id_sql("image_id", f"'{method}'", f"'{version}'")).alias("consensus_id"),
        "image_id",
        F.lit(modality).alias("modality"),
        "label",
        probabilities.alias("probabilities"),
        F.col("reports").cast("int").alias("reports"),
        "agreement",
        F.lit(method).alias("method"),
        F.lit(version).cast("long").alias("annotations_version"),
        F.lit(_now()).alias("computed_at"),
    )


def consensus_findings(marks: DataFrame, iou: float) -> DataFrame:
    """Executors: per image, the latest reports' marks merged into findings (:func:`merge_marks`).

    Args:
        marks: ``image_id, reporter, label, geometry_kind, geometry, height, width``, one row per mark.

    Returns:
        ``image_id, findings`` (:data:`FINDINGS_TYPE`).
    """

    def run(group: pd.DataFrame) -> pd.DataFrame:
        quiet()
        first = group.iloc[0]
        rows = list(
            group[["reporter", "label", "geometry_kind", "geometry"]].itertuples(index=False, name=None)
        )
        found = merge_marks(rows, int(first["height"]), int(first["width"]), iou)
        return pd.DataFrame({"image_id": [first["image_id"]], "findings": [found]})

    schema = T.StructType(
        [T.StructField("image_id", T.StringType()), T.StructField("findings", FINDINGS_TYPE)]
    )
    return marks.groupBy("image_id").applyInPandas(run, schema)


def reporter_rows(result: Any, modality: str, version: int) -> list[tuple]:
    """``reporters`` rows from a Dawid–Skene fit (:meth:`DawidSkeneResult.readers`)."""
    rows = []
    for r in result.readers().to_dict("records"):
        rows.append(
            (
                stable_id(r["reader"], modality, "dawid_skene", version),
                r["reader"],
                modality,
                "dawid_skene",
                r["confusion"],
                int(r["reports"]),
                float(r["accuracy"]),
                float(r["chance_accuracy"]),
                int(version),
                _now(),
            )
        )
    return rows


REPORTERS_SCHEMA = (
    "reporter_row_id string, reporter string, modality string, method string, "
    "confusion map<string, map<string, double>>, reports int, accuracy double, chance_accuracy double, "
    "annotations_version long, computed_at timestamp"
)


def truth_by_image(spark: SparkSession, images: DataFrame, truth: Mapping[str, str]) -> DataFrame:
    """A known truth (``collection/path`` -> label, as a synthetic crowd's manifest or a gold-standard
    set gives it) keyed by ``image_id`` through the images' ``source_key``."""
    rows = []
    for key, label in truth.items():
        collection, _, path = key.partition("/")
        rows.append((path_key(collection, path), label))
    frame = spark.createDataFrame(rows, "source_key string, truth string")
    return images.select("image_id", "source_key").join(frame, "source_key").select("image_id", "truth")


def build_consensus(
    spark: SparkSession, settings: Settings, truth: Mapping[str, str] | None = None
) -> ConsensusSummary:
    """Compute and write the consensus of the latest ``annotations`` version (the consensus job).

    Args:
        spark: the session.
        settings: lakehouse and ``consensus`` settings.
        truth: optional known labels (``collection/path`` -> label) to score each method against.

    Returns:
        The run's summary (methods' label counts, iterations, accuracy against ``truth``).
    """
    lake, options = settings.lakehouse, settings.consensus
    summary = ConsensusSummary()
    annotations_path = lake.table("annotations")
    if not table_exists(spark, annotations_path):
        print("consensus: no annotations table yet (run oncolake ingest and oncolake reports first)")
        return summary
    version = current_version(spark, annotations_path)
    summary.annotations_version = version
    consensus_path, reporters_path = lake.table("consensus"), lake.table("reporters")
    if table_exists(spark, consensus_path):
        done = (
            read_table(spark, consensus_path).where(F.col("annotations_version") == version).limit(1).count()
        )
        if done:
            summary.skipped = True
            return summary
    annotations = read_table(spark, annotations_path, version)
    if "report_id" not in annotations.columns:
        print("consensus: no expert reports in annotations (run oncolake reports first)")
        return summary
    expert = annotations.where(F.col("source") == SOURCE)
    reports = expert.select("report_id", "image_id", "reporter", "label", "reported_at").distinct()
    latest = materialise(latest_reports(reports))
    images = known_images(spark, settings)
    if images is None:
        return summary
    modalities = images.select("image_id", "modality", "height", "width", "source_key")
    with_modality = materialise(latest.join(modalities.select("image_id", "modality"), "image_id"))
    summary.reports = with_modality.count()
    summary.readers = with_modality.select("reporter").distinct().count()
    truth_frame = truth_by_image(spark, modalities, truth) if truth else None

    marks = (
        expert.where(F.col("geometry").isNotNull())
        .join(latest.select("report_id"), "report_id")
        .join(modalities.select("image_id", "height", "width"), "image_id")
        .select("image_id", "reporter", "label", "geometry_kind", "geometry", "height", "width")
    )
    findings = materialise(consensus_findings(marks, options.mark_iou))

    metadata = {"job": "consensus", "config": settings.public_dict(), "annotations_version": version}
    written: list[DataFrame] = []
    reporter_tuples: list[tuple] = []
    for modality, classes in CLASSES.items():
        rows = with_modality.where(F.col("modality") == modality).select("image_id", "reporter", "label")
        if rows.limit(1).count() == 0:
            continue
        for method in options.methods:
            figures = MethodFigures()
            if method == "dawid_skene":
                fitted = dawid_skene(rows, classes, options.max_iterations, options.tolerance)
                posteriors = fitted.posteriors
                figures.iterations, figures.converged = fitted.iterations, fitted.converged
                reporter_tuples += reporter_rows(fitted, modality, version)
                summary.priors[modality] = dict(fitted.priors)
                summary.reader_rows += [
                    {**{str(k): v for k, v in r.items()}, "modality": modality}
                    for r in fitted.readers().drop(columns=["confusion"]).to_dict("records")
                ]
            else:
                posteriors = majority_vote(rows, classes)
            decided = materialise(_decide(posteriors, classes))
            figures.labels = {r["label"]: int(r["count"]) for r in decided.groupBy("label").count().collect()}
            figures.images = sum(figures.labels.values())
            if truth_frame is not None:
                scored = (
                    decided.join(truth_frame, "image_id")
                    .agg(
                        F.count("*").alias("n"),
                        F.avg((F.col("label") == F.col("truth")).cast("double")).alias("acc"),
                    )
                    .first()
                )
                if scored is not None and scored["n"]:
                    figures.accuracy, figures.truth_images = float(scored["acc"]), int(scored["n"])
            summary.methods.setdefault(modality, {})[method] = figures
            written.append(consensus_rows(decided, rows, classes, method, modality, version))

    if not written:
        return summary
    table = (
        reduce(DataFrame.unionByName, written)
        .join(findings, "image_id", "left")
        .select(
            "consensus_id",
            "image_id",
            "modality",
            "label",
            "probabilities",
            "reports",
            "agreement",
            "method",
            "findings",
            "annotations_version",
            "computed_at",
        )
    )
    # Reporters first: consensus is the commit marker (a run killed in between re-runs whole, and the
    # reporters' rows MERGE as already present).
    if reporter_tuples:
        merge_into(
            spark,
            spark.createDataFrame(reporter_tuples, REPORTERS_SCHEMA),
            reporters_path,
            ["reporter_row_id"],
            metadata,
        )
    merge_into(spark, table, consensus_path, ["consensus_id"], metadata)
    return summary


def known_readers(readers: list[dict[str, Any]], secret: bytes) -> dict[str, dict[str, Any]]:
    """A known crowd (a synthetic crowd's manifest: ``reader``, ``kind``, ``confusion`` per modality)
    keyed by the readers' pseudonyms, so the report can set true figures beside estimated ones without
    naming anyone."""
    from pipelines.pseudonym import pseudonymise
    from pipelines.reports import REPORTER_NAMESPACE

    return {pseudonymise(secret, REPORTER_NAMESPACE, str(r["reader"])): r for r in readers if "reader" in r}


def write_report(summary: ConsensusSummary, folder: Path, known: Mapping[str, dict[str, Any]]) -> Path:
    """``report.md`` of a consensus run under ``folder``: each method's labels and accuracy per modality,
    and per reader the reports, the estimated accuracy beside chance (and, for a known crowd, the kind
    and true accuracy under the estimated priors)."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# Consensus of annotations version {summary.annotations_version}",
        "",
        f"{summary.reports} latest reports by {summary.readers} readers.",
        "",
        "| modality | method | images | labels | iterations | accuracy against the truth |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for modality, methods in sorted(summary.methods.items()):
        for method, f in methods.items():
            labels = ", ".join(f"{k} {v}" for k, v in sorted(f.labels.items()))
            accuracy = "" if f.accuracy is None else f"{f.accuracy:.3f} ({f.truth_images} images)"
            iterations = "" if f.iterations is None else str(f.iterations)
            lines.append(f"| {modality} | {method} | {f.images} | {labels} | {iterations} | {accuracy} |")
    lines += [
        "",
        "Readers (Dawid-Skene's estimates; pseudonyms only):",
        "",
        "| modality | reader | reports | estimated accuracy | chance accuracy | kind | true accuracy |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in sorted(summary.reader_rows, key=lambda r: (r["modality"], r["reader"])):
        kind, true = "", ""
        reader = known.get(row["reader"])
        if reader is not None:
            kind = str(reader.get("kind", ""))
            matrix = (reader.get("confusion") or {}).get(row["modality"])
            priors = summary.priors.get(row["modality"], {})
            if matrix and priors:
                true = f"{float(np.sum([priors[c] * matrix[c][c] for c in priors])):.3f}"
        lines.append(
            f"| {row['modality']} | {row['reader'][:10]}… | {row['reports']} | {row['accuracy']:.3f} | "
            f"{row['chance_accuracy']:.3f} | {kind} | {true} |"
        )
    path = folder / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
