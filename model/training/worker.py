"""The executor side of training: what every worker runs (``horovod/spark/torch``'s share).

Every worker reads its shard of the training tiles with Petastorm (``uint8`` tiles, decoded in the
reader's threads), normalises and augments whole batches on the torch side, steps with gradients averaged
over Gloo, and after each epoch rank 0 validates, checkpoints and decides on early stopping, then shares
that decision so every worker stops together. Every worker runs the same number of steps per epoch (the
reader repeats its shard), which keeps the collectives matched.

The loop itself (:func:`train_loop`) reaches the other workers only through a :class:`Collective`
(share an object from rank 0, start the model and optimizer in sync, reduce a figure), which each backend
implements: :class:`HorovodCollective` (``train_worker``, run by :func:`model.distributed.run_workers`)
and :class:`model.training.torch_backend.TorchCollective` (DDP, run by Spark's TorchDistributor).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from model.data import IGNORE, ReaderSpec, make_transform
from model.training.common import (
    TrainPlan,
    best_path,
    checkpoint_path,
    epoch_log_path,
    failure_path,
    latest_checkpoint,
    validation_logits,
)


class Collective(Protocol):
    """The collective operations training needs; rank 0 is the one that validates and checkpoints."""

    rank: int
    size: int
    local_size: int  # workers on this machine (they share its cores)

    def share(self, value: Any, name: str) -> Any:
        """Rank 0's ``value`` on every worker (the others pass a placeholder)."""

    def start(self, net: Any, optimizer: Any) -> tuple[Any, Any]:
        """Rank 0's weights and optimizer state everywhere; returns the module to step (its forward
        and backward average gradients, or ``net`` itself) and the optimizer to step."""

    def mean(self, value: float, name: str) -> float:
        """The mean of ``value`` over the workers."""

    def total(self, value: float, name: str) -> float:
        """The sum of ``value`` over the workers."""

    def gather(self, value: Any, name: str) -> list[Any]:
        """Every worker's ``value`` (picklable), in rank order, on every worker."""

    def close(self) -> None:
        """Leave the group."""


class HorovodCollective:
    """:class:`Collective` over Horovod (Gloo on Spark executors)."""

    def __init__(self) -> None:
        import horovod.torch as hvd

        hvd.init()
        self.hvd = hvd
        self.rank, self.size, self.local_size = hvd.rank(), hvd.size(), hvd.local_size()

    def share(self, value: Any, name: str) -> Any:
        # Explicit names: Horovod matches collectives by name, which broadcast_object otherwise takes from
        # the object's type, and rank 0's object differs in type from the placeholders the others pass.
        return self.hvd.broadcast_object(value, root_rank=0, name=name)

    def start(self, net: Any, optimizer: Any) -> tuple[Any, Any]:
        import torch

        if self.size == 1:  # nothing to average or broadcast
            return net, optimizer
        # Horovod's collectives take contiguous (NCHW) tensors only: the channels-last weights (and so
        # their gradients) go back to NCHW, in place (the optimizer keeps the same parameters).
        net.to(memory_format=torch.contiguous_format)
        self.hvd.broadcast_parameters(net.state_dict(), root_rank=0)
        self.hvd.broadcast_optimizer_state(optimizer, root_rank=0)
        return net, self.hvd.DistributedOptimizer(optimizer, named_parameters=net.named_parameters())

    def mean(self, value: float, name: str) -> float:
        import torch

        return float(self.hvd.allreduce(torch.tensor(value), name=name))

    def total(self, value: float, name: str) -> float:
        import torch

        return float(self.hvd.allreduce(torch.tensor(value), op=self.hvd.Sum, name=name))

    def gather(self, value: Any, name: str) -> list[Any]:
        return list(self.hvd.allgather_object(value, name=name))

    def close(self) -> None:
        self.hvd.shutdown()


def validation_auc(probabilities: Any, targets: Any) -> float:
    """Binary tasks: AUC of the positive class; more classes: macro one-vs-rest AUC; NaN with one class."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    if len(np.unique(targets)) < 2:
        return float("nan")
    if probabilities.shape[1] == 2:
        return float(roc_auc_score(targets, probabilities[:, 1]))
    return float(
        roc_auc_score(targets, probabilities, multi_class="ovr", labels=list(range(probabilities.shape[1])))
    )


def task_batches(
    batches: Iterator[dict[str, Any]], size: int, generator: Any = None
) -> Iterator[tuple[Any, Any]]:
    """Batches of exactly ``size`` task rows, gathered across the reader's batches.

    The reader's batches may also carry rows outside the task (marked ``IGNORE`` by the transform), so
    one of its batches holds fewer task rows than ``size``; rows left over after a batch is full start
    the next one, so nothing read is lost and ``steps_per_epoch`` full batches cover about every training
    tile of the shard once. With a ``generator`` the task rows of each reader batch are taken in a random
    order (one gather, which dropping the ignored rows needs anyway): the shuffle within row groups, on
    top of the reader's shuffled row groups and the table's hashed row order.
    """
    import torch

    images, targets, have = [], [], 0
    for batch in batches:
        wanted = torch.nonzero(batch["target"] != IGNORE).flatten()
        if not len(wanted):
            continue
        if generator is not None:
            wanted = wanted[torch.randperm(len(wanted), generator=generator)]
        images.append(batch["image"][wanted])
        targets.append(batch["target"][wanted])
        have += len(wanted)
        while have >= size:
            image, target = torch.cat(images), torch.cat(targets)
            yield image[:size], target[:size]
            images, targets, have = [image[size:]], [target[size:]], have - size


def worker_cores(local_size: int) -> int:
    """The cores one of ``local_size`` workers on this machine may use (its share of what it may run on)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, local_size))


def reader_threads(plan: TrainPlan, cores: int) -> int:
    """Petastorm decode threads: ``train.reader_workers``, else half the worker's cores (at least one):
    decoding releases the GIL, and the other half runs the training step's torch threads."""
    return plan.reader_workers or max(1, cores // 2)


@contextmanager
def training_batches(plan: TrainPlan, rank: int, size: int, threads: int = 1) -> Iterator[Iterator[tuple]]:
    """Worker ``rank`` of ``size``: its shard of the training files through Petastorm, endlessly, as
    batches of ``plan.batch_size`` task rows: ``uint8`` (n, 3, s, s) tiles and their class indices.

    The reader decodes in ``threads`` threads and holds few row groups at once (its results queue is
    sized in row groups, not in the whole shard), so a worker's memory does not grow with the table.
    Shuffling: row groups in a new random order every pass, rows within each in a random order
    (:func:`task_batches`); Petastorm's own shuffling buffer is not used (it copied its whole buffer on
    every add: most of the reader's CPU in ``benchmarks/train.py``).
    """
    from petastorm import make_batch_reader

    spec = ReaderSpec("train", plan.task, plan.tile_input, rule=plan.rule)
    reader = make_batch_reader(
        list(plan.train_files),
        num_epochs=None,
        cur_shard=rank,
        shard_count=size,
        shuffle_row_groups=True,
        seed=plan.seed + rank,
        workers_count=threads,
        results_queue_size=2 * threads,
        transform_spec=make_transform(spec),
    )
    try:
        import torch

        # Whole row groups straight from the reader (uint8 arrays, wrapped without a copy): a
        # BatchedDataLoader would re-batch them by concatenating, which task_batches does anyway.
        def tensor(array: Any) -> Any:  # Arrow hands some columns over read-only; torch wants to own them
            return torch.from_numpy(array if array.flags.writeable else array.copy())

        row_groups = ({"image": tensor(group.image), "target": tensor(group.target)} for group in reader)
        generator = torch.Generator().manual_seed(plan.seed * 1000 + rank)
        yield task_batches(row_groups, plan.batch_size, generator)
    finally:
        # stop + join is what the reader's context manager does, less its cache clean-up: there is no
        # cache, and the clean-up prints "Cache cleanup complete." on every worker.
        reader.stop()
        reader.join()


def augmented(plan: TrainPlan, images: Any, generator: Any) -> Any:
    """A uint8 training batch as the network's augmented float input (torch side, whole batch).

    Mammograms are grayscale (their three channels are copies): one channel is normalised and augmented
    and then shown to the network three times, a third of the work on identical values.
    """
    gray = plan.task.modality == "mammography"
    if gray:
        images = images[:, :1]
    out = plan.augmentation.batch(plan.tile_input.normalise(images), generator)
    return out.expand(-1, 3, -1, -1) if gray else out


def validate(net: Any, plan: TrainPlan, loss_fn: Any, group: Collective) -> tuple[float, float] | None:
    """Validation loss and AUC of ``net`` over every validation tile of the task, on rank 0 (``None`` on
    the others). Every worker scores its share of the tiles (on one machine the workers share its
    cores: one scoring alone leaves the others idle) and rank 0 gathers the logits."""
    import numpy as np
    import torch

    from model.calibration import calibrated

    parts = group.gather(
        validation_logits(
            net,
            plan.val_files,
            plan.task,
            plan.tile_input,
            plan.batch_size,
            plan.rule,
            part=(group.rank, group.size),
        ),
        "val_logits",
    )
    if group.rank != 0:
        return None
    logits = np.concatenate([p[0] for p in parts])
    targets = np.concatenate([p[1] for p in parts])
    if len(targets) != plan.val_tiles:
        raise RuntimeError(f"validation read {len(targets)} tiles, the table holds {plan.val_tiles}")
    if not len(targets):
        return float("nan"), float("nan")
    probabilities = calibrated(logits, 1.0)
    log_p = torch.log(torch.from_numpy(probabilities).clamp_min(1e-7))
    return float(loss_fn(log_p, torch.from_numpy(targets))), validation_auc(probabilities, targets)


def _resume(plan: TrainPlan, net: Any, optimizer: Any, state: dict[str, Any]) -> dict[str, Any]:
    """Rank 0: the state after the newest checkpoint, weights and optimizer loaded from it."""
    import torch

    latest = latest_checkpoint(plan.checkpoint_dir)
    if latest is None:
        return state
    saved = torch.load(latest, weights_only=False)
    net.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    return {k: saved[k] for k in state}


def _end_epoch(
    plan: TrainPlan, net: Any, optimizer: Any, state: dict[str, Any], record: dict[str, float]
) -> bool:
    """Rank 0: record the epoch, checkpoint it (and the best so far); whether to stop early."""
    import torch

    epoch, auc = int(record["epoch"]), record["val_auc"]
    state["history"].append(record)
    if (not math.isnan(auc) and auc > state["best_auc"]) or state["best_epoch"] < 0:
        state["best_auc"], state["best_epoch"] = (auc if not math.isnan(auc) else -1.0), epoch
        best = best_path(plan.checkpoint_dir)
        torch.save({"model": net.state_dict(), "epoch": epoch}, best.with_suffix(".partial"))
        os.replace(best.with_suffix(".partial"), best)
    state["epoch"] = epoch
    # Written under a temporary name, then renamed: a run killed mid-write leaves no torn checkpoint for
    # --resume to pick up.
    final = checkpoint_path(plan.checkpoint_dir, epoch)
    partial = final.with_suffix(".partial")
    torch.save({"model": net.state_dict(), "optimizer": optimizer.state_dict(), **state}, partial)
    os.replace(partial, final)
    # The driver prints this (model.training.runner.EpochLog): on a cluster, a worker's output only
    # reaches its executor's log.
    with open(epoch_log_path(plan.checkpoint_dir), "a") as log:
        log.write(json.dumps(record) + "\n")
    return epoch - state["best_epoch"] >= plan.patience


def train_loop(plan: TrainPlan, group: Collective) -> dict[str, Any]:
    """One worker's training run over ``group``; rank 0 returns the history and the best epoch, others
    ``{}``. Rank 0 shows one progress bar per epoch (steps, ETA, running loss)."""
    import torch
    from tqdm import tqdm

    from model.networks import build_network

    rank = group.rank
    torch.manual_seed(plan.seed + rank)
    generator = torch.Generator().manual_seed(plan.seed * 1000 + rank)
    cores = worker_cores(group.local_size)
    torch.set_num_threads(cores)
    net = build_network(plan.network, len(plan.task.classes))
    peak_lr = plan.learning_rate * group.size  # linear scaling with the number of workers, after warm-up
    optimizer = torch.optim.SGD(
        net.parameters(), lr=peak_lr, momentum=plan.momentum, weight_decay=plan.weight_decay
    )
    state: dict[str, Any] = {"epoch": 0, "best_auc": -1.0, "best_epoch": -1, "history": []}
    if rank == 0 and plan.resume:
        state = _resume(plan, net, optimizer, state)
    state = group.share(state, "train_state")
    model, optimizer = group.start(net, optimizer)
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor(plan.class_weights, dtype=torch.float32))

    with training_batches(plan, rank, group.size, reader_threads(plan, cores)) as batches:
        for epoch in range(state["epoch"], plan.epochs):
            net.train()
            started, loss_sum, seen = time.monotonic(), 0.0, 0
            progress = tqdm(
                range(plan.steps_per_epoch),
                desc=f"train: epoch {epoch + 1}/{plan.epochs}",
                unit="step",
                disable=rank != 0,
                leave=False,
                mininterval=2.0,
            )
            for step in progress:
                done = epoch * plan.steps_per_epoch + step + 1
                for param_group in optimizer.param_groups:
                    param_group["lr"] = plan.learning_rate_at(done, peak_lr)
                images, targets = next(batches)
                optimizer.zero_grad()
                loss = loss_fn(model(augmented(plan, images, generator)), targets)
                loss.backward()
                optimizer.step()
                loss_sum += float(loss)
                seen += len(targets)
                progress.set_postfix(loss=f"{loss_sum / (step + 1):.4f}", refresh=False)
            progress.close()
            elapsed = time.monotonic() - started
            train_loss = group.mean(loss_sum / plan.steps_per_epoch, "train_loss")
            images_per_s = group.total(seen / elapsed, "images_per_s")

            decision = None
            validated = validate(net, plan, loss_fn, group)
            if validated is not None:
                val_loss, auc = validated
                record = {
                    "epoch": epoch + 1,
                    "train_loss": train_loss,
                    "val_loss": val_loss,
                    "val_auc": auc,
                    "images_per_s": images_per_s,
                    "lr": plan.learning_rate_at(done, peak_lr),
                }
                decision = _end_epoch(plan, net, optimizer, state, record)
            if group.share(decision, "early_stop"):
                break
    return state if rank == 0 else {}


def run_in_group(plan: TrainPlan, join: Callable[[], Collective]) -> dict[str, Any]:
    """One process's training run: quiet third-party warnings, ``join`` the group, :func:`train_loop`."""
    from core.quiet import quiet

    quiet()
    try:
        group = join()
        result = train_loop(plan, group)
    except Exception as error:
        rank = os.environ.get("HOROVOD_RANK", os.environ.get("RANK", "unknown"))
        first = (str(error).strip().splitlines() or [""])[0]
        failure_path(plan.checkpoint_dir, rank).write_text(f"{type(error).__name__}: {first[:500]}\n")
        raise
    group.close()  # not on failure: the run fails anyway, and a shutdown could wait on a dead peer
    return result


def train_worker(plan: TrainPlan) -> dict[str, Any]:
    """One Horovod worker's training run (:func:`train_loop` over a :class:`HorovodCollective`)."""
    return run_in_group(plan, HorovodCollective)
