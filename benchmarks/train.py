"""Training throughput, CPU and memory of both distributed backends, against a plain in-memory loop.

    .venv/bin/python benchmarks/train.py [--images 300] [--downscale 16] [--task mammo_normal_vs_abnormal]
        [--network compact] [--batch-size 32] [--epochs 5] [--cores 2] [--workers 1 2] [--val-tiles 32]
        [--backends horovod torch_distributor] [--scale 4] [--scale-epochs 2] [--lake DIR]

It builds its own data: a synthetic corpus of ``--images`` images, ingested and tiled by the jobs'
library functions (``benchmarks/common.py``'s ``build_tiles``) into a temporary lakehouse (``--lake``:
kept there, and reused when it already has tiles), keeping only the collections of ``--task``.
Then, on the same training tiles, in the same run, it measures:

``decode_*``
    a decoder micro-benchmark on the real training tiles (their PNG bytes), one thread: ms per tile of
    :func:`core.codec.decode_png` (imagecodecs, what the reader uses), Pillow (``Image.open`` +
    ``np.array``) and ``torchvision.io.decode_png``, each over every training tile (repeated to at least
    ``DECODE_TILES`` decodes), each checked to give the same pixels.
``plain``
    a plain loop in this process over the same training tiles, decoded once into one uint8 tensor
    (:meth:`model.data.TileInput.pixel_batch`); each step indexes a batch of it (a fresh permutation per
    pass), then does exactly the per-step work of :func:`model.training.worker.train_loop`:
    :meth:`model.data.TileInput.normalise`, :meth:`model.data.Augmentation.batch` with a
    ``torch.Generator``, forward, loss (class weights), backward, SGD step (the configured momentum and
    weight decay), ``float(loss)``, on ``torch.set_num_threads(cores)``. So the ratios to it measure the
    data path and nothing else. It runs the number of timed steps of one 1-worker run (epochs 2..E), after
    5 untimed warm-up steps; it is timed in rounds: at the start, just before the first distributed run and
    after each one. A machine's speed drifts over a run of many minutes (other processes, caches, clocks:
    rounds of one run differed by 20 %), so each backend's ratio is to the mean of the two rounds on either
    side of its own run; ``plain`` reports the mean of all rounds.
    CPU ms/image: ``time.process_time`` of this process over the timed steps.
``plain_1_thread``
    the same plain loop once more on 1 torch thread (not a target: it shows whether ``cores`` torch
    threads help at all on this machine, which a load from other processes can turn around).
``data_path``
    the data path alone, in this process: :func:`model.training.worker.training_batches` (one shard, the
    reader threads a 1-worker run uses: :func:`~model.training.worker.reader_threads` of
    :func:`~model.training.worker.worker_cores`), drained of uint8 batches as fast as it delivers them,
    no training, for the same number of batches after one untimed epoch; images/s and CPU ms/image
    (``time.process_time``: every thread of this process, the reader's included).
``petastorm_converter``
    Petastorm's own Spark route on the same tiles: ``petastorm.spark.make_spark_converter`` of the task's
    training rows of the tiles table (columns ``pixels``, ``label``; the cache under the run's work
    folder), its copy (materialisation) timed, then ``converter.make_torch_dataloader`` (its default
    row-wise ``DataLoader``, the product's reader threads, a shuffling buffer of 4 batches: without one
    its rows come in file order; the product shuffles rows in its own gather instead) with a
    ``TransformSpec`` that decodes the PNGs to uint8 and the labels to class indices, and the plain loop's
    training step on each batch, in this process (1 process, ``cores`` torch threads); one untimed epoch
    of steps, then the same number of timed steps as ``plain``. Reported with the copy time added to the
    timed steps' seconds (amortised over them) and without it.
``horovod_N``, ``torch_distributor_N``
    the product's training path: :func:`model.training.runner.run_training` with each backend of
    ``--backends`` (Horovod: ``train_worker`` via ``run_workers``; TorchDistributor: ``torch_worker``, DDP
    over Gloo, ``local_mode=False``) in ``num_proc`` = each of ``--workers`` processes on ``local[cores]``,
    with the plan ``fit_task`` makes (:meth:`model.training.common.TrainPlan.build`), each worker reading
    the tiles table's Parquet files at the pinned version with Petastorm's ``make_batch_reader``. The
    images/s are the workers' own figure (``history[i]["images_per_s"]``: task rows stepped / seconds of
    the epoch's step loop, summed over workers), averaged over epochs 2..E: epoch 1 is warm-up (reader
    start, first row groups, first allocations). Validation and checkpoints are outside that figure, but
    the reader threads keep decoding while rank 0 validates; so that this untimed prefetch does not
    flatter the figure, rank 0 validates on a ``--val-tiles`` sample of the validation split (0: all).

    CPU ms per training image: the CPU time (user + system) of the training process trees (Horovod: every
    ``horovod.spark.task.gloo_exec_fn`` process and its descendants; TorchDistributor: every
    ``pyspark.ml.torch.torch_run_process_wrapper`` process and its descendants, ``torchrun`` and the
    worker it starts), sampled every ``SAMPLE_S`` seconds (:class:`common.PeakMemory`), read at the
    modification times of the epoch-1 and epoch-E checkpoints (interpolated between samples) and divided
    by the images all workers stepped in epochs 2..E. That window also holds rank 0's validation on the
    sample and its checkpoints of those epochs, which are part of the product's path; Spark's own
    processes (JVM, Python daemons) and this driver are not counted.

    Peak memory: the largest PSS sum (``psutil`` ``memory_full_info().pss``: shared pages divided among
    the processes mapping them) over the same process trees, and the RSS sum beside it.
``<backend>_1_x<scale>``
    memory as the table grows: with ``--scale`` > 1 a second lakehouse is built the same way from
    ``scale`` x ``--images`` images (``--lake``: beside it, ``DIR-x<scale>``, also reused), and the first of
    ``--backends`` trains on it in 1 worker for ``--scale-epochs`` epochs (the reader holds a few row groups
    at a time, so its peak is reached within the first epoch); ``pss_scale_ratio`` is its peak PSS over the
    1-worker run's on the benchmark's table (target: within 1.25).

It prints one line per measurement, then the ratios: each backend's 1 worker / ``plain`` (target >= 0.85:
the data path costs under 15%), 2 workers / 1 worker on ``cores`` cores, ``petastorm_converter`` /
``plain`` (the product should be ahead of it: ``product_vs_petastorm_converter`` > 1) and the ratio to
expect from CPU alone when compute and data share the cores: ``plain`` / (``plain`` + ``data_path``) CPU
ms/image. The last line is one JSON object with those figures. Machines are noisy, and a load from other
processes slows a 2-thread torch step far more than a 1-thread one: read the ratios, not the absolute
times, and run it on an otherwise idle machine. ``--cores`` should equal the cores this process may run
on: the workers size their torch and reader threads from those.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from common import PeakMemory, build_tiles, corpus_arguments

from conf import load_settings
from core.codec import decode_png
from core.quiet import quiet
from core.tasks import TASKS, Task
from jobs.session import build_spark
from model.data import READ_COLUMNS, TileInput, split_rows
from model.networks import build_network
from model.training.common import TaskData, TrainPlan, checkpoint_path, row_groups, task_data
from model.training.runner import BACKENDS, run_training
from model.training.worker import augmented, reader_threads, training_batches, worker_cores
from pipelines.io import current_version, read_table, table_exists

WARMUP_STEPS = 5
SAMPLE_S = 0.25  # memory and CPU sampling period of the training process trees
DECODE_TILES = 500  # decodes per decoder, at least
MB = 2**20

# The training processes of each backend: the root of each process tree (its descendants count too).
WORKER_ROOTS: dict[str, Callable[[str], bool]] = {
    "horovod": lambda cmdline: "gloo_exec_fn" in cmdline,
    "torch_distributor": lambda cmdline: "torch_run_process_wrapper" in cmdline,
}


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
    path = work / f"val-sample-{data.version}-{abs(hash(data.val_files))}.parquet"
    pq.write_table(sample, path)
    return (f"file:{path}",), sample.num_rows


def make_plan(
    settings, task: Task, data: TaskData, num_proc: int, directory: Path, val: tuple[tuple[str, ...], int]
) -> TrainPlan:
    """The plan ``fit_task`` makes, but for ``val`` (files, tiles) and checkpoints in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    plan = TrainPlan.build(settings, task, data, num_proc, str(directory))
    return dataclasses.replace(plan, val_files=val[0], val_tiles=val[1])


def distributed(spark, backend: str, plan: TrainPlan, num_proc: int) -> dict:
    """``run_training`` in ``num_proc`` processes of ``backend``: images/s per epoch as the workers report
    it, CPU ms per image of epochs 2..E and peak PSS/RSS of the training process trees."""
    started = time.perf_counter()
    groups = {"workers": WORKER_ROOTS[backend]}
    with PeakMemory(groups, every=SAMPLE_S, descendants=True) as memory:
        state = run_training(spark, backend, plan, num_proc)
    wall = time.perf_counter() - started
    per_epoch = [float(r["images_per_s"]) for r in state["history"]]
    if len(per_epoch) != plan.epochs:
        raise RuntimeError(f"{backend}: {len(per_epoch)} epochs recorded, {plan.epochs} planned")
    first, last = (checkpoint_path(plan.checkpoint_dir, e).stat().st_mtime for e in (1, plan.epochs))
    cpu_s = memory.cpu_between("workers", first, last)
    images = num_proc * plan.steps_per_epoch * plan.batch_size * (plan.epochs - 1)
    if not memory.cpu["workers"] or memory.peak_pss["workers"] == 0:
        raise RuntimeError(f"{backend}: no training process seen (the process-tree test is stale?)")
    return {
        "images_per_s": statistics.mean(per_epoch[1:]),
        "per_epoch": per_epoch,
        "cpu_ms_per_image": 1000 * cpu_s / images,
        "cpu_s_epochs_2_to_E": cpu_s,
        "timed_images": images,
        "steps_per_epoch": plan.steps_per_epoch,
        "epochs": plan.epochs,
        "wall_s": wall,
        "peak_pss_mb": memory.peak_pss["workers"] / MB,
        "peak_rss_mb": memory.peak_rss["workers"] / MB,
    }


class PlainLoop:
    """``train_loop``'s per-step work (normalise, augment, forward, backward, step) on given batches."""

    def __init__(self, plan: TrainPlan) -> None:
        self.plan = plan
        self.net = build_network(plan.network, len(plan.task.classes))
        self.optimizer = torch.optim.SGD(
            self.net.parameters(),
            lr=plan.learning_rate,
            momentum=plan.momentum,
            weight_decay=plan.weight_decay,
        )
        self.loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor(plan.class_weights, dtype=torch.float32))
        self.generator = torch.Generator().manual_seed(plan.seed * 1000)
        self.net.train()

    def step(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        """One optimizer step on a uint8 batch, as ``train_loop`` does it."""
        self.optimizer.zero_grad()
        loss = self.loss_fn(self.net(augmented(self.plan, images, self.generator)), targets)
        loss.backward()
        self.optimizer.step()
        float(loss)  # as train_loop does


def plain(images: torch.Tensor, targets: torch.Tensor, plan: TrainPlan, steps: int, cores: int) -> dict:
    """The plain loop over in-memory uint8 tiles: images/s and CPU ms per image of ``steps`` steps."""
    torch.set_num_threads(cores)
    torch.manual_seed(plan.seed)
    loop, size = PlainLoop(plan), plan.batch_size
    order, position = torch.randperm(len(images)), 0
    seen, wall, cpu = 0, 0.0, 0.0
    for step in range(WARMUP_STEPS + steps):
        started, started_cpu = time.perf_counter(), time.process_time()
        if position + size > len(order):
            order, position = torch.randperm(len(images)), 0
        index = order[position : position + size]
        position += size
        loop.step(images[index], targets[index])
        if step >= WARMUP_STEPS:
            seen += len(index)
            wall += time.perf_counter() - started
            cpu += time.process_time() - started_cpu
    return {"images_per_s": seen / wall, "cpu_ms_per_image": 1000 * cpu / seen, "images": seen}


def data_path(plan: TrainPlan, steps: int, threads: int) -> dict:
    """``train_loop``'s data path alone (one shard, uint8), drained for ``steps`` batches after one epoch."""
    with training_batches(plan, 0, 1, threads) as batches:
        for _ in range(plan.steps_per_epoch):
            next(batches)
        wall, cpu, seen = time.perf_counter(), time.process_time(), 0
        for _ in range(steps):
            seen += len(next(batches)[1])
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"images_per_s": seen / wall, "cpu_ms_per_image": 1000 * cpu / seen, "images": seen}


def petastorm_converter(
    spark, tiles: str, version: int, data: TaskData, plan: TrainPlan, steps: int, threads: int, work: Path
) -> dict:
    """Petastorm's Spark converter of the task's training rows, then the plain step on its batches."""
    from petastorm import TransformSpec
    from petastorm.spark import SparkDatasetConverter, make_spark_converter
    from pyspark.sql import functions as F

    task, tile_input, size = plan.task, plan.tile_input, plan.tile_input.size
    spark.conf.set(SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF, f"file://{work}/petastorm-cache")
    frame = (
        read_table(spark, tiles, version)
        .where(task.sql_condition())
        .where(F.expr(data.rule.sql()) == "train")
        .select("pixels", "label")
    )

    def transform(rows):
        import pandas as pd

        images = [tile_input.pixels(bytes(png)) for png in rows["pixels"]]
        return pd.DataFrame({"image": images, "target": rows["label"].map(task.label_map).astype(np.int64)})

    spec = TransformSpec(
        transform,
        edit_fields=[("image", np.uint8, (3, size, size), False), ("target", np.int64, (), False)],
        selected_fields=["image", "target"],
    )
    started = time.perf_counter()
    converter = make_spark_converter(frame)
    copy_s = time.perf_counter() - started
    loop = PlainLoop(plan)
    try:
        with converter.make_torch_dataloader(
            batch_size=plan.batch_size,
            num_epochs=None,
            workers_count=threads,
            shuffling_queue_capacity=4 * plan.batch_size,
            transform_spec=spec,
        ) as loader:
            batches = iter(loader)
            for _ in range(plan.steps_per_epoch):  # warm-up: one epoch, as the product's first
                batch = next(batches)
                loop.step(batch["image"], batch["target"])
            wall, cpu, seen = time.perf_counter(), time.process_time(), 0
            for _ in range(steps):
                batch = next(batches)
                loop.step(batch["image"], batch["target"])
                seen += len(batch["target"])
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        rows = len(converter)
        converter.delete()
    return {
        "images_per_s": seen / (wall + copy_s),
        "images_per_s_excluding_copy": seen / wall,
        "cpu_ms_per_image": 1000 * cpu / seen,
        "copy_s": copy_s,
        "rows": rows,
        "images": seen,
    }


def decoders(pngs: list[bytes], size: int) -> dict[str, float]:
    """ms per tile of each PNG decoder over the tiles, checked against ``decode_png``.

    torchvision is not part of the pinned stack (nothing else needs it): ``pip install --no-deps
    torchvision==0.20.1`` (the release matching torch 2.5.1) to include it; without it it is skipped.
    """
    from PIL import Image

    def pillow(png: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(png)) as image:
            return np.array(image)

    candidates = {"imagecodecs": decode_png, "pillow": pillow}
    try:
        from torchvision.io import decode_png as torchvision_decode

        def torchvision(png: bytes) -> np.ndarray:
            pixels = torchvision_decode(torch.frombuffer(bytearray(png), dtype=torch.uint8)).numpy()
            return pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)

        candidates["torchvision"] = torchvision
    except ImportError:
        print("decoders: torchvision is not installed; its decoder is left out", flush=True)
    repeat = -(-DECODE_TILES // len(pngs))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = {}
        for name, decode in candidates.items():
            for png in pngs[:8]:
                if not np.array_equal(decode(png), decode_png(png)):
                    raise RuntimeError(f"{name} decodes a tile differently from core.codec.decode_png")
            started = time.perf_counter()
            for _ in range(repeat):
                for png in pngs:
                    decode(png)
            result[name] = 1000 * (time.perf_counter() - started) / (repeat * len(pngs))
    finally:
        torch.set_num_threads(threads)
    return result


def lakehouse(spark, settings, args, task: Task, root: Path, images: int, work: Path) -> tuple[str, int]:
    """The tiles table (path, version) under ``root``, built from ``images`` synthetic images unless there."""
    tiles = settings.lakehouse.table("tiles")
    if table_exists(spark, tiles):
        print(f"data: reusing the tiles table in {root}", flush=True)
    else:
        folder = work / f"build-{images}"
        folder.mkdir(parents=True, exist_ok=True)
        build_s = build_tiles(
            spark,
            settings,
            folder,
            images,
            args.downscale,
            args.seed,
            task.collections,
            args.tile_files,
        )
        print(
            f"data: {images} images synthesised, ingested and tiled in {build_s:.0f} s ({root})", flush=True
        )
    return tiles, current_version(spark, tiles)


def describe(name: str, f: dict, extra: str = "") -> None:
    print(
        f"{name}: {f['images_per_s']:.1f} images/s, {f['cpu_ms_per_image']:.1f} CPU ms/image" + extra,
        flush=True,
    )


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def show(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    corpus_arguments(parser, 300)
    parser.add_argument("--task", default="mammo_normal_vs_abnormal", choices=sorted(TASKS))
    parser.add_argument("--network", default=None, help="default: the configuration's train.network")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the configuration's")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs per run; the first is warm-up")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="num_proc values per backend")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument(
        "--val-tiles", type=int, default=32, help="validation tiles rank 0 scores per epoch (0: all)"
    )
    parser.add_argument(
        "--scale", type=int, default=4, help="memory on a table this many times larger (0 or 1: skip)"
    )
    parser.add_argument("--scale-epochs", type=int, default=2, help="epochs of the --scale run")
    parser.add_argument(
        "--tile-files", type=int, default=1, help="files per split and modality (1: as the tile job)"
    )
    parser.add_argument(
        "--lake", type=Path, default=None, help="keep the lakehouse here; reused if it has tiles"
    )
    args = parser.parse_args()
    if args.epochs < 2 or args.scale_epochs < 2:
        parser.error("--epochs and --scale-epochs must be at least 2 (the first is warm-up)")
    if 1 not in args.workers:
        parser.error("--workers must include 1 (the ratios are to the 1-worker runs)")
    if args.cores != worker_cores(1):
        print(
            f"warning: --cores {args.cores} but this process may run on {worker_cores(1)} cores: the "
            "workers size their threads from the latter",
            flush=True,
        )
    quiet()  # third-party warnings (Petastorm on this pyarrow) off in this process, as in the workers
    task = TASKS[args.task]
    work = Path(tempfile.mkdtemp(prefix="oncolake-bench-train-"))
    lake_root = (args.lake or work / "lake").resolve()

    def settings_for(root: Path):
        overrides = [f"lakehouse.root={root}", f"spark.master=local[{args.cores}]"]
        overrides += [f"train.epochs={args.epochs}", f"train.patience={args.epochs + 1}"]  # no early stop
        overrides += [f"train.network={args.network}"] if args.network else []
        overrides += [f"train.batch_size={args.batch_size}"] if args.batch_size else []
        return load_settings("local", overrides)

    settings = settings_for(lake_root)
    spark = build_spark(settings, "bench-train")
    figures: dict[str, dict] = {}
    try:
        tiles, version = lakehouse(spark, settings, args, task, lake_root, args.images, work)
        data = task_data(spark, tiles, version, task)
        frame = task_rows(data.train_files, task)
        train = frame[frame["wanted"]]
        fill = len(train) / len(frame)
        print(
            f"data: {args.task}@v{version}: {len(train)} training tiles in {len(data.train_files)} files, "
            f"{row_groups(data.train_files)} row groups; {fill:.0%} of the rows Petastorm reads are "
            f"training rows; counts {data.counts}",
            flush=True,
        )
        tile_input = TileInput.from_settings(settings)
        pngs = [bytes(png) for png in train["pixels"]]
        started = time.perf_counter()
        images = torch.from_numpy(tile_input.pixel_batch(pngs))
        targets = torch.tensor(train["label"].map(task.label_map).to_numpy(dtype=np.int64))
        decode_s = time.perf_counter() - started
        del frame, train

        figures["decode_ms_per_tile"] = decode = decoders(pngs, tile_input.size)
        print(
            "decode_ms_per_tile: "
            + ", ".join(f"{name} {ms:.3f}" for name, ms in decode.items())
            + f" ms/tile ({len(pngs)} training tiles of {tile_input.size}x{tile_input.size}, 1 thread)",
            flush=True,
        )
        val = validation_sample(data, task, args.val_tiles, work)
        plans = {
            (backend, n): make_plan(settings, task, data, n, work / "checkpoints" / f"{backend}_{n}", val)
            for backend in args.backends
            for n in args.workers
        }
        reference = plans[(args.backends[0], 1)]
        steps = reference.steps_per_epoch * (args.epochs - 1)
        threads = reader_threads(reference, worker_cores(1))
        print(
            f"setup: {len(images)} training tiles decoded once in {decode_s:.1f} s; {steps} timed steps of "
            f"{reference.batch_size} ({reference.network}); validation on {val[1]} tiles; {threads} reader "
            f"threads for 1 worker",
            flush=True,
        )
        rounds: list[dict] = []

        def plain_round(when: str) -> None:
            rounds.append(f := plain(images, targets, reference, steps, args.cores))
            describe(
                f"plain ({when})", f, f" ({steps} steps of {reference.batch_size}, {args.cores} threads)"
            )

        plain_round("before")
        figures["plain_1_thread"] = f = plain(images, targets, reference, steps, 1)
        describe("plain_1_thread", f, f" (the same, 1 torch thread: how much the {args.cores} threads help)")
        torch.set_num_threads(args.cores)  # the converter's loop steps on as many threads as plain
        figures["data_path"] = f = data_path(reference, steps, threads)
        describe("data_path", f, f" (uint8, no training; {steps} batches of {reference.batch_size})")
        figures["petastorm_converter"] = f = petastorm_converter(
            spark, tiles, version, data, reference, steps, threads, work
        )
        describe(
            "petastorm_converter",
            f,
            f" with the copy amortised, {f['images_per_s_excluding_copy']:.1f} images/s without "
            f"(copy of {f['rows']} rows {f['copy_s']:.1f} s; {steps} timed steps)",
        )
        plain_round("before the distributed runs")
        for (backend, n), plan in plans.items():
            figures[name := f"{backend}_{n}"] = f = distributed(spark, backend, plan, n)
            plain_round(f"after {name}")
            # The plain rounds on either side of this run: the machine's speed drifts over a run.
            f["plain_adjacent"] = statistics.mean(r["images_per_s"] for r in rounds[-2:])
            epochs = ", ".join(f"{v:.1f}" for v in f["per_epoch"])
            describe(
                name,
                f,
                f" over epochs 2..{args.epochs} (per epoch: {epochs}; {plan.steps_per_epoch} steps/epoch/"
                f"worker of {plan.batch_size}; whole run {f['wall_s']:.0f} s; peak PSS "
                f"{f['peak_pss_mb']:.0f} MB, RSS {f['peak_rss_mb']:.0f} MB)",
            )
        figures["plain"] = {
            "images_per_s": statistics.mean(r["images_per_s"] for r in rounds),
            "cpu_ms_per_image": statistics.mean(r["cpu_ms_per_image"] for r in rounds),
            "rounds_images_per_s": [r["images_per_s"] for r in rounds],
            "steps": steps,
        }

        scaled_name = None
        if args.scale > 1:
            backend, scaled_images = args.backends[0], args.scale * args.images
            scaled_root = (
                lake_root.parent / f"{lake_root.name}-x{args.scale}"
                if args.lake
                else work / f"lake-x{args.scale}"
            )
            scaled_settings = settings_for(scaled_root)
            scaled_tiles, scaled_version = lakehouse(
                spark, scaled_settings, args, task, scaled_root, scaled_images, work
            )
            scaled_data = task_data(spark, scaled_tiles, scaled_version, task)
            scaled_val = validation_sample(scaled_data, task, args.val_tiles, work)
            scaled_plan = dataclasses.replace(
                make_plan(scaled_settings, task, scaled_data, 1, work / "checkpoints" / "scaled", scaled_val),
                epochs=args.scale_epochs,
                patience=args.scale_epochs + 1,
            )
            scaled_name = f"{backend}_1_x{args.scale}"
            figures[scaled_name] = f = distributed(spark, backend, scaled_plan, 1)
            f["training_tiles"] = sum(scaled_data.counts["train"].values())
            describe(
                scaled_name,
                f,
                f" ({f['training_tiles']} training tiles, {row_groups(scaled_data.train_files)} row groups; "
                f"{args.scale_epochs} epochs; peak PSS {f['peak_pss_mb']:.0f} MB, RSS {f['peak_rss_mb']:.0f} "
                f"MB; at 1x {figures[f'{backend}_1']['peak_pss_mb']:.0f} MB PSS)",
            )
    finally:
        spark.stop()
        shutil.rmtree(work, ignore_errors=True)

    speed = {name: f["images_per_s"] for name, f in figures.items() if "images_per_s" in f}
    cpu = {name: f["cpu_ms_per_image"] for name, f in figures.items() if "cpu_ms_per_image" in f}
    base = speed["plain"]
    backend_ratio = {
        b: ratio(speed.get(f"{b}_1"), figures.get(f"{b}_1", {}).get("plain_adjacent", base))
        for b in args.backends
    }
    two_vs_one = {b: ratio(speed.get(f"{b}_2"), speed.get(f"{b}_1")) for b in args.backends}
    runs: Iterable[str] = [name for name in figures if "peak_pss_mb" in figures[name]]
    scale_ratio = (
        ratio(figures[scaled_name]["peak_pss_mb"], figures[f"{args.backends[0]}_1"]["peak_pss_mb"])
        if scaled_name
        else None
    )
    converter = figures["petastorm_converter"]
    result: dict[str, Any] = {
        "benchmark": "train",
        "task": args.task,
        "network": reference.network,
        "batch_size": reference.batch_size,
        "cores": args.cores,
        "epochs": args.epochs,
        "images": args.images,
        "training_tiles": len(targets),
        "timed_steps": steps,
        "petastorm_training_row_fraction": fill,
        **{f"{b}_ratio": backend_ratio[b] for b in args.backends},
        "ratio_2_vs_1": two_vs_one,
        "product_cpu_ms_per_image": {b: cpu.get(f"{b}_1") for b in args.backends},
        "cpu_ms_per_image": cpu,
        "peak_pss_mb": {name: figures[name]["peak_pss_mb"] for name in runs},
        "peak_rss_mb": {name: figures[name]["peak_rss_mb"] for name in runs},
        "pss_scale": args.scale if scaled_name else None,
        "pss_scale_ratio": scale_ratio,
        "petastorm_converter_ratio": ratio(converter["images_per_s"], base),
        "petastorm_converter_ratio_excluding_copy": ratio(converter["images_per_s_excluding_copy"], base),
        "product_vs_petastorm_converter": {
            b: ratio(speed.get(f"{b}_1"), converter["images_per_s"]) for b in args.backends
        },
        "ratio_expected_from_cpu": cpu["plain"] / (cpu["plain"] + cpu["data_path"]),
        "decode_ms_per_tile": figures["decode_ms_per_tile"],
        "images_per_s": speed,
        "details": figures,
    }
    print(
        "ratios: "
        + "; ".join(
            f"{b}_1 / plain {show(backend_ratio[b])} (target >= 0.85), 2 / 1 workers {show(two_vs_one[b])}, "
            f"CPU {show(cpu.get(f'{b}_1'))} ms/image (target <= 12)"
            for b in args.backends
        )
        + f"; petastorm_converter / plain {show(result['petastorm_converter_ratio'])} "
        f"({show(result['petastorm_converter_ratio_excluding_copy'])} without the copy); expected from CPU "
        f"ms/image {result['ratio_expected_from_cpu']:.2f}; "
        + (
            f"PSS x{args.scale} / x1 {show(scale_ratio)} (target <= 1.25)"
            if scaled_name
            else "no --scale run"
        ),
        flush=True,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
