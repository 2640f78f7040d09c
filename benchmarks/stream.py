"""The landing stream against the batch job on the same files, and its latency at a steady arrival rate.

    .venv/bin/python benchmarks/stream.py [--landed 96] [--rate 1.0] [--seconds 60] [--images 120]

It builds its own lakehouse (a small synthetic corpus, BreaKHis and MIAS, ingested and tiled; an
untrained network of the configured kind registered as each task's champion: speed does not depend on
the weights; the collections' images scored once beforehand, so that only landed images are left), then,
each as a user runs it (``python -m jobs.cli ...``: its own driver and JVM, start-up included in both):

``batch``
    ``oncolake score --landing DIR`` on a copy of that lakehouse: land, tile and score ``--landed`` new
    images (synth's landing folder: PNG 8/16-bit, PGM, DICOM; three planted bad files);
``stream``
    ``oncolake stream --once --images DIR`` on another copy, over the same files.

It prints images/s of both and their ratio (target >= 0.8). Then, on a third copy, ``oncolake stream``
runs continuously while a writer drops new images at ``--rate`` files per second for ``--seconds``
(written under a hidden name, then renamed: the drop-folder contract); each file's rename time is kept,
and its latency is the time from its rename to the commit of the predictions table version that first
holds its prediction (p50, p95, max per champion). The stream is stopped with SIGTERM. The last line is
one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from common import build_tiles, corpus_arguments

from conf import load_settings
from core.aggregation import AggregationRule
from core.tasks import TASKS
from jobs.session import build_spark
from model.data import TileInput
from model.networks import build_network
from model.registry import model_name
from model.scoring import score_images
from model.tracking import CHAMPION, log_tile_model, register, use_tracking
from pipelines.io import read_table
from synth import landing as synth_landing

REPO = Path(__file__).resolve().parents[1]
TASK_NAMES = ("histo_benign_vs_malignant", "mammo_normal_vs_abnormal")


def build_lake(root: Path, work: Path, args: argparse.Namespace) -> None:
    """Tiles of a small corpus, a champion per task, and every collection image scored already."""
    import mlflow
    import torch

    settings = load_settings("local", [f"lakehouse.root={root}", f"spark.master=local[{args.cores}]"])
    spark = build_spark(settings, "bench-stream-setup")
    try:
        seconds = build_tiles(
            spark, settings, work, args.images, args.downscale, args.seed, ("breakhis", "mias")
        )
        print(f"setup: {args.images} images synthesised, ingested and tiled in {seconds:.0f} s", flush=True)
        use_tracking(settings)
        example = list(
            read_table(spark, settings.lakehouse.table("tiles"))
            .select("pixels")
            .limit(2)
            .toPandas()["pixels"]
        )
        for task_name in TASK_NAMES:
            task = TASKS[task_name]
            torch.manual_seed(0)
            net = build_network(settings.train.network, len(task.classes))
            with mlflow.start_run(run_name=f"bench-stream-{task_name}"):
                info = log_tile_model(
                    net.state_dict(),
                    settings.train.network,
                    list(task.classes),
                    1.0,
                    example,
                    TileInput.from_settings(settings),
                )
            tags = {"threshold": "0.5", "task": task_name, **AggregationRule().tags()}
            version = register(info.model_uri, model_name(settings, task_name), tags, "benchmark model")
            mlflow.MlflowClient().set_registered_model_alias(
                model_name(settings, task_name), CHAMPION, version
            )
        score_images(spark, settings, TASK_NAMES, echo=lambda _: None)
    finally:
        spark.stop()


def oncolake(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    out = log.open("a")
    out.write(f"\n$ oncolake {' '.join(args)}\n")
    out.flush()
    return subprocess.Popen(
        [sys.executable, "-m", "jobs.cli", *args],
        cwd=REPO,
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


def timed(args: list[str], log: Path) -> float:
    started = time.perf_counter()
    status = oncolake(args, log).wait()
    if status:
        raise SystemExit(f"oncolake {args[0]} failed with status {status}: see {log}")
    return time.perf_counter() - started


def latencies(root: Path, renamed: dict[str, float]) -> dict[str, dict[str, float]]:
    """Per champion: seconds from each file's rename to the commit of the first predictions version
    holding its prediction."""
    settings = load_settings("local", [f"lakehouse.root={root}", "spark.master=local[1]"])
    spark = build_spark(settings, "bench-stream-latency")
    try:
        path = settings.lakehouse.table("predictions")
        history = spark.sql(f"DESCRIBE HISTORY delta.`{path}`").select("version", "timestamp").collect()
        committed = {int(r["version"]): r["timestamp"].timestamp() for r in history}
        first_seen: dict[tuple[str, str], float] = {}
        for version in sorted(committed):
            rows = read_table(spark, path, version).select("image_id", "model").collect()
            for row in rows:
                first_seen.setdefault((row["model"], row["image_id"]), committed[version])
    finally:
        spark.stop()
    figures: dict[str, dict[str, float]] = {}
    for model in sorted({m for m, _ in first_seen}):
        waits = [first_seen[(model, i)] - t for i, t in renamed.items() if (model, i) in first_seen]
        if waits:
            p50, p95 = np.percentile(waits, [50, 95])
            figures[model] = {"files": len(waits), "p50": float(p50), "p95": float(p95), "max": max(waits)}
    return figures


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    corpus_arguments(parser, 120)
    parser.add_argument("--landed", type=int, default=96, help="new images in the landing folder")
    parser.add_argument("--rate", type=float, default=1.0, help="files per second for the latency run")
    parser.add_argument("--seconds", type=float, default=60, help="length of the latency run's feed")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="oncolake-bench-stream-"))
    log = work / "jobs.log"
    try:
        base = work / "lake"
        build_lake(base, work, args)
        pool = work / "landing"
        manifest = synth_landing.generate(pool, args.landed, seed=args.seed + 1)
        shared = ["--config", "local", "--set", f"spark.master=local[{args.cores}]"]

        lakes = {name: work / f"lake-{name}" for name in ("batch", "stream", "latency")}
        for lake in lakes.values():
            shutil.copytree(base, lake)
        batch = timed(
            ["score", *shared, "--set", f"lakehouse.root={lakes['batch']}", "--landing", str(pool)], log
        )
        stream = timed(
            [
                "stream",
                *shared,
                "--set",
                f"lakehouse.root={lakes['stream']}",
                "--once",
                "--images",
                str(pool),
            ],
            log,
        )
        images = manifest["images"]
        print(f"batch  (score --landing): {images} images in {batch:.1f} s = {images / batch:.2f} img/s")
        print(f"stream (stream --once):   {images} images in {stream:.1f} s = {images / stream:.2f} img/s")
        print(f"ratio stream / batch: {batch / stream:.2f} (target >= 0.8)", flush=True)

        feed = work / "feed"
        source = work / "feed-pool"
        count = max(1, int(args.rate * args.seconds))
        feed_manifest = synth_landing.generate(source, count, seed=args.seed + 2)
        files = [source / f for f in feed_manifest["files"]]
        (feed / "mammography").mkdir(parents=True)
        (feed / "histology").mkdir(parents=True)
        process = oncolake(
            [
                "stream",
                *shared,
                "--set",
                f"lakehouse.root={lakes['latency']}",
                "--set",
                "landing.trigger_seconds=1",
                "--images",
                str(feed),
            ],
            log,
        )
        while "watching" not in log.read_text().rsplit("$ oncolake stream", 1)[-1]:
            time.sleep(0.5)
        time.sleep(5)  # the first (empty) trigger has run
        renamed: dict[str, float] = {}

        def drop() -> None:
            for path in files:
                target = feed / path.relative_to(source)
                hidden = target.parent / f".{target.name}.part"
                data = path.read_bytes()
                hidden.write_bytes(data)
                hidden.rename(target)
                renamed[hashlib.sha256(data).hexdigest()[:32]] = time.time()
                time.sleep(1 / args.rate)

        writer = threading.Thread(target=drop)
        writer.start()
        writer.join()
        time.sleep(30)  # the last files' batches
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=300)
        figures = latencies(lakes["latency"], renamed)
        for model, f in figures.items():
            print(
                f"latency {model}: {f['files']} files at {args.rate} files/s: p50 {f['p50']:.1f} s, "
                f"p95 {f['p95']:.1f} s, max {f['max']:.1f} s",
                flush=True,
            )
        print(
            json.dumps(
                {
                    "benchmark": "stream",
                    "landed": images,
                    "batch_seconds": batch,
                    "stream_seconds": stream,
                    "ratio_stream_vs_batch": batch / stream,
                    "rate_files_per_second": args.rate,
                    "latency_seconds": figures,
                }
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
