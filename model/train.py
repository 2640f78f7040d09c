"""Data-parallel training in Horovod workers on the Spark executors.

:func:`train_worker` is what every worker runs (through :func:`model.distributed.run_workers`): it reads
its shard of the training tiles with Petastorm, steps a ``DistributedOptimizer`` (gradients averaged
with Gloo allreduce), and after each epoch rank 0 validates, checkpoints and decides on early stopping,
then broadcasts that decision so every worker stops together. Every worker runs the same number of steps
per epoch (the reader repeats its shard), which keeps the allreduces matched.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.calibration import calibrated, choose_threshold, fit_temperature
from model.data import BY_PATIENT, IGNORE, ReaderSpec, SplitRule, make_transform, tile_to_array
from core.tasks import Task


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
    warmup_epochs: float
    patience: int
    checkpoint_dir: str
    seed: int = 0
    reader_workers: int = 2
    resume: bool = False
    rule: SplitRule = BY_PATIENT

    @property
    def steps_per_epoch(self) -> int:
        """Per worker; ``size`` workers together see about every training tile once per epoch."""
        return max(1, math.ceil(self.train_tiles / self.batch_size))


def checkpoint_path(directory: str, epoch: int) -> Path:
    return Path(directory) / f"epoch-{epoch:03d}.pt"


def best_path(directory: str) -> Path:
    return Path(directory) / "best.pt"


def latest_checkpoint(directory: str) -> Path | None:
    """The newest per-epoch checkpoint, where a killed run resumes (losing at most the epoch in flight)."""
    found = sorted(Path(directory).glob("epoch-*.pt"))
    return found[-1] if found else None


def validation_logits(
    net: Any, files: tuple[str, ...], task: Task, batch_size: int, rule: SplitRule = BY_PATIENT
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and targets over the whole validation split (rank 0 during training; the driver after).

    Read with pyarrow rather than a second Petastorm reader: inside a worker that already runs the
    (endless) training reader, a one-epoch Petastorm reader intermittently ended without yielding
    anything, and validation must see every validation tile, every epoch.
    """
    import pyarrow.parquet as pq
    import torch

    columns = ["split", "image_id", "collection", "label", "pixels"]
    frame = pq.ParquetDataset([f.removeprefix("file:") for f in files]).read(columns=columns).to_pandas()
    frame = frame[
        (rule.of(frame) == "val")
        & frame["collection"].isin(list(task.collections))
        & frame["label"].isin(list(task.label_map))
    ]
    logits = []
    net.eval()
    with torch.no_grad():
        for start in range(0, len(frame), batch_size):
            chunk = frame["pixels"].iloc[start : start + batch_size]
            images = torch.from_numpy(np.stack([tile_to_array(png) for png in chunk]))
            logits.append(net(images).numpy())
    targets = frame["label"].map(task.label_map).to_numpy(dtype=np.int64)
    if not logits:
        return np.zeros((0, len(task.classes))), targets
    return np.concatenate(logits), targets


def validation_auc(probabilities: np.ndarray, targets: np.ndarray) -> float:
    """Binary tasks: AUC of the positive class; more classes: macro one-vs-rest AUC; NaN with one class."""
    from sklearn.metrics import roc_auc_score

    if len(np.unique(targets)) < 2:
        return float("nan")
    if probabilities.shape[1] == 2:
        return float(roc_auc_score(targets, probabilities[:, 1]))
    return float(
        roc_auc_score(targets, probabilities, multi_class="ovr", labels=list(range(probabilities.shape[1])))
    )


def task_batches(batches: Iterator[dict[str, Any]], size: int) -> Iterator[tuple[Any, Any]]:
    """Batches of exactly ``size`` task rows, gathered across the reader's batches.

    The reader's batches also carry rows of other splits and collections (marked ``IGNORE`` by the
    transform), so one of its batches holds fewer task rows than ``size``; rows left over after a batch
    is full start the next one, so nothing read is lost and ``steps_per_epoch`` full batches cover about
    every training tile of the shard once.
    """
    import torch

    images, targets, have = [], [], 0
    for batch in batches:
        wanted = batch["target"] != IGNORE
        if not bool(wanted.any()):
            continue
        images.append(batch["image"][wanted])
        targets.append(batch["target"][wanted])
        have += int(wanted.sum())
        while have >= size:
            image, target = torch.cat(images), torch.cat(targets)
            yield image[:size], target[:size]
            images, targets, have = [image[size:]], [target[size:]], have - size


@contextmanager
def training_batches(
    plan: TrainPlan, rank: int, size: int, augment: bool = True
) -> Iterator[Iterator[tuple]]:
    """Worker ``rank`` of ``size``: its shard of the training files through Petastorm, endlessly, as
    batches of ``plan.batch_size`` task rows (decoded and augmented in the reader's threads)."""
    from petastorm import make_batch_reader
    from petastorm.pytorch import BatchedDataLoader

    spec = ReaderSpec("train", plan.task, augment=augment, seed=plan.seed * 1000 + rank, rule=plan.rule)
    with make_batch_reader(
        list(plan.train_files),
        num_epochs=None,
        cur_shard=rank,
        shard_count=size,
        shuffle_row_groups=True,
        seed=plan.seed + rank,
        workers_count=plan.reader_workers,
        transform_spec=make_transform(spec),
    ) as reader:
        loader = BatchedDataLoader(
            reader, batch_size=plan.batch_size, shuffling_queue_capacity=4 * plan.batch_size
        )
        yield task_batches(iter(loader), plan.batch_size)


def train_worker(plan: TrainPlan) -> dict[str, Any]:
    """One Horovod worker's training run; rank 0 returns the history and the best epoch, others ``{}``."""
    import horovod.torch as hvd
    import torch

    from model.networks import build_network

    hvd.init()
    rank, size = hvd.rank(), hvd.size()
    torch.manual_seed(plan.seed + rank)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // hvd.local_size()))
    net = build_network(plan.network, len(plan.task.classes))
    peak_lr = plan.learning_rate * size  # linear scaling with the number of workers, reached after warm-up
    optimizer = torch.optim.SGD(net.parameters(), lr=peak_lr, momentum=0.9, weight_decay=1e-4)

    state: dict[str, Any] = {"epoch": 0, "best_auc": -1.0, "best_epoch": -1, "history": []}
    if rank == 0 and plan.resume:
        latest = latest_checkpoint(plan.checkpoint_dir)
        if latest is not None:
            saved = torch.load(latest, weights_only=False)
            net.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            state = {k: saved[k] for k in state}
            print(f"train: resuming after epoch {state['epoch']} from {latest.name}", flush=True)
    # Explicit names: Horovod matches collectives by name, which broadcast_object otherwise takes from the
    # object's type, and rank 0's object differs in type from the placeholders the other ranks pass.
    state = hvd.broadcast_object(state, root_rank=0, name="train_state")
    hvd.broadcast_parameters(net.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(optimizer, root_rank=0)
    optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=net.named_parameters())
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor(plan.class_weights, dtype=torch.float32))
    warmup_steps = max(1, round(plan.warmup_epochs * plan.steps_per_epoch))

    with training_batches(plan, rank, size) as batches:
        for epoch in range(state["epoch"], plan.epochs):
            net.train()
            started, loss_sum, seen = time.monotonic(), 0.0, 0
            for step in range(plan.steps_per_epoch):
                done = epoch * plan.steps_per_epoch + step + 1
                for group in optimizer.param_groups:
                    group["lr"] = peak_lr * min(1.0, done / warmup_steps)
                images, targets = next(batches)
                optimizer.zero_grad()
                loss = loss_fn(net(images), targets)
                loss.backward()
                optimizer.step()
                loss_sum += float(loss)
                seen += len(targets)
            elapsed = time.monotonic() - started
            train_loss = float(
                hvd.allreduce(torch.tensor(loss_sum / plan.steps_per_epoch), name="train_loss")
            )
            images_per_s = float(hvd.allreduce(torch.tensor(seen / elapsed), op=hvd.Sum, name="images_per_s"))

            decision = None
            if rank == 0:
                logits, targets = validation_logits(
                    net, plan.val_files, plan.task, plan.batch_size, plan.rule
                )
                probabilities = calibrated(logits, 1.0)
                if len(targets) != plan.val_tiles:
                    raise RuntimeError(
                        f"validation read {len(targets)} tiles, the table holds {plan.val_tiles}"
                    )
                auc = validation_auc(probabilities, targets)
                val_loss = (
                    float(
                        loss_fn(
                            torch.log(torch.from_numpy(probabilities).clamp_min(1e-7)),
                            torch.from_numpy(targets),
                        )
                    )
                    if len(targets)
                    else float("nan")
                )
                record = {
                    "epoch": epoch + 1,
                    "train_loss": train_loss,
                    "val_loss": val_loss,
                    "val_auc": auc,
                    "images_per_s": images_per_s,
                    "lr": peak_lr * min(1.0, done / warmup_steps),
                }
                state["history"].append(record)
                improved = not math.isnan(auc) and auc > state["best_auc"]
                if improved or state["best_epoch"] < 0:
                    state["best_auc"], state["best_epoch"] = (auc if not math.isnan(auc) else -1.0), epoch + 1
                    torch.save(
                        {"model": net.state_dict(), "epoch": epoch + 1}, best_path(plan.checkpoint_dir)
                    )
                state["epoch"] = epoch + 1
                torch.save(
                    {"model": net.state_dict(), "optimizer": optimizer.state_dict(), **state},
                    checkpoint_path(plan.checkpoint_dir, epoch + 1),
                )
                print(
                    f"train: epoch {epoch + 1}/{plan.epochs} loss {train_loss:.4f} val_loss {val_loss:.4f} "
                    f"val_auc {auc:.3f} {images_per_s:.1f} images/s",
                    flush=True,
                )
                decision = epoch + 1 - state["best_epoch"] >= plan.patience
            if hvd.broadcast_object(decision, root_rank=0, name="early_stop"):
                if rank == 0:
                    print(f"train: early stop, best epoch {state['best_epoch']}", flush=True)
                break
    hvd.shutdown()
    return state if rank == 0 else {}


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

    def lineage(self) -> dict[str, Any]:
        return {"table": self.table, "version": self.version, "filter": self.condition, "counts": self.counts}


def task_condition(task: Task) -> str:
    """The rows of the tiles table a task uses: its modality and collections, labels it knows."""
    collections = ", ".join(f"'{c}'" for c in task.collections)
    labels = ", ".join(f"'{label}'" for label in task.label_map)
    condition = f"collection IN ({collections}) AND label IN ({labels})"
    return condition if task.modality == "any" else f"modality = '{task.modality}' AND {condition}"


def task_data(spark: Any, table: str, version: int, task: Task, rule: SplitRule = BY_PATIENT) -> TaskData:
    """Counts per split and label, and the files holding each split's rows, at ``version``.

    With an image-level ``rule`` (the leakage audit) every split may be in any file, so each split gets
    all of the task's files and the readers pick their rows by the rule.
    """
    from pyspark.sql import functions as F

    from pipelines.io import files_holding, read_table

    condition = task_condition(task)
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
            s: tuple(files_holding(spark, table, version, f"{condition} AND split = '{s}'"))
            for s in ("train", "val", "test")
        }
    else:
        every = tuple(files_holding(spark, table, version, condition))
        files = dict.fromkeys(("train", "val", "test"), every)
    return TaskData(table, version, condition, counts, files["train"], files["val"], files["test"], rule)


def class_weights(task: Task, train_counts: dict[str, int]) -> tuple[float, ...]:
    """Inverse-frequency class weights, so a rare class weighs as much as a common one in the loss."""
    per_class = [0] * len(task.classes)
    for label, count in train_counts.items():
        if label in task.label_map:
            per_class[task.label_map[label]] += count
    total = sum(per_class)
    return tuple(total / (len(per_class) * n) if n else 0.0 for n in per_class)


def row_groups(files: tuple[str, ...]) -> int:
    """How many Parquet row groups the files hold: each Horovod worker's shard needs at least one."""
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(f.removeprefix("file:")).num_row_groups for f in files)


def fit_task(
    spark: Any,
    settings: Any,
    task: Task,
    data: TaskData,
    num_proc: int,
    resume_run_id: str | None = None,
) -> dict[str, Any]:
    """Train one task's model with Horovod on the executors, tracked in one MLflow run.

    Returns:
        ``run_id``, the training ``history`` and the ``best_epoch``/``best_auc``; the best weights are in
        the run's checkpoint folder.
    """
    import json

    import mlflow

    from model.distributed import run_workers
    from model.tracking import flat_params

    train_counts = data.counts.get("train", {})
    if not train_counts or not data.counts.get("val"):
        raise ValueError(f"{task.name}: no training or validation tiles in {data.table}@{data.version}")
    groups = row_groups(data.train_files)
    if groups < num_proc:
        raise ValueError(
            f"{task.name}: {groups} row groups of training tiles for {num_proc} workers; rewrite tiles"
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
                }
            )
        directory = Path(settings.lakehouse.root) / "checkpoints" / run.info.run_id
        directory.mkdir(parents=True, exist_ok=True)
        train = settings.train
        plan = TrainPlan(
            task=task,
            network=train.network,
            train_files=data.train_files,
            val_files=data.val_files,
            train_tiles=sum(train_counts.values()) // num_proc,
            val_tiles=sum(data.counts["val"].values()),
            class_weights=class_weights(task, train_counts),
            epochs=train.epochs,
            batch_size=train.batch_size,
            learning_rate=train.learning_rate,
            warmup_epochs=train.warmup_epochs,
            patience=train.patience,
            checkpoint_dir=str(directory),
            seed=train.seed,
            reader_workers=train.reader_workers,
            resume=resume_run_id is not None,
            rule=data.rule,
        )
        state = run_workers(spark, train_worker, num_proc, (plan,))[0]
        for record in state["history"]:
            step = int(record["epoch"])
            mlflow.log_metrics(
                {k: v for k, v in record.items() if k != "epoch" and not math.isnan(v)}, step=step
            )
        mlflow.log_metrics({"best_epoch": state["best_epoch"], "best_val_auc": state["best_auc"]})
        if data.rule.by == "image":  # the leakage audit: figures only, never a registered model
            table = audit_figures(settings, task, data, directory)
            with tempfile.TemporaryDirectory() as folder:
                table.to_csv(Path(folder) / "figures.csv", index=False)
                mlflow.log_artifact(str(Path(folder) / "figures.csv"), artifact_path="audit")
            mlflow.set_tag("audit", "image-level split")
            return {"run_id": run.info.run_id, "checkpoint_dir": str(directory), "version": None, **state}
        version = register_best(settings, task, data, directory, state)
        return {"run_id": run.info.run_id, "checkpoint_dir": str(directory), "version": version, **state}


@dataclass(frozen=True)
class Calibrated:
    """The best epoch's network with its validation-fitted temperature and decision threshold."""

    net: Any
    weights: dict[str, Any]
    temperature: float
    threshold: float
    rule: str

    def predict(self, classes: int, batch_size: int) -> Any:
        from model.inference import predict_tiles

        return lambda pixels: predict_tiles(self.net, pixels, classes, self.temperature, batch_size)


def calibrate(settings: Any, task: Task, data: TaskData, directory: Path) -> Calibrated:
    """Load the best epoch and fit its temperature and threshold on the validation split only.

    The temperature is fitted on the labelled validation tiles; the decision threshold by the configured
    rule (``evaluate.threshold_rule``) on validation *image* scores, aggregated from tiles exactly as
    scoring does, since scoring applies it to images.
    """
    import torch

    from model.evaluation import level_frames, score_split
    from model.networks import build_network

    weights = torch.load(best_path(str(directory)), weights_only=False)["model"]
    net = build_network(settings.train.network, len(task.classes))
    net.load_state_dict(weights)
    batch = settings.train.batch_size
    logits, targets = validation_logits(net, data.val_files, task, batch, data.rule)
    fitted = Calibrated(net, weights, fit_temperature(logits, targets), 0.5, "")
    scores = score_split(data.val_files, task, "val", fitted.predict(len(task.classes), batch), data.rule)
    images = level_frames(scores, task)["image"]
    rule = settings.evaluate
    threshold = choose_threshold(
        images["target"].to_numpy(), images["score"].to_numpy(), rule.threshold_rule, rule.target_sensitivity
    )
    described = (
        f"image-level validation sensitivity >= {rule.target_sensitivity:g} on p_{task.positive}"
        if rule.threshold_rule == "sensitivity"
        else f"image-level validation Youden index on p_{task.positive}"
    )
    return Calibrated(net, weights, fitted.temperature, threshold, described)


def audit_figures(settings: Any, task: Task, data: TaskData, directory: Path) -> Any:
    """The leakage audit's test figures: the image-split model on its own (image-split) test tiles."""
    from model.evaluation import figures, figures_frame, level_frames, score_split

    fitted = calibrate(settings, task, data, directory)
    predict = fitted.predict(len(task.classes), settings.train.batch_size)
    tiles = score_split(data.test_files, task, "test", predict, data.rule)
    table = figures(level_frames(tiles, task), task, fitted.threshold, settings.evaluate.bootstrap_rounds)
    return figures_frame(table)


def register_best(settings: Any, task: Task, data: TaskData, directory: Path, state: dict[str, Any]) -> str:
    """Calibrate the best epoch on the validation split, log it as the pyfunc model, register the challenger.

    Temperature and threshold (:func:`calibrate`) are recorded on the version; test figures and the
    promotion gate belong to evaluation.
    """
    import json

    import pyarrow.parquet as pq

    from model.tracking import log_tile_model, register

    fitted = calibrate(settings, task, data, directory)
    temperature, threshold, described = fitted.temperature, fitted.threshold, fitted.rule
    example = pq.ParquetFile(data.val_files[0].removeprefix("file:")).read_row_group(0, columns=["pixels"])
    pixels = example["pixels"].to_pylist()[:2]
    info = log_tile_model(fitted.weights, settings.train.network, list(task.classes), temperature, pixels)
    tags = {
        "task": task.name,
        "lineage.table": data.table,
        "lineage.version": str(data.version),
        "best_epoch": str(state["best_epoch"]),
        "best_val_auc": f"{state['best_auc']:.4f}",
        "calibration.temperature": f"{temperature:.4f}",
        "threshold": f"{threshold:.6f}",
        "threshold.rule": described,
    }
    description = (
        f"{task.name}: {', '.join(task.classes)} from {data.table}@{data.version} "
        f"(counts {json.dumps(data.counts, sort_keys=True)}); temperature {temperature:.3f} and threshold "
        f"{threshold:.3f} ({described}) fitted on the validation split. Research use only; not a "
        "diagnostic device. Test figures: see the evaluation report."
    )
    return register(info.model_uri, f"{settings.train.model_prefix}{task.name}", tags, description)
