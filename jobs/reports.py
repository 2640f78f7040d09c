"""Read expert reports into the lakehouse: ``annotations`` rows with ``source = 'expert'``.

    oncolake reports DIR [--summary-json FILE] [--config NAME|FILE] [--set key=value ...]
    oncolake reports export-tasks --out FILE [--limit N] [--modality M] [--config NAME|FILE]
    spark-submit --py-files dist/oncolake-0.1.0.zip jobs/reports.py /mnt/reports --config cluster

Every file below DIR is a JSON Lines (``.jsonl``) or CSV (``.csv``) file of reports, or a Label Studio
JSON export (``.json``); docs/crowd.md documents the fields. Reports name their image by ``image_id``,
by a file's ``sha256``, or by ``collection`` and ``path``; reporters are stored only as keyed pseudonyms
(``$ONCOLAKE_PSEUDONYM_SECRET``), and free text only with ``privacy.keep_report_text``. A report with an
unknown image, an unknown label, a malformed mark or a mark outside the image is quarantined with its
reason, as is a whole file that does not parse (with the line that failed); the summary proves that
every report seen was ingested, already present or quarantined. Re-running adds nothing (MERGE by report
id). Run ``oncolake consensus`` next. The work is :func:`pipelines.reports.ingest_reports`'s.

``export-tasks`` writes a Label Studio import file (and ``label_config.xml`` beside it) of the images
most worth reading next: highest model uncertainty or reader disagreement first, each task carrying its
``image_id`` and the normalised image (never a path or an identifier); Label Studio's export of the
readings comes back through ``oncolake reports DIR``
(:func:`pipelines.reports.export_tasks`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from jobs.options import job_parser, settings_from
from jobs.session import build_spark
from pipelines.pseudonym import SecretMissing, resolve_secret
from pipelines.reports import NAME, export_tasks, ingest_reports
from pipelines.summary import render_table, write_json


def export(argv: list[str]) -> int:
    parser = job_parser("oncolake reports export-tasks", __doc__)
    parser.add_argument("--out", type=Path, required=True, help="the Label Studio import file to write")
    parser.add_argument("--limit", type=int, default=100, help="tasks to write (default 100)")
    parser.add_argument("--modality", choices=("mammography", "histology"), help="only this modality")
    args = parser.parse_args(argv)
    settings = settings_from(args)
    written = export_tasks(build_spark(settings, "reports"), settings, args.out, args.limit, args.modality)
    print(f"reports: {written} tasks written to {args.out} (labelling interface: label_config.xml beside it)")
    return 0 if written else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["export-tasks"]:
        return export(argv[1:])
    parser = job_parser("oncolake reports", __doc__)
    parser.add_argument("folder", type=Path, help="the folder of report files")
    parser.add_argument("--summary-json", type=Path, help="write the run's accounting as JSON here")
    args = parser.parse_args(argv)
    settings = settings_from(args)
    if not args.folder.is_dir():
        parser.exit(2, f"oncolake reports: {args.folder} is not a folder\n")
    try:
        secret, _ = resolve_secret(settings.privacy)
    except SecretMissing as exc:
        parser.exit(2, f"oncolake reports: {exc}\n")
    summary = ingest_reports(build_spark(settings, "reports"), settings, args.folder, secret)
    print(render_table({NAME: summary}))
    if args.summary_json:
        write_json(args.summary_json, {NAME: summary})
    return 0 if summary.balanced() else 1


if __name__ == "__main__":
    raise SystemExit(main())
