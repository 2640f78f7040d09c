"""Train one model per task with Horovod on the Spark executors, from a pinned version of the tiles table.

    oncolake train [--task NAME ...] [--resume RUN_ID] [--config NAME|FILE] [--set train.epochs=8 ...]
    spark-submit --py-files dist/oncolake-0.1.0.zip jobs/train.py --config cluster

Tasks (``train.tasks``): mammography normal vs abnormal, mammography benign vs malignant, histology
benign vs malignant (``paper_all`` is the paper's single model). Each task is one MLflow run with its
configuration, per-epoch metrics and lineage (tiles table path, version, counts per split and label).
``--resume RUN_ID`` continues a killed run from its last checkpoint. ``--leakage-audit`` (or
``train.leakage_audit``) also trains each task on a random image-level split, the paper's mistake, and
records its test figures for the evaluation report (never registered).
"""

from __future__ import annotations

from mlflow import MlflowClient

from jobs.options import job_parser, settings_from
from jobs.session import build_spark
from core.tasks import SplitRule
from core.tasks import TASKS
from model.tracking import use_tracking
from model.train import fit_task, task_data
from pipelines.io import current_version, table_exists


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("oncolake train", __doc__)
    parser.add_argument("--task", action="append", choices=sorted(TASKS), help="train only these tasks")
    parser.add_argument(
        "--resume", metavar="RUN_ID", help="continue this MLflow run from its last checkpoint"
    )
    parser.add_argument(
        "--leakage-audit", action="store_true", help="also train on an image-level split, for comparison"
    )
    args = parser.parse_args(argv)
    settings = settings_from(args)
    spark = build_spark(settings, "train")
    tiles = settings.lakehouse.table("tiles")
    if not table_exists(spark, tiles):
        parser.exit(2, "oncolake train: no tiles table yet: run 'oncolake tile' first\n")
    version = current_version(spark, tiles)
    use_tracking(settings)
    num_proc = settings.train.num_proc or spark.sparkContext.defaultParallelism
    for name in args.task or settings.train.tasks:
        task = TASKS[name]
        data = task_data(spark, tiles, version, task)
        print(f"train: {name} on {tiles}@{version}: {data.counts}", flush=True)
        result = fit_task(spark, settings, task, data, num_proc, args.resume)
        best = f"best epoch {result['best_epoch']}, validation AUC {result['best_auc']:.3f}"
        print(f"train: {name} run {result['run_id']}: {best}")
        if args.leakage_audit or settings.train.leakage_audit:
            split = settings.split
            audit_data = task_data(spark, tiles, version, task, SplitRule("image", split.train, split.val))
            print(f"train: {name} leakage audit on an image-level split: {audit_data.counts}", flush=True)
            audit = fit_task(spark, settings, task, audit_data, num_proc)
            model = f"{settings.train.model_prefix}{name}"
            MlflowClient().set_model_version_tag(model, result["version"], "audit.run_id", audit["run_id"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
