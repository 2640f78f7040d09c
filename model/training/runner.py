"""The driver side of training (``horovod/spark/runner``'s share): plan, MLflow run, lineage, resume.

:func:`train_tasks` is the library function behind ``oncolake train``: it checks the configuration can
be trained at all, pins the current version of the tiles table, and fits each task (:func:`fit_task`):
one MLflow run with the public configuration and the lineage, training processes on the executors
(:func:`run_training`: Horovod or TorchDistributor, ``train.backend``), the best epoch registered as the
task's challenger (:mod:`model.training.registration`), and optionally the leakage audit beside it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.tasks import TASKS, SplitRule, Task
from model.training.common import (
    TaskData,
    TrainPlan,
    failure_reports,
    latest_checkpoint,
    row_groups,
    task_data,
)


class Refused(ValueError):
    """Training cannot start with this configuration or lakehouse; the message says why."""


class TrainingFailed(RuntimeError):
    """The training processes failed (one was killed, or a peer went missing); ``--resume`` continues."""


BACKENDS = ("horovod", "torch_distributor")

_SIGNALS = {6: "SIGABRT", 9: "SIGKILL", 11: "SIGSEGV", 15: "SIGTERM"}


def failure_summary(error: BaseException, plan: TrainPlan) -> str:
    """What happened to the training processes, in one line, from either backend's error (Horovod's
    launcher names the rank and exit code; TorchDistributor's barrier task the command and return code;
    Gloo says when a peer stopped answering)."""
    # What the workers that failed themselves saw (a peer gone, a timeout).
    workers = "\n".join(path.read_text() for path in failure_reports(plan.checkpoint_dir))
    text = f"{error}\n{workers}"

    def by_signal(code: int) -> str:
        number = -code if code < 0 else code - 128 if code > 128 else 0
        return f"killed by {_SIGNALS.get(number, f'signal {number}')}" if number else f"exit code {code}"

    horovod = re.search(r"Process name: (\S+)\s+Exit code: (-?\d+)", text)
    if horovod:
        return f"worker of rank {horovod.group(1)} {by_signal(int(horovod.group(2)))}"
    torch = re.search(r"--node_rank=(\d+).*? failed with return code (-?\d+)", text)
    if torch:
        return f"worker of rank {torch.group(1)} {by_signal(int(torch.group(2)))}"
    if re.search(r"[Tt]imed out|timeout", text):
        return (
            f"a peer stopped answering for {plan.peer_timeout_s} s (train.peer_timeout_seconds): hung, "
            "or its executor lost"
        )
    if re.search(r"Connection (reset|closed)|Broken pipe", text):
        return "a peer's connection closed (its process died)"
    lines = [line.strip() for line in text.splitlines() if re.match(r"\s*\w+(Error|Exception): ", line)]
    return lines[-1][:300] if lines else type(error).__name__


def run_training(spark: Any, backend: str, plan: TrainPlan, num_proc: int) -> dict[str, Any]:
    """Rank 0's result of :func:`model.training.worker.train_loop` in ``num_proc`` processes of
    ``backend``: Horovod (:func:`model.training.worker.train_worker`) or PyTorch DDP under Spark's
    TorchDistributor (:func:`model.training.torch_backend.torch_worker`). Same plan, same loop."""
    from model.distributed import run_torch_workers, run_workers

    if backend == "horovod":
        from model.training.worker import train_worker

        return run_workers(spark, train_worker, num_proc, (plan,), gloo_timeout_s=plan.peer_timeout_s)[0]
    if backend == "torch_distributor":
        from model.training.torch_backend import torch_worker

        return run_torch_workers(spark, torch_worker, num_proc, (plan,))
    raise Refused(f"unknown train.backend {backend!r}: choose from {', '.join(BACKENDS)}")


class EpochLog:
    """Shows on the driver each epoch rank 0 finishes, from the checkpoint directory (which the driver
    reads anyway): on a cluster a worker's own output reaches only its executor's log."""

    def __init__(self, directory: Path, epochs: int, every_s: float = 0.5) -> None:
        import threading

        from model.training.common import epoch_log_path

        self.path, self.epochs, self.every_s = epoch_log_path(str(directory)), epochs, every_s
        self.shown = len(self.path.read_text().splitlines()) if self.path.exists() else 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _show(self) -> None:
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        for line in lines[self.shown :]:
            if not line.endswith("}"):
                break  # being written
            record = json.loads(line)
            print(
                f"train: epoch {int(record['epoch'])}/{self.epochs} loss {record['train_loss']:.4f} val_loss "
                f"{record['val_loss']:.4f} val_auc {record['val_auc']:.3f} "
                f"{record['images_per_s']:.1f} images/s",
                flush=True,
            )
            self.shown += 1

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._show()

    def __enter__(self) -> EpochLog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._show()


def task_slots(spark: Any) -> int:
    """How many tasks the cluster runs at once: one training process per slot (``train.num_proc: null``).

    ``defaultParallelism`` is that on a local master, but a cluster backend reports at least 2 whatever
    its cores: one executor of one core would leave a 2-process barrier stage waiting for a second slot
    until it gives up. ``local-cluster[N,C,M]`` says its slots (N x C); elsewhere ``spark.executor.cores``
    x ``spark.executor.instances`` when both are set.
    """
    context = spark.sparkContext
    found = re.fullmatch(r"local-cluster\[\s*(\d+)\s*,\s*(\d+)\s*,\s*\d+\s*\]", context.master)
    if found:
        return int(found[1]) * int(found[2])
    conf = context.getConf()
    cores, instances = conf.get("spark.executor.cores"), conf.get("spark.executor.instances")
    if cores and instances:
        return int(cores) * int(instances)
    return int(context.defaultParallelism)


def minimum_row_groups(num_proc: int) -> int:
    """Row groups a split needs for ``num_proc`` workers: 2 each (Petastorm refuses fewer than 1 each)."""
    return 2 * num_proc


def fit_task(
    spark: Any,
    settings: Any,
    task: Task,
    data: TaskData,
    num_proc: int,
    resume_run_id: str | None = None,
) -> dict[str, Any]:
    """Train one task's model on the executors (``train.backend``), tracked in one MLflow run.

    ``resume_run_id`` continues that run from its last per-epoch checkpoint (no epoch repeated).

    Returns:
        ``run_id``, ``checkpoint_dir``, the registered ``version`` (None for the leakage audit), the
        training ``history`` and the ``best_epoch``/``best_auc``.
    """
    import mlflow

    from model.tracking import flat_params
    from model.training.registration import audit_figures, register_best

    if not data.counts.get("train") or not data.counts.get("val"):
        raise ValueError(f"{task.name}: no training or validation tiles in {data.table}@{data.version}")
    groups = row_groups(data.train_files)
    if groups < minimum_row_groups(num_proc):
        raise Refused(
            f"{task.name}: {groups} Parquet row groups of training tiles for {num_proc} workers, who need "
            f"{minimum_row_groups(num_proc)}: train with fewer (train.num_proc) or re-tile into a new "
            "lakehouse with a smaller tiles.row_group_rows"
        )
    run_name = f"{task.name} leakage audit (image-level split)" if data.rule.by == "image" else task.name
    with mlflow.start_run(run_id=resume_run_id, run_name=None if resume_run_id else run_name) as run:
        print(f"train: {run_name}: MLflow run {run.info.run_id} (if killed: --resume {run.info.run_id})")
        if resume_run_id is None:
            mlflow.log_params(
                {**flat_params(settings.public_dict()), "task": task.name, "num_proc": num_proc}
            )
            mlflow.set_tags(
                {
                    "task": task.name,
                    "modality": task.modality,
                    "lineage.table": data.table,
                    "lineage.version": str(data.version),
                    "lineage.filter": data.condition,
                    "lineage.counts": json.dumps(data.counts, sort_keys=True),
                    **data.lineage_tags(),
                }
            )
        directory = Path(settings.lakehouse.root) / "checkpoints" / run.info.run_id
        directory.mkdir(parents=True, exist_ok=True)
        plan = TrainPlan.build(
            settings, task, data, num_proc, str(directory), resume=resume_run_id is not None
        )
        if resume_run_id is None:  # the task's own values (train.per_task) as it trains with them
            mlflow.log_params(
                {
                    "epochs": plan.epochs,
                    "learning_rate": plan.learning_rate,
                    "patience": plan.patience,
                    "steps_per_epoch": plan.steps_per_epoch,
                }
            )
        backend = settings.train.backend
        if resume_run_id is not None:
            latest = latest_checkpoint(str(directory))
            done = int(latest.stem.split("-")[1]) if latest else 0
            print(f"train: resuming after epoch {done} from {latest.name if latest else 'the start'}")
        for stale in failure_reports(str(directory)):  # an earlier attempt's
            stale.unlink()
        try:
            with EpochLog(directory, plan.epochs):
                state = run_training(spark, backend, plan, num_proc)
        except Exception as error:  # a killed process fails the whole stage (barrier: no retry)
            raise TrainingFailed(
                f"{task.name}: the {backend} training processes failed: {failure_summary(error, plan)}; "
                f"the epochs done are checkpointed: continue with --resume {run.info.run_id}"
            ) from error
        if len(state["history"]) < plan.epochs:
            print(f"train: early stop, best epoch {state['best_epoch']}", flush=True)
        for record in state["history"]:
            step = int(record["epoch"])
            mlflow.log_metrics(
                {k: v for k, v in record.items() if k != "epoch" and not math.isnan(v)}, step=step
            )
        mlflow.log_metrics({"best_epoch": state["best_epoch"], "best_val_auc": state["best_auc"]})
        result = {"run_id": run.info.run_id, "checkpoint_dir": str(directory), "version": None, **state}
        if data.rule.by == "image":  # the leakage audit: figures only, never a registered model
            table = audit_figures(settings, task, data, directory)
            with tempfile.TemporaryDirectory() as folder:
                table.to_csv(Path(folder) / "figures.csv", index=False)
                mlflow.log_artifact(str(Path(folder) / "figures.csv"), artifact_path="audit")
            mlflow.set_tag("audit", "image-level split")
            return result
        return {**result, "version": register_best(settings, task, data, directory, state)}


def check_trainable(settings: Any, tasks: Sequence[str]) -> list[Task]:
    """The tasks to train, once the configuration is known to be trainable (before any Spark work).

    Raises:
        Refused: an unknown task, or a network that cannot take ``tiles.size`` tiles.
    """
    from model.networks import input_size_error

    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise Refused(f"unknown task {', '.join(unknown)}: choose from {', '.join(sorted(TASKS))}")
    problem = input_size_error(settings.train.network, settings.tiles.size)
    if problem:
        raise Refused(f"{problem}; choose another train.network or tiles.size")
    return [TASKS[name] for name in tasks]


def train_tasks(
    spark: Any,
    settings: Any,
    tasks: Sequence[str] | None = None,
    resume: str | None = None,
    leakage_audit: bool = False,
) -> list[dict[str, Any]]:
    """Train ``tasks`` (default ``train.tasks``) from the current version of the tiles table.

    Args:
        resume: an MLflow run id to continue from its last checkpoint.
        leakage_audit: also train each task on a random image-level split (so does
            ``train.leakage_audit``), its figures logged for the evaluation report and its run recorded
            on the registered version (``audit.run_id``).

    Returns:
        One :func:`fit_task` result per task, in order.

    Raises:
        Refused: before any Spark work when the configuration cannot be trained; when there are no tiles.
    """
    from mlflow import MlflowClient

    from model.registry import model_name
    from model.tracking import use_tracking
    from pipelines.curation import LANDING, describe_labels, resolve_labels
    from pipelines.io import current_version, read_table, table_exists

    chosen = check_trainable(settings, tasks or settings.train.tasks)
    tiles = settings.lakehouse.table("tiles")
    if not table_exists(spark, tiles):
        raise Refused("no tiles table yet: run 'oncolake tile' first")
    version = current_version(spark, tiles)
    try:
        labels = resolve_labels(settings, read_table(spark, tiles, version))
    except LookupError as exc:
        raise Refused(str(exc)) from None
    consensus = None
    if labels:
        path = settings.lakehouse.table("consensus")
        consensus = f"{path}@{current_version(spark, path)}"
        print(f"train: labels: {describe_labels(labels)} ({consensus})", flush=True)
    use_tracking(settings)
    num_proc = settings.train.num_proc or task_slots(spark)
    results = []
    for task in chosen:
        own = {c: how for c, how in labels.items() if c in task.collections or c == LANDING}
        task = task.with_labels(own) if own else task
        data = task_data(spark, tiles, version, task)
        if data.labels:
            data = dataclasses.replace(data, consensus=consensus)
        print(f"train: {task.name} on {tiles}@{version}: {data.counts}", flush=True)
        result = fit_task(spark, settings, task, data, num_proc, resume)
        best = f"best epoch {result['best_epoch']}, validation AUC {result['best_auc']:.3f}"
        print(f"train: {task.name} run {result['run_id']}: {best}")
        if leakage_audit or settings.train.leakage_audit:
            split = settings.split
            audit_data = task_data(spark, tiles, version, task, SplitRule("image", split.train, split.val))
            print(
                f"train: {task.name} leakage audit on an image-level split: {audit_data.counts}", flush=True
            )
            audit = fit_task(spark, settings, task, audit_data, num_proc)
            name = model_name(settings, task.name)
            MlflowClient().set_model_version_tag(name, result["version"], "audit.run_id", audit["run_id"])
            result = {**result, "audit_run_id": audit["run_id"]}
        results.append(result)
    return results
