"""Bulk scoring throughput: the Spark UDF paths against plain in-process PyTorch inference.

    .venv/bin/python benchmarks/score.py [--images 240] [--cores 2] [--repeats 2] [--lake DIR]

It builds its own data (a synthetic corpus, the ingest and tile jobs' logic, BreaKHis and MIAS only: one
histology and one mammography model's worth of tiles) into a temporary lakehouse, and registers an
(untrained: speed does not depend on the weights) network of the configured kind as the scoring job does,
in a temporary MLflow store. Then, on the same tiles, in the same run, with the same model and cores:

``plain``
    the registered model loaded once in this process (``mlflow.pyfunc.load_model``) predicting every
    tile, with ``torch.set_num_threads(cores)``; the tiles' bytes are read into memory beforehand.
``spark_udf``
    what ``oncolake score`` runs: ``mlflow.pyfunc.spark_udf(..., env_manager="local")`` over the tiles
    table on ``local[cores]``, results written to Spark's ``noop`` sink (so the figure is the scoring,
    not a table write).
``predict_batch_udf``
    ``pyspark.ml.functions.predict_batch_udf`` around the same MLflow model (loaded by its
    ``make_predict_fn``, cached per Python worker by Spark's ``ModelCache``), same input and sink.

Each path is run once untimed (Python workers start, models load), then timed ``--repeats`` times; the
figure is tiles/s of the best repeat. Then, over the input repeated 1x and 4x, it records the peak
resident memory of the Spark processes (JVM and Python workers) while ``spark_udf`` runs, and how many
times each Python worker loaded the model (MLflow's ``SparkModelCache``: once per worker, not per batch).

The last line is one JSON object; ``ratio_spark_udf_vs_plain`` is the figure the target (>= 0.8) is for.
Machines are noisy: read the ratios, not the absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import mlflow
import pandas as pd
import torch
from common import PeakMemory, build_tiles
from pyspark.sql import functions as F

from conf import load_settings
from jobs.session import build_spark
from model.networks import build_network
from model.tracking import log_tile_model, register, use_tracking
from pipelines.io import read_table, table_exists

CLASSES = ["benign", "malignant"]


def registered_model(settings, example: list[bytes]) -> str:
    """An untrained network of the configured kind, logged and registered as scoring expects; its URI."""
    use_tracking(settings)
    torch.manual_seed(0)
    net = build_network(settings.train.network, len(CLASSES))
    with mlflow.start_run(run_name="bench-score"):
        info = log_tile_model(net.state_dict(), settings.train.network, CLASSES, 1.0, example)
    version = register(info.model_uri, "bench-score", {"threshold": "0.5"}, "benchmark model")
    return f"models:/bench-score/{version}"


def timed(run, repeats: int) -> float:
    """Seconds of the best of ``repeats`` runs, after one untimed warm-up run."""
    run()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def plain(model_uri: str, pixels: pd.DataFrame, cores: int, repeats: int) -> float:
    torch.set_num_threads(cores)
    model = mlflow.pyfunc.load_model(model_uri)
    return timed(lambda: model.predict(pixels), repeats)


def spark_udf(spark, model_uri: str, tiles, repeats: int):
    udf = mlflow.pyfunc.spark_udf(
        spark, model_uri, result_type=", ".join(f"p_{c} double" for c in CLASSES), env_manager="local"
    )
    scored = tiles.select(udf(F.struct("pixels")).alias("p"))
    return timed(lambda: scored.write.format("noop").mode("overwrite").save(), repeats), udf


def predict_batch(spark, model_uri: str, tiles, repeats: int) -> float:
    from pyspark.ml.functions import predict_batch_udf

    local = mlflow.artifacts.download_artifacts(model_uri)  # executors share this machine's disk here

    def make_predict_fn():
        import mlflow.pyfunc as pyfunc

        model = pyfunc.load_model(local)

        def predict(pixels):
            out = model.predict(pd.DataFrame({"pixels": list(pixels)}))
            return {column: out[column].to_numpy() for column in out.columns}

        return predict

    udf = predict_batch_udf(
        make_predict_fn, return_type=", ".join(f"p_{c} double" for c in CLASSES), batch_size=64
    )
    scored = tiles.select(udf("pixels").alias("p"))
    return timed(lambda: scored.write.format("noop").mode("overwrite").save(), repeats)


def model_loads(spark, partitions: int) -> dict[int, dict[str, int]]:
    """Per Python worker pid: models MLflow's cache holds and the cache hits it has served."""

    def report(_):
        from mlflow.pyfunc.spark_model_cache import SparkModelCache

        yield os.getpid(), len(SparkModelCache._models), SparkModelCache._cache_hits

    rows = spark.sparkContext.parallelize(range(partitions), partitions).mapPartitions(report).collect()
    return {pid: {"models": models, "cache_hits": hits} for pid, models, hits in rows}


def spark_processes(cmdline: str) -> bool:
    return "java" in cmdline.split(" ", 1)[0] or "pyspark.daemon" in cmdline or "pyspark.worker" in cmdline


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--images", type=int, default=240, help="synthetic corpus size (all collections)")
    parser.add_argument("--downscale", type=float, default=16, help="synthetic corpus downscale")
    parser.add_argument("--seed", type=int, default=0, help="synthetic corpus seed")
    parser.add_argument("--cores", type=int, default=2, help="local[cores] and torch threads")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per path (the best counts)")
    parser.add_argument(
        "--lake", type=Path, default=None, help="keep the lakehouse here; reused if it has tiles"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="oncolake-bench-score-"))
    lake_root = args.lake or work / "lake"
    settings = load_settings("local", [f"lakehouse.root={lake_root}", f"spark.master=local[{args.cores}]"])
    spark = build_spark(settings, "bench-score")
    try:
        tiles_path = settings.lakehouse.table("tiles")
        if not table_exists(spark, tiles_path):
            seconds = build_tiles(
                spark, settings, work, args.images, args.downscale, args.seed, ("breakhis", "mias")
            )
            print(
                f"data: {args.images} images synthesised, ingested and tiled in {seconds:.0f} s", flush=True
            )
        tiles = read_table(spark, tiles_path).select("tile_id", "pixels")
        pixels = tiles.select("pixels").toPandas()
        n = len(pixels)
        model_uri = registered_model(settings, list(pixels["pixels"][:2]))
        print(f"data: {n} tiles; model {model_uri} ({settings.train.network})", flush=True)

        seconds = {"plain": plain(model_uri, pixels, args.cores, args.repeats)}
        print(f"plain              {n / seconds['plain']:8.1f} tiles/s", flush=True)
        seconds["spark_udf"], udf = spark_udf(spark, model_uri, tiles, args.repeats)
        print(f"spark_udf          {n / seconds['spark_udf']:8.1f} tiles/s", flush=True)
        seconds["predict_batch_udf"] = predict_batch(spark, model_uri, tiles, args.repeats)
        print(f"predict_batch_udf  {n / seconds['predict_batch_udf']:8.1f} tiles/s", flush=True)

        memory = {}
        for times in (1, 4):
            grown = tiles
            for _ in range(times - 1):
                grown = grown.unionByName(tiles)
            scored = grown.select(udf(F.struct("pixels")).alias("p"))
            with PeakMemory(spark_processes) as peak:
                scored.write.format("noop").mode("overwrite").save()
            memory[f"{times}x"] = {"tiles": n * times, "peak_rss_mb": round(peak.peak / 2**20)}
            print(
                f"memory {times}x: {n * times} tiles, "
                f"peak RSS of the Spark processes {peak.peak / 2**20:.0f} MB"
            )
        loads = model_loads(spark, 4 * args.cores)
        print(f"model loads per Python worker (pid: models cached, cache hits): {loads}")
    finally:
        spark.stop()
        shutil.rmtree(work, ignore_errors=True)
    rate = {name: n / s for name, s in seconds.items()}
    result = {
        "tiles": n,
        "cores": args.cores,
        "tiles_per_s": {k: round(v, 1) for k, v in rate.items()},
        "ratio_spark_udf_vs_plain": round(rate["spark_udf"] / rate["plain"], 3),
        "ratio_predict_batch_udf_vs_plain": round(rate["predict_batch_udf"] / rate["plain"], 3),
        "memory": memory,
        "python_workers": len(loads),
        "max_models_per_worker": max((v["models"] for v in loads.values()), default=0),
    }
    print(f"ratio spark_udf / plain: {result['ratio_spark_udf_vs_plain']:.2f} (target >= 0.8)")
    print(f"ratio predict_batch_udf / plain: {result['ratio_predict_batch_udf_vs_plain']:.2f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
