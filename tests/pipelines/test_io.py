"""Smoke tests of the real components the product stands on: Delta, Horovod on Spark, Petastorm, MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from model.distributed import allreduce_probe, run_workers
from pipelines.io import current_version, merge_into, read_table, snapshot_files


def _rows(spark: SparkSession, ids: range) -> DataFrame:
    return spark.range(ids.start, ids.stop).withColumn("payload", F.concat(F.lit("tile-"), F.col("id")))


def test_delta_merge_twice_adds_nothing_and_time_travel_reads_old_versions(
    spark: SparkSession, lakehouse: Path
) -> None:
    path = str(lakehouse / "smoke_merge")
    merge_into(spark, _rows(spark, range(0, 10)), path, ["id"], metadata={"job": "smoke", "step": 1})
    merge_into(spark, _rows(spark, range(5, 15)), path, ["id"], metadata={"job": "smoke", "step": 2})
    merge_into(spark, _rows(spark, range(5, 15)), path, ["id"], metadata={"job": "smoke", "step": 3})

    table = read_table(spark, path)
    assert table.count() == 15
    assert table.select("id").distinct().count() == 15
    assert read_table(spark, path, version=0).count() == 10
    # The third MERGE matched every row: Delta commits nothing, so a re-run does not even add a version.
    assert current_version(spark, path) == 1
    history = spark.sql(f"DESCRIBE HISTORY delta.`{path}`").orderBy("version").collect()
    assert json.loads(history[0]["userMetadata"]) == {"job": "smoke", "step": 1}
    props = spark.sql(f"SHOW TBLPROPERTIES delta.`{path}`").collect()
    assert {r["key"]: r["value"] for r in props}["delta.enableDeletionVectors"] == "false"


def test_horovod_runs_two_workers_on_spark_executors(spark: SparkSession) -> None:
    results = run_workers(spark, allreduce_probe, num_proc=2, args=(7,), gloo_timeout_s=60)
    assert [r["rank"] for r in results] == [0, 1]
    assert all(r["size"] == 2 for r in results)
    assert all(r["average_rank"] == pytest.approx(0.5) for r in results)
    # Different data on each rank, one synchronised step: the weights must still agree exactly.
    assert results[0]["weights"] == results[1]["weights"]
    assert results[0]["pid"] != results[1]["pid"]


def _decode_pixels(frame: pd.DataFrame) -> pd.DataFrame:
    frame["pixels"] = frame["pixels"].map(lambda b: np.frombuffer(b, dtype=np.uint8).astype(np.float32) / 255)
    return frame


def test_petastorm_reads_a_pinned_delta_snapshot_into_a_torch_loader(
    spark: SparkSession, lakehouse: Path
) -> None:
    from petastorm import TransformSpec, make_batch_reader
    from petastorm.pytorch import BatchedDataLoader

    path = str(lakehouse / "smoke_petastorm")
    tiles = spark.range(0, 64, numPartitions=4).select(
        "id",
        (F.col("id") % 2).cast("int").alias("label"),
        F.expr("unhex(repeat('ff', 16))").alias("pixels"),
    )
    merge_into(spark, tiles, path, ["id"])
    merge_into(spark, tiles.withColumn("id", F.col("id") + 1000), path, ["id"])
    files = snapshot_files(spark, path, version=0)  # the second write must not leak into version 0
    assert len(files) >= 2

    # Binary pixels are decoded in the reader's transform: torch tensors cannot hold bytes.
    spec = TransformSpec(_decode_pixels, edit_fields=[("pixels", np.float32, (16,), False)])
    ids, labels = [], []
    with make_batch_reader(files, num_epochs=1, workers_count=1, transform_spec=spec) as reader:
        for batch in BatchedDataLoader(reader, batch_size=16):
            assert tuple(batch["pixels"].shape[1:]) == (16,)
            assert float(batch["pixels"].min()) == 1.0
            ids.extend(batch["id"].tolist())
            labels.extend(batch["label"].tolist())
    assert sorted(ids) == list(range(64))
    assert sorted(labels) == [0] * 32 + [1] * 32


def test_mlflow_run_logs_a_metric_and_a_model_that_loads_back(mlflow_uri: str, tmp_path: Path) -> None:
    import mlflow
    import torch

    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Softmax(dim=1))
    example = np.ones((2, 3), dtype=np.float32)
    # An explicit artifact location: the SQLite store would otherwise default to ./mlruns in the cwd.
    mlflow.set_experiment(experiment_id=mlflow.create_experiment("smoke", str(tmp_path / "artifacts")))
    with mlflow.start_run() as run:
        mlflow.log_metric("val_auc", 0.75, step=1)
        info = mlflow.pytorch.log_model(net, name="model", input_example=example)
    client = mlflow.MlflowClient()
    assert client.get_run(run.info.run_id).data.metrics["val_auc"] == 0.75
    loaded = mlflow.pyfunc.load_model(info.model_uri)
    expected = net(torch.from_numpy(example)).detach().numpy()
    np.testing.assert_allclose(np.asarray(loaded.predict(example)), expected, rtol=1e-6)
    assert mlflow_uri.startswith("sqlite:///")
