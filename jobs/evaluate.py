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
champion's, re-scored on the same split; the decision is recorded on the version.
"""

from __future__ import annotations

from jobs.options import job_parser, settings_from
from jobs.session import build_spark
from model.registry_evaluation import evaluate_version
from core.tasks import TASKS
from model.tracking import CHALLENGER, use_tracking


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("oncolake evaluate", __doc__)
    parser.add_argument("--task", action="append", choices=sorted(TASKS), help="evaluate only these tasks")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--alias", default=CHALLENGER, help="evaluate the version holding this alias")
    which.add_argument("--version", help="evaluate this version number")
    args = parser.parse_args(argv)
    settings = settings_from(args)
    spark = build_spark(settings, "evaluate")
    use_tracking(settings)
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    missing = []
    for task_name in args.task or settings.train.tasks:
        name = f"{settings.train.model_prefix}{task_name}"
        try:
            version = args.version or str(client.get_model_version_by_alias(name, args.alias).version)
        except MlflowException:
            missing.append(name)
            print(f"evaluate: {name} has no version with alias {args.alias!r}: train it first")
            continue
        result = evaluate_version(spark, settings, TASKS[task_name], name, version)
        decision = result["decision"]
        print(
            f"evaluate: {name} v{version}: patient-level test AUC {decision.challenger_auc:.3f}; "
            f"{decision.tags()['promotion.decision']} ({decision.reason}); report {result['report']}"
        )
    return 1 if missing and len(missing) == len(args.task or settings.train.tasks) else 0


if __name__ == "__main__":
    raise SystemExit(main())
