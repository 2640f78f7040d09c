"""Score images in bulk with the registered models as Spark UDFs, incrementally, into ``predictions``.

    oncolake score [--task NAME ...] [--alias champion | --version N] [--split test ...]
                   [--landing DIR [--modality mammography|histology]] [--dry-run] [--summary-json FILE]
                   [--config NAME|FILE] [--set k=v ...]
    spark-submit --py-files dist/oncolake-0.1.0.zip jobs/score.py --config cluster --landing /mnt/landing

Glue around :func:`model.scoring.score_images`: ``--landing DIR`` first lands the folder's new images
(as ``oncolake land`` does), then each task (``--task``, default ``train.tasks``) is scored with the
version holding ``--alias`` (default ``champion``) or numbered ``--version`` of
``<train.model_prefix><task>``, using the threshold and aggregation rule recorded on that version (a
version without them is skipped, with a message). Only images that version has not scored yet are
scored, MERGEd into the ``predictions`` Delta table keyed by image and model version, so a re-run adds
nothing. ``--dry-run`` only counts. Exit status 2 when there is nothing to score yet or a landing folder
cannot be landed. Schedule it with ``deploy/cron/oncolake-score`` or ``deploy/airflow/oncolake_score.py``;
drop folders that devices feed continuously are landed and scored by ``oncolake stream``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.tasks import TASKS
from jobs.options import job_parser, settings_from
from jobs.session import build_spark
from model.registry import CHAMPION
from model.scoring import ScoringRefused, score_images
from pipelines.sources.landing import MODALITIES


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
    parser.add_argument("--modality", choices=MODALITIES, help="landed images' default modality")
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
    try:
        summary = score_images(
            spark,
            settings,
            args.task or settings.train.tasks,
            alias=args.alias,
            version=args.version,
            splits=args.split,
            landing=args.landing,
            modality=args.modality,
            dry_run=args.dry_run,
        )
    except ScoringRefused as exc:
        parser.exit(2, f"oncolake score: {exc}\n")
    if summary.counts:
        print(summary.table())
    if args.summary_json:
        args.summary_json.write_text(json.dumps(summary.as_dict(), indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
