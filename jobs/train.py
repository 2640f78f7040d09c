"""Train one model per task on the Spark executors (Horovod or TorchDistributor), from a pinned tiles version.

    oncolake train [--task NAME ...] [--resume RUN_ID] [--config NAME|FILE] [--set train.epochs=8 ...]
    spark-submit --py-files dist/oncolake-0.1.0.zip jobs/train.py --config cluster

Tasks (``train.tasks``): mammography normal vs abnormal, mammography benign vs malignant, histology
benign vs malignant (``paper_all`` is the paper's single model). Each task is one MLflow run with its
configuration, per-epoch metrics and lineage (tiles table path, version, counts per split and label).
``--resume RUN_ID`` continues a killed run from its last checkpoint. ``--leakage-audit`` (or
``train.leakage_audit``) also trains each task on a random image-level split, the paper's mistake, and
records its test figures for the evaluation report (never registered). The work is
:func:`model.training.runner.train_tasks`; a configuration it cannot train (a network that cannot take
``tiles.size`` tiles) or a lakehouse without tiles is refused before training starts (exit status 2).
``train.backend`` picks how the processes cooperate (``horovod``, or ``torch_distributor``: PyTorch DDP
in Spark barrier tasks; docs/training.md); when a process dies the job exits with status 3 and says
which ``--resume RUN_ID`` continues it.
"""

from __future__ import annotations

from core.tasks import TASKS
from jobs.options import job_parser, settings_from
from jobs.session import build_spark
from model.training.runner import Refused, TrainingFailed, train_tasks


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
    try:
        train_tasks(spark, settings, args.task, args.resume, args.leakage_audit)
    except Refused as refused:
        parser.exit(2, f"oncolake train: {refused}\n")
    except TrainingFailed as failed:
        parser.exit(3, f"oncolake train: {failed}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
