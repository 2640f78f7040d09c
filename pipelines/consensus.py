"""Consensus labels from many readers: majority vote and Dawid–Skene, in Spark.

Dawid & Skene (1979): EM over one confusion matrix per reader and the class priors. The images' side,
which grows with the reports, stays distributed; the readers' side (a K x K matrix per reader: thousands
of numbers where a crowd has thousands of readers) is collected each iteration, as a model's parameters
are. An iteration is three Spark jobs, each a broadcast join and one aggregation:

1. E-step: every report joins its reader's log confusion row (broadcast); a sum per image and class plus
   the log prior, normalised in logs (shifted by each image's maximum) -> the posteriors, one row per
   image with a column ``p_<class>`` per class, checkpointed so later iterations' plans stay short;
2. the class priors (the mean posterior) and the posteriors' entropy, one aggregation;
3. M-step: every report joins its image's posterior; a sum per (reader, label said) -> the expected
   counts, collected; clipped at 1e-10 and normalised per (reader, true class) on the driver.

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
        ``(image_id, reporter, label)``, one row per reader and image.
    """
    order = [F.col("reported_at").desc_nulls_last()]
    if "report_id" in reports.columns:
        order.append(F.col("report_id").desc())
    latest = Window.partitionBy("image_id", "reporter").orderBy(*order)
    return (
        reports.withColumn("_rank", F.row_number().over(latest))
        .where("_rank = 1")
        .select("image_id", "reporter", "label")
    )


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


def _materialise(frame: DataFrame) -> DataFrame:
    """Cut the frame's lineage: a reliable checkpoint where the session has a checkpoint directory (a
    cluster: survives a lost executor), else a local one."""
    if frame.sparkSession.sparkContext.getCheckpointDir():
        return frame.checkpoint()
    return frame.localCheckpoint()


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


def _priors_and_entropy(posteriors: DataFrame, classes: Sequence[str]) -> tuple[dict[str, float], float]:
    """Step 2: the mean posterior per class and the entropy of the (clipped) posteriors, one pass."""
    clipped = [F.greatest(F.col(posterior_column(k)), F.lit(EPS)) for k in classes]
    row = posteriors.agg(
        *(F.avg(posterior_column(k)).alias(k) for k in classes),
        sum((F.sum(-c * F.log(c)) for c in clipped[1:]), F.sum(-clipped[0] * F.log(clipped[0]))).alias("_h"),
    ).first()
    if row is None:  # an aggregation without grouping always returns one row
        raise RuntimeError("the posteriors' aggregation returned no row")
    return {k: float(row[k]) for k in classes}, float(row["_h"])


def expected_counts(
    reports: DataFrame, posteriors: DataFrame, classes: Sequence[str]
) -> dict[str, np.ndarray]:
    """Step 3's Spark part: per reader, the K x K expected counts (true class x label said)."""
    rows = (
        reports.join(posteriors, "image_id")
        .groupBy("reporter", "label")
        .agg(*(F.sum(posterior_column(k)).alias(k) for k in classes))
        .collect()
    )
    index = {k: j for j, k in enumerate(classes)}
    counts: dict[str, np.ndarray] = {}
    for row in rows:
        if row["label"] not in index:
            raise ValueError(f"a report says {row['label']!r}, not one of {list(classes)}")
        matrix = counts.setdefault(row["reporter"], np.zeros((len(classes), len(classes))))
        matrix[:, index[row["label"]]] = [row[k] for k in classes]
    return counts


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
    reports = _materialise(reports.select("image_id", "reporter", "label"))
    per_reader = {
        r["reporter"]: int(r["n"]) for r in reports.groupBy("reporter").agg(F.count("*").alias("n")).collect()
    }
    n_reports = sum(per_reader.values())
    posteriors = _materialise(majority_vote(reports, classes))
    priors, _ = _priors_and_entropy(posteriors, classes)
    errors = m_step(expected_counts(reports, posteriors, classes))
    elbo: list[float] = []
    previous, converged, iterations = -math.inf, False, 0
    for _ in range(max_iterations):
        iterations += 1
        stale = posteriors
        posteriors = _materialise(e_step(reports, errors, priors, classes))
        stale.unpersist()
        priors, entropy = _priors_and_entropy(posteriors, classes)
        counts = expected_counts(reports, posteriors, classes)
        errors = m_step(counts)
        elbo.append((_joint(counts, errors, priors, classes) + entropy) / max(n_reports, 1))
        if elbo[-1] - previous < tolerance:
            converged = True
            break
        previous = elbo[-1]
    return DawidSkeneResult(classes, posteriors, errors, priors, per_reader, iterations, converged, elbo)
