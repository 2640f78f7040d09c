"""Checks that the installed stack is the one oncolake is pinned to, and that each part really starts.

:func:`diagnose` runs them in order and prints one line per check (``ok`` or ``FAIL`` with the reason):
Python, Java 17 or 21, numpy < 2, pyarrow 14.0.2 (petastorm's pin), the stack's versions and Horovod's
torch extension with Gloo; given a way to build a Spark session, it also writes and reads back a Delta
table, and given a number of Horovod workers, runs them on the session's executors for one allreduce and
one synchronised optimizer step (:func:`model.distributed.allreduce_probe`).
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
from collections.abc import Callable

from pyspark.sql import SparkSession

from conf import Settings
from model.distributed import allreduce_probe, run_workers

Check = tuple[str, Callable[[], str]]


def _version(dist: str) -> str:
    return importlib.metadata.version(dist)


def _java() -> str:
    java = shutil.which("java")
    if not java:
        raise RuntimeError("java not found on PATH (Java 17 is required by Spark 4)")
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=True).stderr
    first = out.splitlines()[0]
    if '"17.' not in first and '"21.' not in first:
        raise RuntimeError(f"unsupported Java: {first}")
    return first


def _numpy() -> str:
    version = _version("numpy")
    if int(version.split(".")[0]) >= 2:
        raise RuntimeError(f"numpy {version}: petastorm and pyarrow 14 need numpy<2")
    return version


def _pyarrow() -> str:
    version = _version("pyarrow")
    if version != "14.0.2":
        raise RuntimeError(f"pyarrow {version}: petastorm 0.13.1 needs pyarrow 14.0.2")
    return version


def _horovod() -> str:
    import horovod.torch as hvd

    if not hvd.gloo_built():
        raise RuntimeError("horovod was built without Gloo")
    return f"{_version('horovod')} (torch extension, gloo)"


def _stack() -> str:
    return ", ".join(f"{d} {_version(d)}" for d in ("pyspark", "delta-spark", "petastorm", "torch", "mlflow"))


def _spark(session: list[SparkSession], build_session: Callable[[], SparkSession], settings: Settings) -> str:
    session.append(build_session())
    table = f"{settings.lakehouse.root}/_doctor"
    session[0].range(3).write.format("delta").mode("overwrite").save(table)
    rows = session[0].read.format("delta").load(table).count()
    master = session[0].sparkContext.master
    return f"Spark {session[0].version} with Delta ({rows} rows read back), master {master}"


def _workers(session: list[SparkSession], num_proc: int) -> str:
    if not session:
        raise RuntimeError("no Spark session to run the workers on")
    results = run_workers(session[0], allreduce_probe, num_proc, (0,), gloo_timeout_s=60)
    same = all(r["weights"] == results[0]["weights"] for r in results)
    expected = (num_proc - 1) / 2
    if not same or any(abs(r["average_rank"] - expected) > 1e-6 for r in results):
        raise RuntimeError(f"workers disagree after a synchronised step: {results}")
    return f"{len(results)} workers in processes {sorted(r['pid'] for r in results)} agree"


def checks(
    settings: Settings | None = None,
    build_session: Callable[[], SparkSession] | None = None,
    horovod: int | None = None,
) -> list[Check]:
    """The checks to run, in order: the installed stack, then Spark with Delta and Horovod on Spark.

    The Spark check runs when ``settings`` and ``build_session`` are given (the session is built inside
    the check, so a session that cannot start is reported like any other failure); the Horovod workers
    check also needs ``horovod``, the number of workers.
    """
    found: list[Check] = [
        ("python", lambda: sys.version.split()[0]),
        ("java", _java),
        ("numpy", _numpy),
        ("pyarrow", _pyarrow),
        ("stack", _stack),
        ("horovod", _horovod),
    ]
    session: list[SparkSession] = []
    if settings is not None and build_session is not None:
        found.append(("spark", lambda: _spark(session, build_session, settings)))
        if horovod:
            found.append(("horovod-spark", lambda: _workers(session, horovod)))
    return found


def diagnose(
    settings: Settings | None = None,
    build_session: Callable[[], SparkSession] | None = None,
    horovod: int | None = None,
) -> int:
    """Run :func:`checks`, printing ``ok`` or ``FAIL`` and the outcome of each; returns how many failed."""
    failed = 0
    for name, check in checks(settings, build_session, horovod):
        try:
            print(f"  ok    {name:8} {check()}")
        except Exception as exc:  # noqa: BLE001 - every failure is reported, none is fatal to the report
            failed += 1
            print(f"  FAIL  {name:8} {exc}")
    return failed
