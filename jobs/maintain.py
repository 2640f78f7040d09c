"""Compact the lakehouse's tables and VACUUM them, keeping every version a registered model pins.

    oncolake maintain [--table NAME ...] [--summary-json FILE] [--config NAME|FILE] [--set key=value ...]
    spark-submit --py-files dist/oncolake-0.1.0.zip jobs/maintain.py --config cluster

Run it after big loads (a full ingest, a day of landing or streaming) and on a schedule. The tiles table
is compacted group by group with its own layout (one split and modality per file), every other table with
Delta's OPTIMIZE; then each table is VACUUMed with a retention long enough for the oldest version of it
that any registered model's lineage names (the tiles it trained on, the annotations and consensus its
labels came from) to stay readable, and its log retention is set to match. See
:mod:`pipelines.maintenance`; the settings are ``maintain.*``.
"""

from __future__ import annotations

from pathlib import Path

from jobs.options import job_parser, settings_from
from jobs.session import build_spark
from model.registry import pinned_versions
from model.tracking import use_tracking
from pipelines.maintenance import lakehouse_tables, maintain_lakehouse
from pipelines.summary import write_payload


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("oncolake maintain", __doc__)
    parser.add_argument("--table", action="append", default=[], help="only this table (repeatable)")
    parser.add_argument("--summary-json", type=Path, help="write what was done to each table here")
    args = parser.parse_args(argv)
    settings = settings_from(args)
    spark = build_spark(settings, "maintain")
    use_tracking(settings)
    pins = pinned_versions(settings)
    for path, version in sorted(pins.items()):
        print(f"maintain: pinned by a registered model: {path}@v{version}", flush=True)
    unknown = sorted(set(args.table) - set(lakehouse_tables(spark, settings)))
    if unknown:
        parser.exit(2, f"oncolake maintain: no such table: {', '.join(unknown)}\n")
    done = maintain_lakehouse(spark, settings, pins, only=args.table or None)
    if args.summary_json:
        write_payload(args.summary_json, {"tables": [t.as_dict() for t in done], "pins": pins})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
