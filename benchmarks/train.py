"""Training throughput of the Horovod + Petastorm path, against a plain in-memory PyTorch loop.

    .venv/bin/python benchmarks/train.py [--images 300] [--downscale 16] [--task mammo_normal_vs_abnormal]
        [--network compact] [--batch-size 32] [--epochs 5] [--cores 2] [--val-tiles 32] [--lake DIR]

It builds its own data: a synthetic corpus of ``--images`` images, ingested and tiled by the jobs'
library functions (``benchmarks/common.py``'s ``build_tiles``) into a temporary lakehouse, keeping only
the collections of ``--task``.
Then, on the same training tiles, in the same run, it measures:

``horovod_1``, ``horovod_2``
    the real training path: :func:`model.training.worker.train_worker` in ``num_proc`` = 1 and 2 Horovod
    workers through :func:`model.distributed.run_workers` on ``local[cores]``, each reading the tiles table's
    Parquet files at the pinned version with Petastorm's ``make_batch_reader`` (decode + augment in the
    reader's threads), with the plan ``fit_task`` makes (:meth:`model.training.common.TrainPlan.build`). The
    figure is the images/s the workers report (``history[i]["images_per_s"]``: task rows stepped / seconds of
    the epoch's step loop, summed over workers), averaged over epochs 2..E: epoch 1 is warm-up (reader pool
    start, first row groups, first allocations). Validation and checkpoints are outside that figure, but the
    reader threads keep decoding and augmenting while rank 0 validates; so that this untimed prefetch does not
    flatter the figure, rank 0 validates on a ``--val-tiles`` sample of the validation split (0: all of it).
``plain``
    a plain loop in this process over the same training tiles, decoded once with
    :meth:`model.data.TileInput.batch` into one tensor: the same network, loss (class weights), optimizer (SGD
    with the configured ``train.momentum`` and ``train.weight_decay``), batch size,
    ``torch.set_num_threads(cores)`` and number of timed steps as ``horovod_1`` (after 5 untimed warm-up
    steps), and no per-step data work at all. It is timed once before and once after the Horovod runs and
    averaged.
``petastorm_reader``, ``petastorm_reader_no_augment``
    the data path alone, in this process: :func:`model.training.worker.training_batches`, as ``train_worker``
    reads (one shard: ``make_batch_reader`` + ``BatchedDataLoader`` + ``task_batches``), drained as fast as it
    delivers for the same number of batches (after one untimed epoch), with the augmentation that
    ``train_worker`` always applies (:class:`model.data.Augmentation`, ``train.augment``) and without it.

Besides images/s it records CPU milliseconds per training image (all threads of the process), which a
load from other processes on the machine disturbs much less than wall time, and from them the ratio to
expect when compute and data share the cores: ``plain`` / (``plain`` + ``petastorm_reader``). The
training files also hold other splits' rows, which the reader decodes and ``task_batches`` drops; the
share of training rows is printed.

It prints one line per measurement, then the ratio ``horovod_1`` / ``plain`` (target >= 0.85: the data
path, augmentation included, costs under 15%), the other ratios and 2 workers / 1 worker on ``cores``
cores; the last line is one JSON object with those figures. Machines are noisy: read the ratios, not the
absolute times. ``--cores`` should equal the machine's cores: ``train_worker`` sizes its torch threads
from ``os.cpu_count()``, not from the Spark master.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from common import PeakMemory, build_tiles, corpus_arguments

from conf import load_settings
from core.quiet import quiet
from core.tasks import TASKS, Task
from jobs.session import build_spark
from model.data import READ_COLUMNS, TileInput, split_rows
from model.distributed import run_workers
from model.networks import build_network
from model.training.common import TaskData, TrainPlan, row_groups, task_data
from model.training.worker import train_worker, training_batches
from pipelines.io import current_version, table_exists

WARMUP_STEPS = 5


def task_rows(files: tuple[str, ...], task: Task, split: str = "train"):
    """All rows of the files (pandas), with a boolean ``wanted``: the split's rows of the task."""
    frame = pq.ParquetDataset([f.removeprefix("file:") for f in files]).read(columns=READ_COLUMNS).to_pandas()
    frame["wanted"] = split_rows(frame, task, split)
    return frame


def validation_sample(data: TaskData, task: Task, tiles: int, work: Path) -> tuple[tuple[str, ...], int]:
    """The first ``tiles`` validation tiles of the task in one Parquet file (all of them with 0)."""
    if tiles <= 0:
        return data.val_files, sum(data.counts["val"].values())
    table = pq.ParquetDataset([f.removeprefix("file:") for f in data.val_files]).read()  # every column
    wanted = task_rows(data.val_files, task, "val")["wanted"].to_numpy()
    sample = table.filter(pa.array(wanted)).slice(0, tiles)
    path = work / "val-sample.parquet"
    pq.write_table(sample, path)
    return (f"file:{path}",), sample.num_rows


def make_plan(
    settings, task: Task, data: TaskData, num_proc: int, work: Path, val: tuple[tuple[str, ...], int]
) -> TrainPlan:
    """The plan ``fit_task`` makes, but for ``val`` (files, tiles)."""
    directory = work / "checkpoints" / f"np{num_proc}"
    directory.mkdir(parents=True, exist_ok=True)
    plan = TrainPlan.build(settings, task, data, num_proc, str(directory))
    return dataclasses.replace(plan, val_files=val[0], val_tiles=val[1])


def horovod(spark, plan: TrainPlan, num_proc: int) -> dict:
    """``train_worker`` in ``num_proc`` Horovod workers; images/s per epoch as the workers report it."""
    started = time.perf_counter()
    with PeakMemory({"workers": lambda cmdline: "gloo_exec_fn" in cmdline}) as memory:
        state = run_workers(spark, train_worker, num_proc, (plan,))[0]
    wall = time.perf_counter() - started
    per_epoch = [float(r["images_per_s"]) for r in state["history"]]
    return {
        "images_per_s": statistics.mean(per_epoch[1:]),
        "per_epoch": per_epoch,
        "steps_per_epoch": plan.steps_per_epoch,
        "wall_s": wall,
        "peak_workers_rss_mb": memory.peak["workers"] / 2**20,
    }


class PlainLoop:
    """The same network, loss and optimizer as ``train_worker``, over in-memory tiles."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, plan: TrainPlan, batch_size: int) -> None:
        self.images, self.targets, self.batch_size = images, targets, batch_size
        self.net = build_network(plan.network, len(plan.task.classes))
        self.optimizer = torch.optim.SGD(
            self.net.parameters(),
            lr=plan.learning_rate,
            momentum=plan.momentum,
            weight_decay=plan.weight_decay,
        )
        self.loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor(plan.class_weights, dtype=torch.float32))
        self.order, self.position = torch.randperm(len(images)), 0
        self.net.train()

    def step(self) -> tuple[int, float, float]:
        """One optimizer step; returns (images, wall seconds, CPU seconds)."""
        wall, cpu = time.perf_counter(), time.process_time()
        if self.position + self.batch_size > len(self.order):
            self.order, self.position = torch.randperm(len(self.images)), 0
        index = self.order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        self.optimizer.zero_grad()
        loss = self.loss_fn(self.net(self.images[index]), self.targets[index])
        loss.backward()
        self.optimizer.step()
        float(loss)  # as train_worker does
        return len(index), time.perf_counter() - wall, time.process_time() - cpu


def plain_round(
    images: torch.Tensor,
    targets: torch.Tensor,
    plan: TrainPlan,
    sizes: dict[str, int],
    steps: int,
    cores: int,
) -> dict[str, dict]:
    """The plain loops, their steps interleaved one by one; images/s and CPU ms per image of each."""
    torch.set_num_threads(cores)
    torch.manual_seed(plan.seed)
    loops = {name: PlainLoop(images, targets, plan, size) for name, size in sizes.items()}
    totals = {name: [0, 0.0, 0.0] for name in loops}
    for step in range(WARMUP_STEPS + steps):
        for name, loop in loops.items():
            n, wall, cpu = loop.step()
            if step >= WARMUP_STEPS:
                totals[name] = [a + b for a, b in zip(totals[name], (n, wall, cpu), strict=True)]
    return {
        name: {"images_per_s": n / wall, "cpu_ms_per_image": 1000 * cpu / n, "batch_size": sizes[name]}
        for name, (n, wall, cpu) in totals.items()
    }


def petastorm_reader(plan: TrainPlan, steps: int, augment: bool) -> dict:
    """``train_worker``'s data path alone (one shard), drained for ``steps`` batches after one epoch."""
    with training_batches(plan, 0, 1, augment) as batches:
        for _ in range(plan.steps_per_epoch):
            next(batches)
        wall, cpu, seen = time.perf_counter(), time.process_time(), 0
        for _ in range(steps):
            seen += len(next(batches)[1])
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"images_per_s": seen / wall, "cpu_ms_per_image": 1000 * cpu / seen, "images": seen}


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    corpus_arguments(parser, 300)
    parser.add_argument("--task", default="mammo_normal_vs_abnormal", choices=sorted(TASKS))
    parser.add_argument("--network", default=None, help="default: the configuration's train.network")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the configuration's")
    parser.add_argument("--epochs", type=int, default=5, help="Horovod epochs; the first is warm-up")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Horovod num_proc values")
    parser.add_argument(
        "--val-tiles", type=int, default=32, help="validation tiles rank 0 scores per epoch (0: all)"
    )
    parser.add_argument(
        "--tile-files",
        type=int,
        default=0,
        help="repartition tiles into this many files (0: as the tile job)",
    )
    parser.add_argument(
        "--lake", type=Path, default=None, help="keep the lakehouse here; reused if it has tiles"
    )
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first is warm-up)")
    if args.cores != os.cpu_count():
        print(
            f"warning: --cores {args.cores} but os.cpu_count() is {os.cpu_count()}: "
            "train_worker sizes its torch threads from the latter",
            flush=True,
        )
    quiet()  # third-party warnings (Petastorm on this pyarrow) off in this process, as in the workers
    task = TASKS[args.task]
    work = Path(tempfile.mkdtemp(prefix="oncolake-bench-train-"))
    lake_root = args.lake or work / "lake"
    overrides = [f"lakehouse.root={lake_root}", f"spark.master=local[{args.cores}]"]
    overrides += [f"train.epochs={args.epochs}", f"train.patience={args.epochs + 1}"]  # no early stop
    overrides += [f"train.network={args.network}"] if args.network else []
    overrides += [f"train.batch_size={args.batch_size}"] if args.batch_size else []
    settings = load_settings("local", overrides)
    spark = build_spark(settings, "bench-train")
    figures: dict[str, dict] = {}
    try:
        tiles_path = settings.lakehouse.table("tiles")
        if table_exists(spark, tiles_path):
            print(f"data: reusing the tiles table in {lake_root}", flush=True)
        else:
            build_s = build_tiles(
                spark,
                settings,
                work,
                args.images,
                args.downscale,
                args.seed,
                task.collections,
                args.tile_files,
            )
            print(
                f"data: {args.images} images synthesised, ingested and tiled in {build_s:.0f} s", flush=True
            )
        version = current_version(spark, tiles_path)
        data = task_data(spark, tiles_path, version, task)
        frame = task_rows(data.train_files, task)
        train = frame[frame["wanted"]]
        fill = len(train) / len(frame)
        print(
            f"data: {args.task}@v{version}: {len(train)} training tiles in {len(data.train_files)} files, "
            f"{row_groups(data.train_files)} row groups; {fill:.0%} of the rows Petastorm reads are "
            f"training rows; counts {data.counts}",
            flush=True,
        )
        started = time.perf_counter()
        images = torch.from_numpy(TileInput.from_settings(settings).batch(list(train["pixels"])))
        targets = torch.tensor(train["label"].map(task.label_map).to_numpy(dtype=np.int64))
        decode_s = time.perf_counter() - started
        del frame, train

        val = validation_sample(data, task, args.val_tiles, work)
        plans = {n: make_plan(settings, task, data, n, work, val) for n in args.workers}
        reference = plans[min(args.workers)]
        steps = reference.steps_per_epoch * (args.epochs - 1)
        sizes = {"plain": reference.batch_size}
        print(
            f"setup: {len(images)} training tiles decoded once in {decode_s:.1f} s; {steps} timed steps of "
            f"{reference.batch_size} ({reference.network}); Horovod validation on {val[1]} tiles",
            flush=True,
        )
        rounds: dict[str, list[dict]] = {name: [] for name in sizes}

        def plain_rounds(when: str) -> None:
            for name, f in plain_round(images, targets, reference, sizes, steps, args.cores).items():
                rounds[name].append(f)
                print(
                    f"{name} ({when}): {f['images_per_s']:.1f} images/s, {f['cpu_ms_per_image']:.1f} CPU "
                    f"ms/image ({steps} steps of {f['batch_size']}, {args.cores} threads)",
                    flush=True,
                )

        plain_rounds("before")
        for name, augment in (("petastorm_reader", True), ("petastorm_reader_no_augment", False)):
            figures[name] = f = petastorm_reader(reference, steps, augment)
            print(
                f"{name}: {f['images_per_s']:.1f} images/s, {f['cpu_ms_per_image']:.1f} CPU ms/image "
                f"({steps} batches of {reference.batch_size} rows, "
                f"{reference.reader_workers} reader threads)",
                flush=True,
            )
        for n, plan in plans.items():
            figures[f"horovod_{n}"] = f = horovod(spark, plan, n)
            epochs = ", ".join(f"{v:.1f}" for v in f["per_epoch"])
            print(
                f"horovod_{n}: {f['images_per_s']:.1f} images/s over epochs 2..{args.epochs} "
                f"(per epoch: {epochs}; {plan.steps_per_epoch} steps/epoch/worker of {plan.batch_size} rows; "
                f"whole run {f['wall_s']:.0f} s; peak workers RSS {f['peak_workers_rss_mb']:.0f} MB)",
                flush=True,
            )
        plain_rounds("after")
        for name, measured in rounds.items():
            figures[name] = {
                "images_per_s": statistics.mean(r["images_per_s"] for r in measured),
                "cpu_ms_per_image": statistics.mean(r["cpu_ms_per_image"] for r in measured),
                "rounds_images_per_s": [r["images_per_s"] for r in measured],
                "batch_size": measured[0]["batch_size"],
                "steps": steps,
            }
    finally:
        spark.stop()
        shutil.rmtree(work, ignore_errors=True)

    one, two = figures[f"horovod_{min(args.workers)}"], figures.get("horovod_2")
    cpu = {name: f["cpu_ms_per_image"] for name, f in figures.items() if "cpu_ms_per_image" in f}
    result = {
        "benchmark": "train",
        "task": args.task,
        "network": reference.network,
        "batch_size": reference.batch_size,
        "cores": args.cores,
        "epochs": args.epochs,
        "images": args.images,
        "training_tiles": len(targets),
        "petastorm_training_row_fraction": fill,
        "ratio_horovod_petastorm_vs_plain": one["images_per_s"] / figures["plain"]["images_per_s"],
        "ratio_expected_from_cpu": cpu["plain"] / (cpu["plain"] + cpu["petastorm_reader"]),
        "ratio_2_vs_1_workers": two["images_per_s"] / one["images_per_s"] if two and two is not one else None,
        "images_per_s": {name: f["images_per_s"] for name, f in figures.items()},
        "cpu_ms_per_image": cpu,
        "details": figures,
    }
    two_vs_one = result["ratio_2_vs_1_workers"]
    print(
        f"ratio Horovod+Petastorm / plain: {result['ratio_horovod_petastorm_vs_plain']:.2f} "
        "(target >= 0.85); "
        f"expected from CPU ms/image: {result['ratio_expected_from_cpu']:.2f}; 2 / 1 workers: "
        + (f"{two_vs_one:.2f}" if two_vs_one is not None else "n/a"),
        flush=True,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
