"""Where a session keeps the frames whose lineage a job cuts (``pipelines.io.materialise``): in the
executors' memory when driver and executor are one JVM; on a cluster (``local-cluster`` here), in a
checkpoint folder under the lakehouse root that a lost executor does not take with it, removed when the
job stops.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Run in a process of its own: the suite's session is local[N], and a JVM hosts one SparkContext.
PROBE = """
import json, sys
from pathlib import Path
from conf import load_settings
from jobs.session import build_spark, stop_spark
from pipelines.io import materialise

settings = load_settings("tiny", [f"lakehouse.root={sys.argv[1]}", f"spark.master={sys.argv[2]}"])
spark = build_spark(settings, "probe")
folder = spark.sparkContext.getCheckpointDir()
frame = materialise(spark.range(100).selectExpr("id", "id * id AS square"))
total = frame.agg({"square": "sum"}).first()[0]
files = [str(p) for p in Path(sys.argv[1]).rglob("*") if p.is_file()]
stop_spark()
print(json.dumps({"folder": folder, "total": total, "files": files}))
"""


def _probe(lake: Path, master: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(lake), master],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_cluster_session_checkpoints_under_the_lakehouse_and_removes_them_when_it_stops(
    tmp_path: Path,
) -> None:
    lake = tmp_path / "lake"
    seen = _probe(lake, "local-cluster[1,1,1024]")
    assert seen["total"] == sum(i * i for i in range(100))
    assert seen["folder"] is not None
    assert seen["folder"].removeprefix("file:").startswith(str(lake / "_spark_checkpoints")), seen["folder"]
    # The frame was written as a reliable checkpoint (RDD files beside the tables), not kept in an executor.
    assert any("/_spark_checkpoints/" in f and "/rdd-" in f for f in seen["files"]), seen["files"]
    checkpoints = lake / "_spark_checkpoints"
    assert not checkpoints.exists() or not any(checkpoints.iterdir()), list(checkpoints.rglob("*"))


def test_a_one_jvm_session_keeps_no_checkpoint_folder(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    seen = _probe(lake, "local[1]")
    assert seen["total"] == sum(i * i for i in range(100))
    assert seen["folder"] is None
    assert not (lake / "_spark_checkpoints").exists()


def test_the_configurations_jvm_options_keep_the_logging_option_beside_them() -> None:
    """JVM options given in ``spark.conf`` are kept, and the project's logging configuration is added to
    them rather than replaced by them."""
    from conf import load_settings
    from jobs.session import spark_conf

    settings = load_settings("local", [])
    extra = {"spark.executor.extraJavaOptions": "-XX:MaxNewSize=768m"}
    spark = settings.spark.model_copy(update={"conf": {**settings.spark.conf, **extra}})
    conf = spark_conf(settings.model_copy(update={"spark": spark}), "probe")
    executor = conf["spark.executor.extraJavaOptions"].split()
    assert "-XX:MaxNewSize=768m" in executor
    assert any(o.startswith("-Dlog4j2.configurationFile=") for o in executor)
    driver = conf["spark.driver.extraJavaOptions"]
    assert driver.startswith("-Dlog4j2.configurationFile=") and "MaxNewSize" not in driver
