"""Bulk scoring throughput: the Spark UDF paths against plain in-process PyTorch inference.

    .venv/bin/python benchmarks/score.py [--images 240] [--cores 2] [--repeats 2] [--lake DIR]

It builds its own data (a synthetic corpus, the ingest and tile jobs' logic, BreaKHis and MIAS only: one
histology and one mammography model's worth of tiles) into a temporary lakehouse, and registers an
(untrained: speed does not depend on the weights) network of the configured kind as the scoring job does,
in a temporary MLflow store. Then, on the same tiles, in the same run, with the same model and cores:

``plain``
    the registered model loaded once in this process (``mlflow.pyfunc.load_model``) predicting every
    tile, with ``torch.set_num_threads(cores)``; the tiles' bytes are read into memory beforehand.
``predict_batch_udf``
    what ``oncolake score`` runs: :func:`model.udf.tile_udf`, ``pyspark.ml.functions.predict_batch_udf``
    around the same MLflow model (shipped with ``addFile``, loaded by its ``make_predict_fn`` and kept per
    Python worker by Spark's ``ModelCache``) over the tiles table on ``local[cores]``, through
    :func:`pipelines.scoring.score_tiles` as the job calls it, results written to Spark's ``noop`` sink
    (so the figure is the scoring, not a table write).
``spark_udf``
    the alternative: ``mlflow.pyfunc.spark_udf(..., env_manager="local")``, same input, same sink.

Each path is run once untimed (Python workers start, models load), then timed ``--repeats`` times; the
figure is tiles/s of the best repeat. It counts how many times each Python worker process loaded the
model (``$ONCOLAKE_MODEL_LOAD_LOG``, see :mod:`model.pyfunc`) on each path, and, over the input repeated
1x and 4x, the peak resident memory of the Spark processes (JVM and Python workers) on the job's path.

The last line is one JSON object; ``ratio_score_job_vs_plain`` (the ``predict_batch_udf`` path) is the
figure the target (>= 0.8) is for. Machines are noisy: read the ratios, not the absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import mlflow
import pandas as pd
import torch
from common import PeakMemory, build_tiles, corpus_arguments, is_jvm

from conf import load_settings
from core.aggregation import AggregationRule
from jobs.session import build_spark
from model.data import TileInput
from model.networks import build_network
from model.pyfunc import LOAD_LOG_ENV
from model.tracking import log_tile_model, register, use_tracking
from model.udf import result_type, tile_udf
from pipelines import scoring
from pipelines.io import read_table, table_exists

CLASSES = ["benign", "malignant"]
LOAD_LOG = Path(tempfile.gettempdir()) / "oncolake-bench-score-loads.txt"


def registered_model(settings, example: list[bytes]) -> tuple[str, scoring.ScoringModel]:
    """An untrained network of the configured kind, logged and registered with the tags scoring reads
    (threshold, aggregation rule); its URI and the :class:`pipelines.scoring.ScoringModel` applied."""
    use_tracking(settings)
    torch.manual_seed(0)
    net = build_network(settings.train.network, len(CLASSES))
    tile_input = TileInput.from_settings(settings)
    with mlflow.start_run(run_name="bench-score"):
        info = log_tile_model(net.state_dict(), settings.train.network, CLASSES, 1.0, example, tile_input)
    rule = AggregationRule()  # the top-3 mean: a fixed rule, as a registered version records one
    version = register(info.model_uri, "bench-score", {"threshold": "0.5", **rule.tags()}, "benchmark model")
    model = scoring.ScoringModel("bench-score", version, None, tuple(CLASSES), "malignant", 0.5, rule)
    return f"models:/bench-score/{version}", model


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


def spark_udf(spark, model_uri: str, model: scoring.ScoringModel, tiles, partitions: int, repeats: int):
    udf = mlflow.pyfunc.spark_udf(spark, model_uri, result_type=result_type(CLASSES), env_manager="local")
    scored = scoring.score_tiles(tiles, udf, model, partitions)
    return timed(lambda: scored.write.format("noop").mode("overwrite").save(), repeats), udf


def predict_batch(spark, model_uri: str, model: scoring.ScoringModel, tiles, partitions: int, repeats: int):
    udf = tile_udf(spark, model_uri, CLASSES)  # what the score job uses
    scored = scoring.score_tiles(tiles, udf, model, partitions)
    return timed(lambda: scored.write.format("noop").mode("overwrite").save(), repeats), udf


def drain_loads() -> dict[str, int]:
    """Model loads logged by other processes (Python workers) since the last call: pid -> loads."""
    found = Counter(LOAD_LOG.read_text().split()) if LOAD_LOG.exists() else Counter()
    LOAD_LOG.unlink(missing_ok=True)
    found.pop(str(os.getpid()), None)
    return dict(found)


def spark_processes(cmdline: str) -> bool:
    return is_jvm(cmdline) or "pyspark.daemon" in cmdline or "pyspark.worker" in cmdline


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    corpus_arguments(parser, 240)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per path (the best counts)")
    parser.add_argument(
        "--lake", type=Path, default=None, help="keep the lakehouse here; reused if it has tiles"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="oncolake-bench-score-"))
    os.environ[LOAD_LOG_ENV] = str(LOAD_LOG)  # Spark's Python workers inherit it (local master)
    LOAD_LOG.unlink(missing_ok=True)
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
        tiles = read_table(spark, tiles_path).select("image_id", "collection", "modality", "pixels")
        pixels = tiles.select("pixels").toPandas()
        n = len(pixels)
        model_uri, model = registered_model(settings, list(pixels["pixels"][:2]))
        print(f"data: {n} tiles; model {model_uri} ({settings.train.network})", flush=True)

        seconds = {"plain": plain(model_uri, pixels, args.cores, args.repeats)}
        print(f"plain              {n / seconds['plain']:8.1f} tiles/s", flush=True)
        drain_loads()
        partitions = scoring.task_count(args.cores, tiles.select("image_id").distinct().count())  # as the job
        loads = {}
        for name, measure in (("spark_udf", spark_udf), ("predict_batch_udf", predict_batch)):
            seconds[name], udf = measure(spark, model_uri, model, tiles, partitions, args.repeats)
            loads[name] = drain_loads()
            print(
                f"{name:18} {n / seconds[name]:8.1f} tiles/s; model loads per Python worker (pid: loads) "
                f"over {1 + args.repeats} runs of {partitions} tasks: {loads[name]}",
                flush=True,
            )

        memory = {}
        for times in (1, 4):  # udf: the job's (predict_batch_udf), workers already hold the model
            grown = tiles
            for _ in range(times - 1):
                grown = grown.unionByName(tiles)
            scored = scoring.score_tiles(grown, udf, model, partitions)
            with PeakMemory({"spark": spark_processes}) as peak:
                scored.write.format("noop").mode("overwrite").save()
            memory[f"{times}x"] = {"tiles": n * times, "peak_rss_mb": round(peak.peak["spark"] / 2**20)}
            print(
                f"memory {times}x: {n * times} tiles, "
                f"peak RSS of the Spark processes {peak.peak['spark'] / 2**20:.0f} MB",
                flush=True,
            )
        loads["memory_runs"] = drain_loads()
        print(f"model loads during the 1x and 4x runs: {loads['memory_runs']}")
    finally:
        spark.stop()
        shutil.rmtree(work, ignore_errors=True)
    rate = {name: n / s for name, s in seconds.items()}
    result = {
        "tiles": n,
        "cores": args.cores,
        "tiles_per_s": {k: round(v, 1) for k, v in rate.items()},
        "ratio_score_job_vs_plain": round(rate["predict_batch_udf"] / rate["plain"], 3),
        "ratio_spark_udf_vs_plain": round(rate["spark_udf"] / rate["plain"], 3),
        "memory": memory,
        "model_loads_per_worker": {stage: sorted(c.values()) for stage, c in loads.items()},
    }
    print(
        f"ratio score job (predict_batch_udf) / plain: {result['ratio_score_job_vs_plain']:.2f} "
        "(target >= 0.8)"
    )
    print(f"ratio mlflow spark_udf / plain: {result['ratio_spark_udf_vs_plain']:.2f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
