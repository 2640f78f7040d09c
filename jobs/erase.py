"""Erase patients from the lakehouse: every table's rows of theirs, recorded, flagged in the registry.

    oncolake erase --patient PSEUDONYM [--patient ...] [--patients-file FILE] [--summary-json FILE]
                   [--config NAME|FILE] [--set key=value ...]
    spark-submit --py-files dist/oncolake-0.1.0.zip jobs/erase.py --patients-file erase.txt --config cluster

Patients are named by pseudonym (the tables' ``patient_key``, 20 hex characters; a site holding the
secret recomputes it from its own identifier), one per ``--patient`` or one per line of FILE; anything
else is refused before a table is touched. Their rows leave images, tiles, landing_images, landing_tiles
(by patient) and annotations, predictions, consensus (by their images), one commit per table; the
erasure (its id, the pseudonyms, the time, rows and versions per table; no data) is appended to the
``erasures`` table; later ingests and landings skip those patients' files. Every registered version of
the product's models whose lineage read their rows is tagged ``erasure.<id>`` and listed. The job then
says when the rows leave the disk: at the first ``oncolake maintain`` after ``maintain.min_retention_hours``,
or, for a table some registered version pins from before the erasure, once those versions are deleted.
A re-run changes nothing. Exit 0; 1 when a pseudonym was found nowhere (the others are erased); 2 when
the input is not pseudonyms. See :mod:`pipelines.erasure` and :mod:`model.erasure`.
"""

from __future__ import annotations

from pathlib import Path

from jobs.options import job_parser, settings_from
from jobs.session import build_spark
from model.erasure import flag_versions, vacuum_note
from model.registry import pinned_versions
from model.tracking import use_tracking
from pipelines.erasure import NotAPseudonym, check_pseudonyms, erase_patients
from pipelines.summary import write_payload


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("oncolake erase", __doc__)
    parser.add_argument("--patient", action="append", default=[], metavar="PSEUDONYM", help="repeatable")
    parser.add_argument("--patients-file", type=Path, metavar="FILE", help="one pseudonym per line")
    parser.add_argument("--summary-json", type=Path, help="write the erasure's record here")
    args = parser.parse_args(argv)
    settings = settings_from(args)
    patients = list(args.patient)
    if args.patients_file:
        if not args.patients_file.is_file():
            parser.exit(2, f"oncolake erase: {args.patients_file} is not a file\n")
        patients += args.patients_file.read_text().split()
    try:
        patients = check_pseudonyms(patients)
    except NotAPseudonym as exc:
        parser.exit(2, f"oncolake erase: {exc}\n")
    spark = build_spark(settings, "erase")
    use_tracking(settings)
    erasure = erase_patients(spark, settings, patients)
    flagged = flag_versions(spark, settings, erasure)
    note = vacuum_note(settings, erasure, pinned_versions(settings))
    erased = len(patients) - len(erasure.unknown) - len(erasure.already_erased)
    print(
        f"erase: erasure {erasure.erasure_id}: {erased} patients, {erasure.images} images, "
        f"{erasure.rows} rows in {len(erasure.tables)} tables",
        flush=True,
    )
    for pseudonym in erasure.already_erased:
        print(f"erase: {pseudonym} was erased before: nothing left to delete")
    for pseudonym in erasure.unknown:
        print(f"erase: {pseudonym} is in no table (check the pseudonym and the secret it was made with)")
    for flag in flagged:
        print(
            f"erase: registered {flag.line()}: tagged erasure.{erasure.erasure_id}; retrain, then delete it"
        )
    for table, when in note.items():
        if "kept_by_pin" in when:
            print(
                f"erase: {table}: the old files stay on disk while a registered version pins "
                f"{table}@v{when['kept_by_pin']} (listed above); delete those versions, then run "
                "oncolake maintain"
            )
        else:
            print(f"erase: {table}: oncolake maintain removes the old files from {when['vacuum_after']} on")
    if args.summary_json:
        write_payload(
            args.summary_json,
            {**erasure.as_dict(), "flagged": [vars(f) for f in flagged], "disk": note},
        )
    return 1 if erasure.unknown else 0


if __name__ == "__main__":
    raise SystemExit(main())
