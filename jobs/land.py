"""Land new, unlabelled images: a folder that devices or users feed into the landing tables, ready to score.

    oncolake land DIR [--modality mammography|histology] [--summary-json FILE] [--config NAME|FILE]
    spark-submit --py-files dist/oncolake-0.1.0.zip jobs/land.py /mnt/landing --config cluster

Every file below DIR (PNG 8/16-bit, PGM, DICOM; see :mod:`pipelines.sources.landing` for how each
image's modality is found) goes through the same decode, normalise and tile path as the collections,
with no label and no split, into ``landing_images`` and ``landing_tiles``. A corrupt or unknown file is
quarantined (collection ``landing``) and does not stop the run. Files already landed (same path, or same
bytes) are skipped, so the job can run on every new drop; ``oncolake score --landing DIR`` runs it first.
"""

from __future__ import annotations

from pathlib import Path

from jobs.options import job_parser, settings_from
from jobs.session import build_spark
from pipelines.land import land_folder
from pipelines.pseudonym import SecretMissing, resolve_secret
from pipelines.sources import landing
from pipelines.summary import render_table, write_json


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("oncolake land", __doc__)
    parser.add_argument("folder", type=Path, help="the landing folder")
    parser.add_argument("--modality", choices=landing.MODALITIES, help="for images nothing else names")
    parser.add_argument("--summary-json", type=Path, help="write the run's accounting as JSON here")
    args = parser.parse_args(argv)
    settings = settings_from(args)
    if not args.folder.is_dir():
        parser.exit(2, f"oncolake land: {args.folder} is not a folder\n")
    try:
        secret, _ = resolve_secret(settings.privacy)
    except SecretMissing as exc:
        parser.exit(2, f"oncolake land: {exc}\n")
    summary = land_folder(build_spark(settings, "land"), settings, args.folder, args.modality, secret)
    print(render_table({landing.NAME: summary}))
    if args.summary_json:
        write_json(args.summary_json, {landing.NAME: summary})
    return 0 if summary.balanced() else 1


if __name__ == "__main__":
    raise SystemExit(main())
