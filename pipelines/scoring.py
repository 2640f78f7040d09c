"""Bulk scoring: tiles through a registered model's Spark UDF, aggregated to image predictions.

DataFrame in, DataFrame out; :func:`model.scoring.score_images` resolves the model version and writes
the result. What is applied travels as a :class:`ScoringModel` of plain values read from the version: its
tile -> image rule (a :class:`core.aggregation.AggregationRule`, the one evaluation reports figures with)
and its decision threshold. Nothing here imports ``model/``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from core.aggregation import AggregationRule
from core.ids import stable_id
from core.quiet import quiet

PREDICTION_SCHEMA = T.StructType(
    [
        T.StructField("prediction_id", T.StringType(), False),
        T.StructField("image_id", T.StringType(), False),
        T.StructField("collection", T.StringType(), False),
        T.StructField("modality", T.StringType(), False),
        T.StructField("model", T.StringType(), False),
        T.StructField("version", T.StringType(), False),
        T.StructField("alias", T.StringType(), True),
        T.StructField("probabilities", T.MapType(T.StringType(), T.DoubleType()), False),
        T.StructField("positive_class", T.StringType(), False),
        T.StructField("p_positive", T.DoubleType(), False),
        T.StructField("predicted_label", T.StringType(), False),
        T.StructField("threshold", T.DoubleType(), False),
        T.StructField("tiles", T.IntegerType(), False),
        T.StructField("scored_at", T.TimestampType(), False),
    ]
)


@dataclass(frozen=True)
class ScoringModel:
    """The model version being applied, as plain values (shipped to the executors).

    ``threshold`` and ``aggregation`` are the ones recorded on the version (:mod:`model.registry`), never
    a default: a version without them is not scored.
    """

    name: str
    version: str
    alias: str | None
    classes: tuple[str, ...]
    positive: str
    threshold: float
    aggregation: AggregationRule


def prediction_id(image_id: str, model: str, version: str) -> str:
    """The predictions table's key: one row per image and model version."""
    return stable_id(image_id, model, version)


def image_sources(
    tables: list[tuple[DataFrame, DataFrame]], splits: list[str] | None = None
) -> tuple[DataFrame, DataFrame] | None:
    """The images to consider and their tiles, over the collections' tables and the landing tables.

    Args:
        tables: (images, tiles) pairs: ``images``/``tiles`` and ``landing_images``/``landing_tiles``.
        splits: keep only the collections' images of these splits; landed images (no split) always stay.

    Returns:
        ``image_id, modality`` of every image with tiles, and ``image_id, collection, modality, pixels``
        of all the tiles (the caller keeps those of the images it scores: a semi-join here would be a
        second pass over the tiles' bytes); ``None`` when there are no tables yet.
    """
    pairs = []
    for images, tiles in tables:
        if splits:
            images = images.where(F.col("split").isin(splits) | F.col("split").isNull())
        # The grid only: lesion-centred patches are training rows (an image's score must not depend on them).
        tiles = tiles.where(F.col("label_source") != "lesion_patch").select(
            "image_id", "collection", "modality", "pixels"
        )
        images = images.select("image_id", "modality").join(tiles.select("image_id").distinct(), "image_id")
        pairs.append((images, tiles))
    if not pairs:
        return None
    images, tiles = pairs[0]
    for more_images, more_tiles in pairs[1:]:
        images, tiles = images.unionByName(more_images), tiles.unionByName(more_tiles)
    return images, tiles


def of_modality(images: DataFrame, modality: str) -> DataFrame:
    """The images a task of ``modality`` scores (``any``: all of them)."""
    return images if modality == "any" else images.where(F.col("modality") == modality)


def scored_by(predictions: DataFrame, model: ScoringModel) -> DataFrame:
    """The rows of the predictions table written by this model version."""
    return predictions.where((F.col("model") == model.name) & (F.col("version") == model.version))


def unscored(images: DataFrame, predictions: DataFrame | None, model: ScoringModel) -> DataFrame:
    """Images that this model version has not scored yet (re-runs score nothing twice).

    Args:
        images: rows with ``image_id`` (the images to consider).
        predictions: the predictions table, or ``None`` before the first run.
        model: the version being applied; another version of the same model scores everything again.

    Returns:
        The images still to score.
    """
    if predictions is None:
        return images
    return images.join(scored_by(predictions, model).select("image_id"), "image_id", "left_anti")


IMAGES_PER_TASK = 1000


def task_count(cores: int, images: int) -> int:
    """How many tasks to spread a scoring run's tiles over: one per core, more only past
    :data:`IMAGES_PER_TASK` images each. Each task costs a Python worker round trip (about 0.2 s
    measured by benchmarks/score.py: 2 tasks scored 645 tiles at 129 tiles/s, 8 tasks at 99), while a
    large task streams its tiles in Arrow batches and holds no more in memory than a small one.
    """
    return max(cores, -(-images // IMAGES_PER_TASK))


def score_tiles(
    tiles: DataFrame, udf: Callable[[Column], Column], model: ScoringModel, partitions: int
) -> DataFrame:
    """Executors: every tile through the model's UDF (a ``pixels`` struct in, ``p_<class>`` out).

    Args:
        tiles: rows of the tiles table (``image_id``, ``collection``, ``modality``, ``pixels``).
        udf: the model as a Spark UDF, built once by the caller.
        model: the version being applied.
        partitions: tasks to spread the tiles over (:func:`task_count`). The table's files differ in
            size, and one task per file leaves cores idle while the largest finishes (13% of the time on
            the benchmark's table); a round-robin repartition costs one shuffle of the tiles' bytes,
            small beside inference.

    Returns:
        ``image_id``, ``collection``, ``modality`` and one ``p_<class>`` column per class.
    """
    keys = ["image_id", "collection", "modality"]
    probabilities = [F.col(f"p.p_{c}").alias(f"p_{c}") for c in model.classes]
    spread = tiles.select(*keys, "pixels").repartition(partitions)
    return spread.select(*keys, udf(F.struct("pixels")).alias("p")).select(*keys, *probabilities)


def image_predictions(tile_scores: DataFrame, model: ScoringModel) -> DataFrame:
    """Executors: tile scores aggregated per image by the version's rule, thresholded into the
    predictions table's rows.

    Args:
        tile_scores: :func:`score_tiles` output.
        model: the version being applied (aggregation rule, threshold, classes, positive class).

    Returns:
        Rows of :data:`PREDICTION_SCHEMA`.
    """
    columns = PREDICTION_SCHEMA.fieldNames()

    def aggregate_image(frame: pd.DataFrame) -> pd.DataFrame:  # in Spark's Python workers
        quiet()
        row = model.aggregation.images(frame, model.classes, model.positive).iloc[0]
        probabilities = {c: float(row[f"p_{c}"]) for c in model.classes}
        p_positive = probabilities[model.positive]
        others = {c: p for c, p in probabilities.items() if c != model.positive}
        negative = max(others, key=others.__getitem__)  # the likeliest other class (binary: the other one)
        image_id = str(row["image_id"])
        out = {
            "prediction_id": prediction_id(image_id, model.name, model.version),
            "image_id": image_id,
            "collection": frame["collection"].iloc[0],
            "modality": frame["modality"].iloc[0],
            "model": model.name,
            "version": model.version,
            "alias": model.alias,
            "probabilities": probabilities,
            "positive_class": model.positive,
            "p_positive": p_positive,
            "predicted_label": model.positive if p_positive >= model.threshold else negative,
            "threshold": model.threshold,
            "tiles": int(row["n"]),
            "scored_at": datetime.now(UTC),
        }
        return pd.DataFrame([out], columns=columns)

    return tile_scores.groupBy("image_id").applyInPandas(aggregate_image, PREDICTION_SCHEMA)


def label_counts(predictions: DataFrame) -> list[dict]:
    """Counts per collection and predicted label, for the job's summary table."""
    keys = ("collection", "predicted_label")
    return [row.asDict() for row in predictions.groupBy(*keys).count().orderBy(*keys).collect()]
