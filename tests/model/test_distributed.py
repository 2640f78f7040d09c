"""model.distributed: Horovod workers run as Spark tasks and really cooperate."""

from __future__ import annotations

import pytest
from pyspark.sql import SparkSession

from model.distributed import allreduce_probe, run_workers


def test_horovod_runs_two_workers_on_spark_executors(spark: SparkSession) -> None:
    results = run_workers(spark, allreduce_probe, num_proc=2, args=(7,), gloo_timeout_s=60)
    assert [r["rank"] for r in results] == [0, 1]
    assert all(r["size"] == 2 for r in results)
    assert all(r["average_rank"] == pytest.approx(0.5) for r in results)
    # Different data on each rank, one synchronised step: the weights must still agree exactly.
    assert results[0]["weights"] == results[1]["weights"]
    assert results[0]["pid"] != results[1]["pid"]
