"""Score images in bulk with registered model versions, incrementally, into the ``predictions`` table.

:func:`score_images` is what ``oncolake score`` runs. With a landing folder it first lands the folder's
new images (:func:`pipelines.land.land_folder`: decoded, normalised and tiled with no label; corrupt
files quarantined). Then, for each task, the version holding the alias (or the version number asked for)
of ``<train.model_prefix><task>`` is found through :mod:`model.registry`, with the decision threshold and
tile -> image aggregation rule recorded on it: a version lacking either is reported and skipped, never
scored with a default. That version becomes a Spark UDF (:func:`model.udf.tile_udf`, loaded once per
Python worker); the tiles of every image of the task's modality (the collections' images, limited to
``splits`` when given, and every landed image) that it has not scored yet go through it, are aggregated
to one probability per image and thresholded (:mod:`pipelines.scoring`). Rows are MERGEd into
``predictions`` keyed by image and model version: a re-run adds nothing, a new champion scores
everything again under its own version, images ingested or landed since the last run are picked up. A
dry run lands nothing and only counts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from conf import Settings
from core.tasks import TASKS
from model.registry import (
    CHAMPION,
    VersionIncomplete,
    VersionNotFound,
    aggregation,
    find_version,
    model_name,
    threshold,
)
from model.tracking import use_tracking
from model.udf import tile_udf
from pipelines import scoring
from pipelines.io import merge_into, read_table, table_exists
from pipelines.land import land_folder
from pipelines.pseudonym import SecretMissing, resolve_secret
from pipelines.sources import landing as landing_source

Echo = Callable[[str], None]


class ScoringRefused(RuntimeError):
    """Scoring cannot start (nothing ingested yet, no pseudonym secret to land with): the message says why."""


@dataclass
class ScoreSummary:
    """What a scoring run did: the job prints :meth:`table` and writes :meth:`as_dict` as its summary."""

    scored: int = 0
    already_scored: int = 0
    quarantined: int = 0
    labels: dict[str, int] = field(default_factory=dict)
    counts: list[dict[str, Any]] = field(default_factory=list)
    """This run's predictions per model, collection and predicted label."""
    skipped: list[str] = field(default_factory=list)
    """Why a task was not scored (no such version, or a version lacking its threshold or rule)."""

    def as_dict(self) -> dict[str, Any]:
        """The summary JSON: images scored, already scored, quarantined, predicted labels' counts, and why
        each task that scored nothing did not (no champion, an incomplete version)."""
        return {
            "scored": self.scored,
            "already_scored": self.already_scored,
            "quarantined": self.quarantined,
            "labels": dict(self.labels),
            "skipped": list(self.skipped),
        }

    def add_counts(self, name: str, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            self.counts.append({"model": name, **row})
            key = row["predicted_label"]
            self.labels[key] = self.labels.get(key, 0) + row["count"]

    def table(self) -> str:
        """This run's predictions as a text table (empty when nothing was scored)."""
        if not self.counts:
            return ""
        lines = [f"{'model':40}{'collection':>12}{'predicted':>12}{'images':>9}"]
        for row in self.counts:
            lines.append(
                f"{row['model']:40}{row['collection']:>12}{row['predicted_label']:>12}{row['count']:>9}"
            )
        return "\n".join(lines)


def score_images(
    spark: SparkSession,
    settings: Settings,
    tasks: Sequence[str],
    alias: str = CHAMPION,
    version: str | None = None,
    splits: Sequence[str] | None = None,
    landing: Path | str | None = None,
    modality: str | None = None,
    dry_run: bool = False,
    echo: Echo = print,
) -> ScoreSummary:
    """Land ``landing`` (when given), then score every task's unscored images with its model version.

    Args:
        tasks: task names (``train.tasks``).
        alias: use the version holding this alias (ignored when ``version`` is given).
        version: use this version number of every task's model.
        splits: score only the collections' images of these splits (landed images always count).
        landing: a folder of new images to land first (made absolute here, on the driver).
        modality: the landed images' modality where nothing else names it.
        dry_run: land and write nothing; count the images that would be scored.
        echo: where progress lines go.

    Raises:
        ScoringRefused: no tiles table yet, or a landing folder to land without a pseudonym secret.
    """
    summary = ScoreSummary()
    if landing is not None:
        summary.quarantined = _land(spark, settings, Path(landing).resolve(), modality, dry_run, echo)
    lake = settings.lakehouse
    pairs = [
        (read_table(spark, lake.table(i)), read_table(spark, lake.table(t)))
        for i, t in (("images", "tiles"), ("landing_images", "landing_tiles"))
        if table_exists(spark, lake.table(t))
    ]
    sources = scoring.image_sources(pairs, list(splits) if splits else None)
    if sources is None:
        raise ScoringRefused("nothing to score yet: run 'oncolake ingest' and 'oncolake tile'")
    use_tracking(settings)
    for task_name in tasks:
        try:
            model = scoring_model(settings, task_name, alias, version)
        except (VersionNotFound, VersionIncomplete) as exc:
            none_yet = isinstance(exc, VersionNotFound) and alias == CHAMPION and version is None
            why = no_champion(settings, task_name) if none_yet else str(exc)
            summary.skipped.append(why)
            echo(f"score: {why}: nothing scored for {task_name}")
            continue
        _score_task(spark, settings, model, TASKS[task_name].modality, sources, dry_run, summary, echo)
    return summary


def score_landed(
    spark: SparkSession,
    settings: Settings,
    tasks: Sequence[str],
    udfs: dict[tuple[str, str], Callable] | None = None,
    echo: Echo = print,
) -> ScoreSummary:
    """Score the landed images that the champion of each task has not scored yet (a stream's micro-batch).

    Only ``landing_images`` / ``landing_tiles`` are read, so a batch costs what it landed, not the
    collections. A task without a champion is skipped (its reason in ``skipped``); a new champion scores
    every landed image under its own version, the ones landed before it too.

    Args:
        udfs: ``(model, version) -> UDF`` kept by the caller across batches, so a long-running stream ships
            each version's model to the executors once.

    Returns:
        How many images were scored and the tasks skipped (no per-label counts: a micro-batch does not
        spend Spark jobs on them).
    """
    summary = ScoreSummary()
    lake = settings.lakehouse
    if not table_exists(spark, lake.table("landing_tiles")):
        return summary
    pair = (read_table(spark, lake.table("landing_images")), read_table(spark, lake.table("landing_tiles")))
    sources = scoring.image_sources([pair])
    if sources is None:
        return summary
    use_tracking(settings)
    for task_name in tasks:
        try:
            model = scoring_model(settings, task_name)
        except (VersionNotFound, VersionIncomplete) as exc:
            summary.skipped.append(str(exc))
            continue
        modality = TASKS[task_name].modality
        _score_task(spark, settings, model, modality, sources, False, summary, echo, udfs, counts=False)
    return summary


def no_champion(settings: Settings, task_name: str) -> str:
    """Why a task has no champion: no version yet, none evaluated yet, or the gate's reason for the latest."""
    from mlflow import MlflowClient

    name = model_name(settings, task_name)
    versions = MlflowClient().search_model_versions(f"name = '{name}'")
    if not versions:
        return f"task {task_name} has no champion: {name} has no registered version (run 'oncolake train')"
    latest = max(versions, key=lambda v: int(v.version))
    reason = latest.tags.get("promotion.reason")
    if not reason:
        return (
            f"task {task_name} has no champion: {name} v{latest.version} is not evaluated yet "
            "(run 'oncolake evaluate')"
        )
    return f"task {task_name} has no champion: the promotion gate refused {name} v{latest.version} ({reason})"


def scoring_model(
    settings: Settings, task_name: str, alias: str = CHAMPION, version: str | None = None
) -> scoring.ScoringModel:
    """The task's model version as :mod:`pipelines.scoring` applies it, with its recorded threshold and rule.

    Raises:
        VersionNotFound: the model has no such version or alias.
        VersionIncomplete: the version records no threshold or no aggregation rule.
    """
    task, name = TASKS[task_name], model_name(settings, task_name)
    registered = find_version(name, alias=None if version else alias, version=version)
    return scoring.ScoringModel(
        name,
        str(registered.version),
        None if version else alias,
        task.classes,
        task.positive,
        threshold(registered),
        aggregation(registered),
    )


def _land(
    spark: SparkSession, settings: Settings, root: Path, modality: str | None, dry_run: bool, echo: Echo
) -> int:
    """Land the folder (a dry run only says what it holds); returns how many files were quarantined."""
    if dry_run:
        found = landing_source.scan(root, modality)
        echo(f"score: {root} holds {len(found.records)} images (landed or not) to land before scoring")
        return 0
    try:
        secret, _ = resolve_secret(settings.privacy)
    except SecretMissing as exc:
        raise ScoringRefused(str(exc)) from None
    landed = land_folder(spark, settings, root, modality, secret)
    echo(
        f"score: landed {root}: {landed.ingested} new, {landed.already_present} already landed, "
        f"{landed.quarantined} quarantined"
    )
    return landed.quarantined


def _score_task(
    spark: SparkSession,
    settings: Settings,
    model: scoring.ScoringModel,
    modality: str,
    sources: tuple[DataFrame, DataFrame],
    dry_run: bool,
    summary: ScoreSummary,
    echo: Echo,
    udfs: dict[tuple[str, str], Callable] | None = None,
    counts: bool = True,
) -> None:
    """One model version over the images of its modality that it has not scored yet.

    Args:
        udfs: a cache of the versions' UDFs (see :func:`score_landed`); one is built per call without it.
        counts: also count the images scored before and this run's predictions per label (the score
            job's table); a stream's micro-batch skips those two Spark jobs per task.
    """
    images, tiles = sources
    path = settings.lakehouse.table("predictions")
    predictions = read_table(spark, path) if table_exists(spark, path) else None
    candidates = scoring.of_modality(images, modality).select("image_id")
    # The ids to score, held on the driver (ids only): not cached, since the MERGE below invalidates
    # cached plans that read ``predictions`` and recomputing this one after it would find nothing left to
    # score; not a local checkpoint either, whose blocks live on the executors and are lost with one.
    ids = [row["image_id"] for row in scoring.unscored(candidates, predictions, model).collect()]
    todo = spark.createDataFrame([(image_id,) for image_id in ids], "image_id string")
    pending = len(ids)
    if counts:
        done = candidates.count() - pending
        summary.already_scored += done
        echo(f"score: {model.name} v{model.version}: {pending} images to score, {done} already scored")
    if dry_run or pending == 0:
        return
    key = (model.name, model.version)
    udf = (udfs or {}).get(key) or tile_udf(spark, f"models:/{model.name}/{model.version}", model.classes)
    if udfs is not None:
        udfs[key] = udf
    partitions = scoring.task_count(spark.sparkContext.defaultParallelism, pending)
    scored = scoring.score_tiles(tiles.join(todo, "image_id", "left_semi"), udf, model, partitions)
    metadata = {
        "job": "score",
        "model": model.name,
        "version": model.version,
        "config": settings.public_dict(),
    }
    predicted = scoring.image_predictions(scored, model)
    merge_into(spark, predicted, path, ["prediction_id"], metadata, site=f"{model.name}-v{model.version}")
    if counts:
        this_run = scoring.scored_by(read_table(spark, path), model).join(todo, "image_id", "left_semi")
        summary.add_counts(model.name, scoring.label_counts(this_run))
    summary.scored += pending
