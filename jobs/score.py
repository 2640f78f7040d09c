"""Score images in bulk with the registered models as Spark UDFs, incrementally, into ``predictions``.

    oncolake score [--task NAME ...] [--alias champion | --version N] [--split test ...]
                   [--landing DIR [--modality mammography|histology]] [--dry-run] [--summary-json FILE]
                   [--config NAME|FILE] [--set k=v ...]
    spark-submit --py-files dist/oncolake-0.1.0.zip jobs/score.py --config cluster --landing /mnt/landing

``--landing DIR`` first lands the folder's new images (``oncolake land``: decoded, normalised and tiled
with no label; corrupt files quarantined). Then, for each task (``train.tasks``), the version holding
``--alias`` (default ``champion``) of ``<train.model_prefix><task>`` becomes a Spark UDF
(:func:`model.udf.tile_udf`, the model loaded once per Python worker); the tiles of every image of the
task's modality (the collections' images, limited to ``--split`` when given, and every landed image)
that this model version has not scored yet go through it, are aggregated to one probability per image
(the rule evaluation uses), and are thresholded with the version's recorded threshold. Rows are MERGEd
into the ``predictions`` Delta table keyed by image and model version: a re-run adds nothing, a new
champion scores everything again under its own version, images ingested or landed since the last run
are picked up. ``--dry-run`` only counts. Schedule it with ``deploy/cron/oncolake-score`` or
``deploy/airflow/oncolake_score.py``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from jobs import land
from jobs.options import job_parser, settings_from
from jobs.session import build_spark
from core.tasks import TASKS
from model.tracking import CHAMPION, use_tracking
from model.udf import tile_udf
from pipelines import scoring
from pipelines.io import merge_into, read_table, table_exists
from pipelines.pseudonym import SecretMissing, resolve_secret
from pipelines.sources import landing


def build_parser() -> argparse.ArgumentParser:
    """The job's options (also what tests check the shipped schedules against)."""
    parser = job_parser("oncolake score", __doc__)
    parser.add_argument("--task", action="append", choices=sorted(TASKS), help="score only these tasks")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--alias", default=CHAMPION, help="use the version holding this alias")
    which.add_argument("--version", help="use this version number")
    parser.add_argument(
        "--split", action="append", choices=["train", "val", "test"], help="score only these splits"
    )
    parser.add_argument("--landing", type=Path, metavar="DIR", help="land this folder's new images first")
    parser.add_argument("--modality", choices=landing.MODALITIES, help="landed images' default modality")
    parser.add_argument("--dry-run", action="store_true", help="count the images that would be scored")
    parser.add_argument("--summary-json", type=Path, help="write the run's summary as JSON here")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = settings_from(args)
    if args.landing is not None and not args.landing.is_dir():
        parser.exit(2, f"oncolake score: --landing {args.landing} is not a folder\n")
    spark = build_spark(settings, "score")
    lake = settings.lakehouse
    summary = {"scored": 0, "already_scored": 0, "quarantined": 0, "labels": {}}
    if args.landing is not None and not args.dry_run:
        try:
            secret, _ = resolve_secret(settings.privacy)
        except SecretMissing as exc:
            parser.exit(2, f"oncolake score: {exc}\n")
        landed = land.run(spark, settings, args.landing, args.modality, secret)
        summary["quarantined"] = landed.quarantined
        print(
            f"score: landed {args.landing}: {landed.ingested} new, {landed.already_present} already landed, "
            f"{landed.quarantined} quarantined"
        )
    elif args.landing is not None:  # a dry run lands nothing: say what the folder holds
        found = landing.scan(args.landing, args.modality)
        print(
            f"score: {args.landing} holds {len(found.records)} images (landed or not) to land before scoring"
        )
    sources = scoring.image_sources(
        [
            (read_table(spark, lake.table(i)), read_table(spark, lake.table(t)))
            for i, t in (("images", "tiles"), ("landing_images", "landing_tiles"))
            if table_exists(spark, lake.table(t))
        ],
        args.split,
    )
    if sources is None:
        parser.exit(2, "oncolake score: nothing to score yet: run 'oncolake ingest' and 'oncolake tile'\n")
    images, tiles = sources
    use_tracking(settings)
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    path = lake.table("predictions")
    counts: list[dict] = []
    for task_name in args.task or settings.train.tasks:
        task, name = TASKS[task_name], f"{settings.train.model_prefix}{task_name}"
        try:
            registered = (
                client.get_model_version(name, args.version)
                if args.version
                else client.get_model_version_by_alias(name, args.alias)
            )
        except MlflowException:
            print(f"score: {name} has no version {args.version or repr(args.alias)}: skipped")
            continue
        model = scoring.ScoringModel(
            name,
            str(registered.version),
            None if args.version else args.alias,
            task.classes,
            task.positive,
            float(registered.tags.get("threshold", 0.5)),
        )
        predictions = read_table(spark, path) if table_exists(spark, path) else None
        candidates = images.where(images["modality"] == task.modality) if task.modality != "any" else images
        candidates = candidates.select("image_id")
        # Checkpointed, not cached: the MERGE below invalidates cached plans that read ``predictions``,
        # and recomputing this one after it would find nothing left to score.
        todo = scoring.unscored(candidates, predictions, model).localCheckpoint()
        total, pending = candidates.count(), todo.count()
        summary["already_scored"] += total - pending
        print(f"score: {name} v{model.version}: {pending} images to score, {total - pending} already scored")
        if args.dry_run or pending == 0:
            continue
        udf = tile_udf(spark, f"models:/{name}/{model.version}", model.classes)
        partitions = scoring.task_count(spark.sparkContext.defaultParallelism, pending)
        scored = scoring.score_tiles(tiles.join(todo, "image_id", "left_semi"), udf, model, partitions)
        metadata = {"job": "score", "model": name, "version": model.version, "config": settings.public_dict()}
        merge_into(spark, scoring.image_predictions(scored, model), path, ["prediction_id"], metadata)
        mine = read_table(spark, path).where(f"model = '{name}' AND version = '{model.version}'")
        for row in scoring.label_counts(mine.join(todo, "image_id", "left_semi")):  # this run's
            counts.append({"model": name, **row})
            key = row["predicted_label"]
            summary["labels"][key] = summary["labels"].get(key, 0) + row["count"]
        summary["scored"] += pending
    if counts:
        print(f"{'model':40}{'collection':>12}{'predicted':>12}{'images':>9}")
        for row in counts:
            print(f"{row['model']:40}{row['collection']:>12}{row['predicted_label']:>12}{row['count']:>9}")
    if args.summary_json:
        args.summary_json.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
