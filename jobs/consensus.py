"""Aggregate the expert reports into consensus labels: the ``consensus`` and ``reporters`` tables.

    oncolake consensus [--truth FILE] [--summary-json FILE] [--config NAME|FILE] [--set key=value ...]
    spark-submit --py-files dist/oncolake-0.1.0.zip jobs/consensus.py --config cluster

Reads the latest version of ``annotations`` (rows with ``source = 'expert'``, written by ``oncolake
reports``), keeps each reader's latest report per image, and runs ``consensus.methods`` (majority vote,
Dawid–Skene) per modality. Each image read gets a row per method with its posterior per class, the number
of reports, their agreement and the readers' lesion marks merged into findings; Dawid–Skene's estimate of
every reader's confusion matrix goes to ``reporters``. Re-running on the same annotations version adds
nothing. ``--truth FILE`` (JSON: ``{"collection/path": label}``, or a synthetic crowd's ``reports.json``
with such a ``truth`` member) prints each method's accuracy against it. A report goes to
``<lakehouse.root>/reports/consensus/v<annotations version>/report.md`` (methods, labels, accuracy, and
per reader, by pseudonym, the estimated accuracy beside chance; for a synthetic crowd's manifest also each
reader's kind and true accuracy). The work is :func:`pipelines.crowd.build_consensus`'s.
"""

from __future__ import annotations

import json
from pathlib import Path

from jobs.options import job_parser, settings_from
from jobs.session import build_spark
from pipelines.crowd import build_consensus, known_readers, write_report
from pipelines.pseudonym import SecretMissing, resolve_secret
from pipelines.summary import write_payload


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("oncolake consensus", __doc__)
    parser.add_argument("--truth", type=Path, help="known labels to score the methods against (JSON)")
    parser.add_argument("--summary-json", type=Path, help="write the run's summary as JSON here")
    args = parser.parse_args(argv)
    settings = settings_from(args)
    truth, loaded_readers = None, None
    if args.truth:
        try:
            loaded = json.loads(args.truth.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            parser.exit(2, f"oncolake consensus: --truth {args.truth}: {exc}\n")
        truth = loaded.get("truth", loaded) if isinstance(loaded, dict) else None
        loaded_readers = loaded.get("readers") if isinstance(loaded, dict) else None
        if not isinstance(truth, dict):
            parser.exit(2, f"oncolake consensus: --truth {args.truth}: expected a JSON object of labels\n")
    summary = build_consensus(build_spark(settings, "consensus"), settings, truth)
    print(summary.render())
    if summary.methods:
        known = {}
        if isinstance(loaded_readers, list):
            try:
                secret, _ = resolve_secret(settings.privacy)
            except SecretMissing as exc:
                parser.exit(2, f"oncolake consensus: {exc}\n")
            known = known_readers(loaded_readers, secret)
        folder = Path(settings.lakehouse.root) / settings.evaluate.reports / "consensus"
        path = write_report(summary, folder / f"v{summary.annotations_version}", known)
        print(f"consensus: report {path}")
    if args.summary_json:
        write_payload(args.summary_json, summary.as_dict())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
