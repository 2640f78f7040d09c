"""``oncolake doctor`` as users meet it, through the ``oncolake`` command and through spark-submit.

A misspelled configuration key fails at start, before any JVM; Horovod workers cooperate over two executor
JVMs (local-cluster) and on a standalone master; under spark-submit, spark-submit's master wins.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from jobs.session import cached_delta_jars

REPO = Path(__file__).resolve().parents[2]


def test_misspelled_key_fails_at_start_naming_key_and_source(oncolake) -> None:
    result = oncolake("doctor", "--spark", "--config", "tiny", "--set", "lakehouse.rooot=/tmp/x")
    assert result.returncode == 2
    assert "unknown key 'lakehouse.rooot'" in result.stderr
    assert "--set lakehouse.rooot=/tmp/x" in result.stderr
    assert "did you mean 'root'" in result.stderr
    assert "Spark" not in result.stdout  # it failed before starting anything


def _doctor_horovod(oncolake, master: str, lakehouse: Path) -> subprocess.CompletedProcess[str]:
    """``oncolake doctor --horovod 2`` on the tiny profile with this master."""
    settings = ["--set", f"spark.master={master}", "--set", f"lakehouse.root={lakehouse}"]
    return oncolake("doctor", "--horovod", "2", "--config", "tiny", *settings)


def test_horovod_over_two_executor_jvms_in_local_cluster(oncolake, tmp_path: Path) -> None:
    result = _doctor_horovod(oncolake, "local-cluster[2,1,1024]", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "ok    horovod-spark 2 workers" in result.stdout
    assert "master local-cluster[2,1,1024]" in result.stdout


def test_jobs_run_under_spark_submit_with_its_master_winning(tmp_path: Path) -> None:
    jars = ",".join(str(j) for j in cached_delta_jars())
    assert jars, "the session fixture resolves Delta's jars into the cache before this test"
    venv_bin = Path(sys.executable).parent
    submit = venv_bin / "spark-submit"
    env = {**os.environ, "PATH": f"{venv_bin}:{os.environ['PATH']}"}  # as with an activated venv
    result = subprocess.run(
        [
            str(submit),
            "--master",
            "local[1]",
            "--jars",
            jars,
            str(REPO / "jobs" / "doctor.py"),
            "--spark",
            "--config",
            "tiny",
            "--set",
            f"lakehouse.root={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "with Delta (3 rows read back), master local[1]" in result.stdout


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_horovod_on_a_standalone_master_on_loopback(oncolake, tmp_path: Path) -> None:
    spark_class = str(Path(sys.executable).parent / "spark-class")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "SPARK_LOCAL_IP": "127.0.0.1",
    }
    port = _free_port()
    master_url = f"spark://127.0.0.1:{port}"
    daemons = [
        subprocess.Popen(
            [
                spark_class,
                "org.apache.spark.deploy.master.Master",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--webui-port",
                str(_free_port()),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        time.sleep(5)
        daemons.append(
            subprocess.Popen(
                [
                    spark_class,
                    "org.apache.spark.deploy.worker.Worker",
                    master_url,
                    "--host",
                    "127.0.0.1",
                    "--cores",
                    "2",
                    "--memory",
                    "2g",
                    "--webui-port",
                    str(_free_port()),
                    "--work-dir",
                    str(tmp_path / "work"),
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        result = _doctor_horovod(oncolake, master_url, tmp_path / "lake")
        assert result.returncode == 0, result.stdout + result.stderr[-3000:]
        assert f"master {master_url}" in result.stdout
        assert "ok    horovod-spark 2 workers" in result.stdout
    finally:
        for daemon in reversed(daemons):
            daemon.terminate()
            daemon.wait(timeout=60)
