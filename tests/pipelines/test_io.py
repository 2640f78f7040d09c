"""pipelines.io's Delta tables: idempotent MERGE, time travel, a pinned snapshot that Petastorm reads.

``snapshot_files`` is what training reads from: the files of one table version, so a later write cannot
leak into a running (or resumed) training's data.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.io import COMMIT_FAULT_ENV, current_version, merge_into, read_table, snapshot_files

REPO = Path(__file__).resolve().parents[2]


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

    # Binary pixels are decoded in the reader's transform: torch tensors cannot hold bytes. The reader
    # cycles endlessly, as training's does (petastorm 0.13.1's thread pool can end a finite read early,
    # with no error, when its consumer checks for the end before the ventilator has started): two
    # epochs' worth of rows hold at least one whole epoch.
    spec = TransformSpec(_decode_pixels, edit_fields=[("pixels", np.float32, (16,), False)])
    ids, labels = [], []
    with make_batch_reader(files, num_epochs=None, workers_count=1, transform_spec=spec) as reader:
        for batch in BatchedDataLoader(reader, batch_size=16):
            assert tuple(batch["pixels"].shape[1:]) == (16,)
            assert float(batch["pixels"].min()) == 1.0
            ids.extend(batch["id"].tolist())
            labels.extend(batch["label"].tolist())
            if len(ids) >= 128:
                break
    assert set(ids) == set(range(64))
    assert labels == [i % 2 for i in ids]


@pytest.mark.parametrize(("when", "reached"), [("before", ""), ("during", "written"), ("after", "written")])
def test_the_commit_fault_points_kill_the_process_where_they_say(when: str, reached: str) -> None:
    """benchmarks/kills.py relies on these points; with the variable unset nothing happens."""
    code = (
        "from pipelines.io import commit_fault\n"
        "with commit_fault('/lake/images'):\n"
        "    print('written', flush=True)\n"
        "print('survived', flush=True)\n"
    )
    env = {**os.environ, COMMIT_FAULT_ENV: f"{when}:images"}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert done.stdout.strip() == reached and "fault injected" in done.stderr
    other = {**os.environ, COMMIT_FAULT_ENV: f"{when}:tiles"}
    untouched = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=other, capture_output=True, text=True
    )
    assert untouched.returncode == 0 and untouched.stdout.split() == ["written", "survived"]
