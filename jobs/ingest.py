"""Ingest the collections into the lakehouse: images, annotations and quarantine Delta tables.

    oncolake ingest [--source NAME=PATH ...] [--summary-json FILE] [--config NAME|FILE] [--set k=v ...]
    spark-submit --py-files dist/oncolake-0.1.0.zip jobs/ingest.py --config cluster --source mias=/mnt/mias

Collections come from ``sources.<name>`` in the configuration and from ``--source`` (names: breakhis,
mias, ddsm, cbis_ddsm); absent ones are skipped. The driver scans metadata and pseudonymises patients
(key from ``$ONCOLAKE_PSEUDONYM_SECRET``); executors decode, normalise and hash the pixels. Every file
seen is ingested, already present or quarantined, and the summary proves it. Splits are assigned by
patient once, and the job fails if a patient or a linked group of near-duplicate images spans two splits.
Re-running adds nothing; adding files to a collection ingests only them. Relative collection paths are
made absolute on the driver first.
"""

from __future__ import annotations

import sys
from pathlib import Path

from conf import ConfigError
from jobs.options import job_parser, settings_from
from jobs.session import build_spark
from pipelines.collections import ingest_collections, source_roots
from pipelines.pseudonym import SecretMissing, resolve_secret
from pipelines.summary import SystemicFailure, render_table, unbalanced, write_json


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("oncolake ingest", __doc__)
    parser.add_argument(
        "--source", action="append", default=[], metavar="NAME=PATH", help="a collection root"
    )
    parser.add_argument("--summary-json", type=Path, help="write the run's summary as JSON here")
    args = parser.parse_args(argv)
    settings = settings_from(args)
    try:
        roots = source_roots(settings, args.source)
        secret, _ = resolve_secret(settings.privacy)
    except (ConfigError, SecretMissing) as exc:
        parser.exit(2, f"oncolake ingest: {exc}\n")
    if not roots:
        parser.exit(2, "oncolake ingest: no collection configured (set sources.<name> or pass --source)\n")
    try:
        summaries = ingest_collections(build_spark(settings, "ingest"), settings, roots, secret)
    except SystemicFailure as exc:
        print(f"oncolake ingest: stopped: {exc}", file=sys.stderr)
        return 3
    print(render_table(summaries))
    if args.summary_json:
        write_json(args.summary_json, summaries)
    failed = unbalanced(summaries)
    if failed:
        print(f"ingest: accounting does not balance for {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
