"""What the driver and the training workers share: the plan, the task's data, checkpoints, validation.

:class:`TrainPlan` is decided on the driver (:meth:`TrainPlan.build`, the one place it is built) and
pickled to every worker; :class:`TaskData` pins the task's rows of the tiles table (its lineage).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.tasks import BY_PATIENT, SplitRule, Task
from model.data import Augmentation, TileInput, read_split

SPLITS = ("train", "val", "test")
COSINE_FLOOR = 0.05  # the cosine schedule ends at this fraction of the peak learning rate


@dataclass(frozen=True)
class TaskData:
    """The tiles one task trains on, at one pinned version of the tiles table (its lineage)."""

    table: str
    version: int
    condition: str
    counts: dict[str, dict[str, int]]
    train_files: tuple[str, ...]
    val_files: tuple[str, ...]
    test_files: tuple[str, ...]
    rule: SplitRule = BY_PATIENT
    labels: tuple[tuple[str, str], ...] = ()
    """Where ``train.labels`` moved a collection off its own labels: ``(collection, consensus:<annotations
    version>)`` pairs; empty when every collection trains on its own."""
    consensus: str | None = None
    """With consensus labels: the consensus table and its version when training read it (``path@v``)."""

    def lineage(self) -> dict[str, Any]:
        lineage = {
            "table": self.table,
            "version": self.version,
            "filter": self.condition,
            "counts": self.counts,
        }
        return {**lineage, "labels": dict(self.labels)} if self.labels else lineage

    def lineage_tags(self) -> dict[str, str]:
        """The labels part of the lineage as MLflow tags (none when every collection used its own)."""
        if not self.labels:
            return {}
        import json

        tags = {"lineage.labels": json.dumps(dict(self.labels), sort_keys=True)}
        return {**tags, "lineage.consensus": self.consensus} if self.consensus else tags


def task_data(spark: Any, table: str, version: int, task: Task, rule: SplitRule = BY_PATIENT) -> TaskData:
    """Counts per split and label, and the files holding each split's rows, at ``version``.

    The rows are the task's (:meth:`core.tasks.Task.sql_condition`). With an image-level ``rule`` (the
    leakage audit) every split may be in any file, so each split gets all of the task's files and the
    readers pick their rows by the rule.
    """
    from pyspark.sql import functions as F

    from pipelines.io import files_holding, read_table

    condition = task.sql_condition()
    counts: dict[str, dict[str, int]] = {}
    for row in (
        read_table(spark, table, version)
        .where(condition)
        .groupBy(F.expr(rule.sql()).alias("split"), "label")
        .agg(F.count("*"))
        .collect()
    ):
        counts.setdefault(row[0], {})[row[1]] = int(row[2])
    if rule.by == "patient":
        files = {
            s: tuple(files_holding(spark, table, version, f"{condition} AND {rule.sql()} = '{s}'"))
            for s in SPLITS
        }
    else:
        every = tuple(files_holding(spark, table, version, condition))
        files = dict.fromkeys(SPLITS, every)
    labels = tuple(sorted((c, how) for c, how in task.label_sources().items() if how != "collection"))
    return TaskData(
        table, version, condition, counts, files["train"], files["val"], files["test"], rule, labels
    )


def class_weights(task: Task, train_counts: dict[str, int]) -> tuple[float, ...]:
    """Inverse-frequency class weights, so a rare class weighs as much as a common one in the loss."""
    per_class = [0] * len(task.classes)
    for label, count in train_counts.items():
        if label in task.label_map:
            per_class[task.label_map[label]] += count
    total = sum(per_class)
    return tuple(total / (len(per_class) * n) if n else 0.0 for n in per_class)


def row_groups(files: tuple[str, ...]) -> int:
    """How many Parquet row groups the files hold: each worker's Petastorm shard needs at least one."""
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(f.removeprefix("file:")).num_row_groups for f in files)


@dataclass(frozen=True)
class TrainPlan:
    """Everything a worker needs, decided on the driver (plain values: it is pickled to every worker)."""

    task: Task
    network: str
    train_files: tuple[str, ...]
    val_files: tuple[str, ...]
    train_tiles: int
    val_tiles: int
    class_weights: tuple[float, ...]
    epochs: int
    batch_size: int
    learning_rate: float
    momentum: float
    weight_decay: float
    warmup_epochs: float
    schedule: str
    patience: int
    checkpoint_dir: str
    tile_input: TileInput
    augmentation: Augmentation
    seed: int
    reader_workers: int | None
    peer_timeout_s: int
    resume: bool = False
    rule: SplitRule = BY_PATIENT

    @classmethod
    def build(
        cls,
        settings: Any,
        task: Task,
        data: TaskData,
        num_proc: int,
        checkpoint_dir: str,
        resume: bool = False,
    ) -> TrainPlan:
        """The plan for ``task`` on ``data`` in ``num_proc`` workers, from the ``train`` settings."""
        train, train_counts = settings.train.for_task(task.name), data.counts.get("train", {})
        return cls(
            task=task,
            network=train.network,
            train_files=data.train_files,
            val_files=data.val_files,
            train_tiles=sum(train_counts.values()) // num_proc,
            val_tiles=sum(data.counts.get("val", {}).values()),
            class_weights=class_weights(task, train_counts),
            epochs=train.epochs,
            batch_size=train.batch_size,
            learning_rate=train.learning_rate,
            momentum=train.momentum,
            weight_decay=train.weight_decay,
            warmup_epochs=train.warmup_epochs,
            schedule=train.schedule,
            patience=train.patience,
            checkpoint_dir=checkpoint_dir,
            tile_input=TileInput.from_settings(settings),
            augmentation=Augmentation.from_settings(settings),
            seed=train.seed,
            reader_workers=train.reader_workers,
            resume=resume,
            rule=data.rule,
            peer_timeout_s=train.peer_timeout_seconds,
        )

    def learning_rate_at(self, step: int, peak: float) -> float:
        """The learning rate of optimizer step ``step`` (from 1): linear warm-up to ``peak`` over
        ``warmup_epochs``, then constant, or (``schedule: cosine``) a half cosine down to
        :data:`COSINE_FLOOR` x ``peak`` at the last step of the last epoch."""
        warmup = max(1, round(self.warmup_epochs * self.steps_per_epoch))
        if step <= warmup or self.schedule == "constant":
            return peak * min(1.0, step / warmup)
        total = max(warmup + 1, self.epochs * self.steps_per_epoch)
        progress = min(1.0, (step - warmup) / (total - warmup))
        return peak * (COSINE_FLOOR + (1 - COSINE_FLOOR) * 0.5 * (1 + math.cos(math.pi * progress)))

    @property
    def steps_per_epoch(self) -> int:
        """Per worker; ``size`` workers together see about every training tile once per epoch."""
        return max(1, math.ceil(self.train_tiles / self.batch_size))


def checkpoint_path(directory: str, epoch: int) -> Path:
    return Path(directory) / f"epoch-{epoch:03d}.pt"


def best_path(directory: str) -> Path:
    return Path(directory) / "best.pt"


def epoch_log_path(directory: str) -> Path:
    """One JSON line per finished epoch, written by rank 0 after its checkpoint (the driver shows them)."""
    return Path(directory) / "epochs.jsonl"


def failure_path(directory: str, rank: str) -> Path:
    """Where a worker that failed leaves its error's first line, for the driver's message: on a cluster a
    worker's output reaches only its executor's log (and TorchDistributor's error names no cause)."""
    return Path(directory) / f"failed-rank-{rank}.txt"


def failure_reports(directory: str) -> list[Path]:
    """The :func:`failure_path` files the workers of the last attempt left."""
    return sorted(Path(directory).glob(failure_path("", "*").name))


def latest_checkpoint(directory: str) -> Path | None:
    """The newest per-epoch checkpoint, where a killed run resumes (losing at most the epoch in flight)."""
    found = sorted(Path(directory).glob("epoch-*.pt"))
    return found[-1] if found else None


def validation_logits(
    net: Any,
    files: tuple[str, ...],
    task: Task,
    tile_input: TileInput,
    batch_size: int,
    rule: SplitRule = BY_PATIENT,
    part: tuple[int, int] = (0, 1),
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and targets over the validation tiles of the task (``part`` = (i, n): every n-th tile from
    the i-th, a worker's share during training; all of them on the driver after), through the shared
    inference code (:func:`model.inference.tile_logits`)."""
    from model.inference import tile_logits

    index, parts = part
    frame = read_split(files, task, "val", rule).iloc[index::parts]
    targets = frame["label"].map(task.label_map).to_numpy(dtype=np.int64)
    if frame.empty:
        return np.zeros((0, len(task.classes))), targets
    return tile_logits(net, list(frame["pixels"]), tile_input, batch_size), targets
