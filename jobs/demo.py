"""The end-to-end demo on the embedded default: synthetic corpus, lakehouse, models, scores.

    oncolake demo [--full] [--config NAME|FILE] [--set key=value ...]

Runs every stage, in order, each as its own job would run it (same options, same Spark session):
synth -> ingest -> reports -> consensus -> tile -> train -> evaluate -> score -> stream. The crowd's reports
(``<synth.out>/reports``) are read and aggregated, and consensus prints each method's accuracy against the
synthetic truth. It ends with a registered model per task, its
report under ``<lakehouse.root>/reports/`` and the promotion decision, and the champions' predictions
for the test split; then ``oncolake stream --once`` drains the drop folders as a device's feed would
arrive: the landing folder of new unlabelled images (``<synth.out>/landing``: landed, tiled and scored by
the champions) and the reports folder (every report already read: nothing is added twice).
The default size (640 images) finished in 766 s on two cores (2026-12-03, docs/models.md); ``--full``
uses the 12,000-image corpus with the ``full`` profile unless ``--config`` names another (conf/full.yaml:
two executor JVMs on ``local-cluster``, two epochs per task).
Re-running skips the corpus, ingest and tiles already done; training and evaluation run again (a new
challenger, gated against the champion), and scoring scores only what the champions have not scored.
"""

from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path

from conf import Settings
from jobs.options import job_parser, settings_from
from synth.corpus import collection_roots
from synth.crowd import REPORTS

STAGES = [
    "jobs.synth",
    "jobs.ingest",
    "jobs.reports",
    "jobs.consensus",
    "jobs.tile",
    "jobs.train",
    "jobs.evaluate",
    "jobs.score",
    "jobs.stream",
]
CROWD_STAGES = {"jobs.reports", "jobs.consensus"}
"""Stages that need the corpus's expert reports (``<synth.out>/reports``, written by synth since the crowd
was added): a corpus written before has none, and they are skipped."""


def stage_args(stage: str, settings: Settings, full: bool) -> list[str]:
    """Arguments a stage gets beyond the shared ones: the corpus to ingest, where summaries go.

    Asked just before the stage runs: ingest's ``--source`` options come from the manifest synth wrote.
    """
    summaries = f"{settings.lakehouse.root}/_summaries"
    if stage == "jobs.ingest":
        roots = collection_roots(Path(settings.synth.out))
        sources = [f"--source={name}={root}" for name, root in roots.items()]
        return [*sources, "--summary-json", f"{summaries}/ingest.json"]
    reports = Path(settings.synth.out) / REPORTS
    if stage == "jobs.reports":
        return [str(reports), "--summary-json", f"{summaries}/reports.json"]
    if stage == "jobs.consensus":
        truth = reports.with_name(f"{REPORTS}.json")
        return ["--truth", str(truth), "--summary-json", f"{summaries}/consensus.json"]
    drops = ["--images", f"{settings.synth.out}/landing"] if settings.synth.landing_images else []
    if reports.is_dir():
        drops += ["--reports", str(reports)]
    return {
        "jobs.synth": ["--full"] if full else [],
        "jobs.tile": ["--summary-json", f"{summaries}/tile.json"],
        "jobs.score": ["--split", "test", "--summary-json", f"{summaries}/score.json"],
        "jobs.stream": ["--once", *drops, "--summary-json", f"{summaries}/stream.json"],
    }.get(stage, [])


def build_parser() -> argparse.ArgumentParser:
    parser = job_parser("oncolake demo", __doc__)
    parser.add_argument("--full", action="store_true", help="use the full 12,000-image synthetic corpus")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.full and not args.config:
        args.config = "full"  # conf/full.yaml: local-cluster, the full corpus's folder, its epoch budget
    overrides = [*args.overrides, *(["synth.out=./data/synthetic-full"] if args.full else [])]
    settings = settings_from(args, overrides[len(args.overrides) :])  # fails early on a bad configuration
    shared = [*(["--config", args.config] if args.config else []), *[f"--set={o}" for o in overrides]]
    started = time.monotonic()
    for stage in STAGES:
        name = stage.removeprefix("jobs.")
        if stage in CROWD_STAGES and not (Path(settings.synth.out) / REPORTS).is_dir():
            print(f"demo: == {name} == skipped: {settings.synth.out} has no {REPORTS}/ (an older corpus)")
            continue
        print(f"demo: == {name} ==", flush=True)
        began = time.monotonic()
        status = importlib.import_module(stage).main([*shared, *stage_args(stage, settings, args.full)])
        if status:
            print(f"demo: {stage} failed with status {status}")
            return int(status)
        print(f"demo: {name} took {time.monotonic() - began:.0f} s", flush=True)
    print(f"demo: done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
