"""Evaluate registered models on their test split, write their reports, and run the promotion gate.

    oncolake evaluate [--task NAME ...] [--alias challenger | --version N] [--config NAME|FILE] [--set k=v]
    spark-submit --py-files dist/oncolake-0.1.0.zip jobs/evaluate.py \\
         --config cluster --task mammo_benign_vs_malignant

For each task, the version holding ``--alias`` (default ``challenger``) of ``<train.model_prefix><task>``
is scored on the test split of the tiles table version it was trained from: the paper's figures (TP, TN,
FP, FN, accuracy, sensitivity, specificity, precision, recall, F1) and ROC AUC with a patient-bootstrap
95% interval, at tile, image and patient level, per collection and overall, plus subgroups. The report
(Markdown, HTML, plots) goes to ``<lakehouse.root>/reports/<model>/v<version>/`` and to the version's
MLflow run. The version becomes ``champion`` only if its patient-level test AUC beats the current
champion's, re-scored on the same split; the decision is recorded on the version. Exit status 1 when
no task has such a version. The work is :func:`model.registry_evaluation.evaluate_tasks`.
"""

from __future__ import annotations

from core.tasks import TASKS
from jobs.options import job_parser, settings_from
from jobs.session import build_spark
from model.registry import CHALLENGER
from model.registry_evaluation import evaluate_tasks


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("oncolake evaluate", __doc__)
    parser.add_argument("--task", action="append", choices=sorted(TASKS), help="evaluate only these tasks")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--alias", default=CHALLENGER, help="evaluate the version holding this alias")
    which.add_argument("--version", help="evaluate this version number")
    args = parser.parse_args(argv)
    settings = settings_from(args)
    spark = build_spark(settings, "evaluate")
    results = evaluate_tasks(spark, settings, args.task, args.alias, args.version)
    return 1 if results and all(result is None for result in results.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
