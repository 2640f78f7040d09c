"""Consensus labels from many readers: majority vote and Dawid–Skene, in Spark.

Dawid & Skene (1979): EM over one confusion matrix per reader and the class priors. The images' side,
which grows with the reports, stays distributed; the readers' side (a K x K matrix per reader: thousands
of numbers where a crowd has thousands of readers) is collected each iteration, as a model's parameters
are. An iteration is one Spark job:

1. E-step: every report joins its reader's log confusion row (broadcast); a sum per image and class plus
   the log prior, normalised in logs (shifted by each image's maximum) -> the posteriors, one row per
   image with a column ``p_<class>`` per class;
2. in the same job, every report joins its image's posterior and the posteriors are aggregated beside
   them: a sum per (reader, label said) -> the expected counts, and over images -> the class priors
   (the mean posterior) and the posteriors' entropy, collected (:func:`expected_statistics`);
3. M-step on the driver: the counts clipped at 1e-10 and normalised per (reader, true class).

The reports are checkpointed once; an iteration's plan reads only them and the parameters the driver
holds (not the previous iteration's posteriors), so plans stay the same length however many iterations
run, and nothing else needs a checkpoint. The last E-step's posteriors are materialised at the end.

The steps, initialisation (the majority vote's shares), clipping, stopping rule (the evidence lower
bound per report gains less than ``tolerance``, which the M-step's counts give without another pass) and
iteration limit are crowd-kit's ``DawidSkene``, which the tests run beside it on the same reports.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from pipelines.io import materialise

EPS = 1e-10
"""Probabilities are clipped from below at this value before any logarithm (as crowd-kit's ``_EPS``)."""


def posterior_column(label: str) -> str:
    """The posteriors' column of a class."""
    return f"p_{label}"


@dataclass
class DawidSkeneResult:
    """The fitted model.

    ``posteriors``: one row per image, ``image_id`` and ``p_<class>`` for every class (Spark).
    ``errors``: ``{reader: K x K array}``, row = true class, column = label said, in ``classes`` order
    (pandas-free, on the driver); a label the reader never said has probability 0.
    """

    classes: tuple[str, ...]
    posteriors: DataFrame
    errors: dict[str, np.ndarray]
    priors: dict[str, float]
    reports_per_reader: dict[str, int]
    iterations: int
    converged: bool
    elbo: list[float] = field(default_factory=list)
    """The evidence lower bound per report after each iteration (crowd-kit's ``loss_history_``)."""

    def readers(self) -> pd.DataFrame:
        """Per reader: ``reports``, ``accuracy`` and ``chance_accuracy``, and the confusion matrix as
        ``confusion`` = {true: {said: probability}}.

        ``accuracy`` = sum over classes k of prior(k) x P(says k | k); ``chance_accuracy`` is what the same
        answer shares would score if they ignored the image (sum over k of prior(k) x P(says k)): a
        spammer's two values meet, an expert's lie far apart.
        """
        prior = np.array([self.priors[k] for k in self.classes])
        rows = []
        for reader, matrix in sorted(self.errors.items()):
            said = prior @ matrix  # the reader's share of each answer
            rows.append(
                {
                    "reader": reader,
                    "reports": self.reports_per_reader.get(reader, 0),
                    "accuracy": float(prior @ np.diag(matrix)),
                    "chance_accuracy": float(prior @ said),
                    "confusion": {
                        t: {s: float(matrix[i, j]) for j, s in enumerate(self.classes)}
                        for i, t in enumerate(self.classes)
                    },
                }
            )
        return pd.DataFrame(rows, columns=["reader", "reports", "accuracy", "chance_accuracy", "confusion"])


def latest_reports(reports: DataFrame) -> DataFrame:
    """The latest report of each reader on each image: a reader who reports again is counted once.

    Args:
        reports: rows with ``image_id``, ``reporter``, ``label``, ``reported_at`` (and ``report_id``, which
            breaks ties of time deterministically).

    Returns:
        ``(image_id, reporter, label)`` (and ``report_id`` when given), one row per reader and image.
    """
    order = [F.col("reported_at").desc_nulls_last()]
    if "report_id" in reports.columns:
        order.append(F.col("report_id").desc())
    latest = Window.partitionBy("image_id", "reporter").orderBy(*order)
    kept = ["image_id", "reporter", "label", *(["report_id"] if "report_id" in reports.columns else [])]
    return reports.withColumn("_rank", F.row_number().over(latest)).where("_rank = 1").select(*kept)


def majority_vote(reports: DataFrame, classes: Sequence[str]) -> DataFrame:
    """Each image's share of reports per class (crowd-kit's ``MajorityVote`` probabilities).

    Args:
        reports: ``(image_id, reporter, label)``, labels among ``classes``.
        classes: the classes.

    Returns:
        ``image_id`` and ``p_<class>`` per class.
    """
    counts = [F.sum((F.col("label") == k).cast("double")).alias(k) for k in classes]
    shares = [(F.col(k) / F.col("_n")).alias(posterior_column(k)) for k in classes]
    return reports.groupBy("image_id").agg(F.count("*").alias("_n"), *counts).select("image_id", *shares)


def _log_rows(spark: SparkSession, errors: dict[str, np.ndarray], classes: Sequence[str]) -> DataFrame:
    """``(reporter, label, log_e_0 .. log_e_K-1)``: log P(says label | class k) of every label each reader
    said (the only ones the E-step looks up)."""
    rows = []
    for reader, matrix in errors.items():
        for j, said in enumerate(classes):
            column = matrix[:, j]
            if column.any():
                rows.append((reader, said, *(float(math.log(v)) for v in column)))  # > 0: clipped
    schema = "reporter string, label string, " + ", ".join(f"log_e_{i} double" for i in range(len(classes)))
    return spark.createDataFrame(rows, schema)


def _softmax(scores: list[Column], classes: Sequence[str]) -> list[Column]:
    top = F.greatest(*scores)
    weights = [F.exp(s - top) for s in scores]
    total = sum(weights[1:], weights[0])
    return [(w / total).alias(posterior_column(k)) for w, k in zip(weights, classes, strict=True)]


def e_step(
    reports: DataFrame, errors: dict[str, np.ndarray], priors: dict[str, float], classes: Sequence[str]
) -> DataFrame:
    """The posteriors from the readers' matrices and the priors (step 1 of the module docstring)."""
    logs = _log_rows(reports.sparkSession, errors, classes)
    sums = (
        reports.join(F.broadcast(logs), ["reporter", "label"])
        .groupBy("image_id")
        .agg(*(F.sum(f"log_e_{i}").alias(f"s_{i}") for i in range(len(classes))))
    )
    scores = [F.col(f"s_{i}") + F.lit(math.log(max(priors[k], EPS))) for i, k in enumerate(classes)]
    return sums.select("image_id", *_softmax(scores, classes))


def expected_statistics(
    reports: DataFrame, posteriors: DataFrame, classes: Sequence[str]
) -> tuple[dict[str, np.ndarray], dict[str, float], float]:
    """Steps 2 and 3's Spark part, in one job: per reader the K x K expected counts (true class x label
    said), the class priors (the mean posterior) and the posteriors' entropy (clipped at ``EPS``).

    The two aggregations share one pass: the reports joined to their image's posterior, and the
    posteriors themselves under a null reader, grouped by (reader, label said).
    """
    k = len(classes)
    columns = [posterior_column(c) for c in classes]
    clipped = [F.greatest(F.col(c), F.lit(EPS)) for c in columns]
    entropy = sum((-c * F.log(c) for c in clipped[1:]), -clipped[0] * F.log(clipped[0]))
    per_report = reports.join(posteriors, "image_id").select(
        "reporter", "label", *columns, F.lit(0.0).alias("_h"), F.lit(0).alias("_n")
    )
    per_image = posteriors.select(
        F.lit(None).cast("string").alias("reporter"),
        F.lit(None).cast("string").alias("label"),
        *columns,
        entropy.alias("_h"),
        F.lit(1).alias("_n"),
    )
    rows = (
        per_report.unionByName(per_image)
        .groupBy("reporter", "label")
        .agg(*(F.sum(c).alias(c) for c in columns), F.sum("_h").alias("_h"), F.sum("_n").alias("_n"))
        .collect()
    )
    index = {c: j for j, c in enumerate(classes)}
    counts: dict[str, np.ndarray] = {}
    priors, total_entropy = dict.fromkeys(classes, 0.0), 0.0
    for row in rows:
        if row["reporter"] is None:
            images = max(int(row["_n"]), 1)
            priors = {c: float(row[posterior_column(c)]) / images for c in classes}
            total_entropy = float(row["_h"])
            continue
        if row["label"] not in index:
            raise ValueError(f"a report says {row['label']!r}, not one of {list(classes)}")
        matrix = counts.setdefault(row["reporter"], np.zeros((k, k)))
        matrix[:, index[row["label"]]] = [row[c] for c in columns]
    return counts, priors, total_entropy


def m_step(counts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Step 3's driver part: counts of the labels a reader said clipped at ``EPS``, normalised per true
    class (labels never said stay 0, as crowd-kit leaves them out)."""
    errors = {}
    for reader, matrix in counts.items():
        said = matrix.any(axis=0)
        clipped = np.where(said, np.maximum(matrix, EPS), 0.0)
        errors[reader] = clipped / clipped.sum(axis=1, keepdims=True)
    return errors


def _joint(
    counts: dict[str, np.ndarray],
    errors: dict[str, np.ndarray],
    priors: dict[str, float],
    classes: Sequence[str],
) -> float:
    """Sum over reports and classes of posterior x (log P(said | class) + log prior), from the counts."""
    log_prior = np.log(np.maximum([priors[k] for k in classes], EPS))
    total = 0.0
    for reader, matrix in counts.items():
        said = matrix.any(axis=0)
        log_e = np.log(errors[reader][:, said])  # > 0: clipped
        total += float((matrix[:, said] * (log_e + log_prior[:, None])).sum())
    return total


def dawid_skene(
    reports: DataFrame,
    classes: Sequence[str],
    max_iterations: int = 100,
    tolerance: float = 1e-5,
) -> DawidSkeneResult:
    """Fit Dawid–Skene by EM (module docstring) and return the last E-step's posteriors.

    Args:
        reports: ``(image_id, reporter, label)``, one row per reader and image, labels among ``classes``.
        classes: the label set (every image gets a posterior for each).
        max_iterations: EM iterations at most (crowd-kit's ``n_iter``).
        tolerance: stop when the evidence lower bound per report gains less than this.

    Returns:
        The posteriors, confusion matrices and priors, with the number of iterations run.
    """
    classes = tuple(classes)
    reports = materialise(reports.select("image_id", "reporter", "label"))
    per_reader = {
        r["reporter"]: int(r["n"]) for r in reports.groupBy("reporter").agg(F.count("*").alias("n")).collect()
    }
    n_reports = sum(per_reader.values())
    counts, priors, _ = expected_statistics(reports, majority_vote(reports, classes), classes)
    errors = m_step(counts)
    elbo: list[float] = []
    previous, converged, iterations = -math.inf, False, 0
    used = (errors, priors)
    for _ in range(max_iterations):
        iterations += 1
        used = (errors, priors)
        posteriors = e_step(reports, errors, priors, classes)
        counts, priors, entropy = expected_statistics(reports, posteriors, classes)
        errors = m_step(counts)
        elbo.append((_joint(counts, errors, priors, classes) + entropy) / max(n_reports, 1))
        if elbo[-1] - previous < tolerance:
            converged = True
            break
        previous = elbo[-1]
    # The posteriors of the last E-step (crowd-kit's ``probas_``), materialised once.
    posteriors = materialise(e_step(reports, *used, classes))
    return DawidSkeneResult(classes, posteriors, errors, priors, per_reader, iterations, converged, elbo)


# --- Lesion marks of many readers -> consensus findings ---------------------------------------------------


def _rasterise(kind: str, geometry: str, height: int, width: int) -> np.ndarray | None:
    """A circle or outline geometry (normalised pixels, JSON) as a boolean mask of the image."""
    import json

    from PIL import Image, ImageDraw

    data = json.loads(geometry)
    canvas = Image.new("1", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    if kind == "circle" and data.get("radius"):
        x, y, r = data["x"], data["y"], data["radius"]
        draw.ellipse([x - r, y - r, x + r, y + r], fill=1)
    elif kind == "outline" and len(data.get("points") or []) >= 3:
        draw.polygon([tuple(p) for p in data["points"]], fill=1)
    else:
        return None
    mask = np.asarray(canvas, dtype=bool)
    return mask if mask.any() else None


def merge_marks(
    marks: Sequence[tuple[str, str, str, str]], height: int, width: int, iou: float
) -> list[dict[str, object]]:
    """Readers' marks on one image merged into findings: marks overlapping with IoU >= ``iou`` (directly or
    through a chain of such marks) are one finding.

    Args:
        marks: ``(reporter, label, geometry_kind, geometry)`` per mark, in normalised pixels.
        height, width: the normalised image's size.
        iou: the overlap that makes two marks one lesion.

    Returns:
        Per finding: ``label`` (the most said, the more severe on a tie), ``geometry_kind`` ``mask``,
        ``mask_png`` (pixels inside at least half of the finding's marks), ``marks`` and ``readers``
        (distinct reporters), largest first.
    """
    from core.codec import encode_png

    severity = {"normal": 0, "benign": 1, "malignant": 2}
    drawn = [(m, _rasterise(m[2], m[3], height, width)) for m in marks]
    kept = [(m, mask) for m, mask in drawn if mask is not None]
    parent = list(range(len(kept)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(kept)):
        for j in range(i + 1, len(kept)):
            a, b = kept[i][1], kept[j][1]
            inter = np.logical_and(a, b).sum()
            if inter and inter / np.logical_or(a, b).sum() >= iou:
                parent[find(i)] = find(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(kept)):
        groups.setdefault(find(i), []).append(i)
    findings: list[dict[str, object]] = []
    for members in groups.values():
        stack = np.stack([kept[i][1] for i in members])
        votes = stack.sum(axis=0)
        region = votes >= max(1, -(-len(members) // 2))
        labels = [kept[i][0][1] for i in members]
        label = max(set(labels), key=lambda k: (labels.count(k), severity.get(k, 0)))
        findings.append(
            {
                "label": label,
                "geometry_kind": "mask",
                "geometry": '{"kind": "mask"}',
                "mask_png": encode_png(region.astype(np.uint8) * 255),
                "marks": len(members),
                "readers": len({kept[i][0][0] for i in members}),
            }
        )
    findings.sort(key=lambda f: (-int(f["marks"]), -int(f["readers"])))  # type: ignore[call-overload]
    return findings
