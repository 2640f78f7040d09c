"""Check that the installed stack is the one oncolake is pinned to, and that each part really starts.

    oncolake doctor [--spark] [--horovod N] [--config NAME|FILE] [--set key=value ...]
    spark-submit jobs/doctor.py --spark --horovod 2 --config cluster

Prints one line per check and exits non-zero if any fails. ``--spark`` also starts a Delta session
(resolving and caching Delta's jars the first time), which the set-up script uses to warm the cache.
``--horovod N`` runs N Horovod workers on the session's executors: one allreduce and one synchronised
optimizer step, the quickest proof that a cluster can train.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
from collections.abc import Callable

from pyspark.sql import SparkSession

from jobs.options import job_parser, settings_from
from jobs.session import build_spark
from model.distributed import allreduce_probe, run_workers


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


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("oncolake doctor", __doc__)
    parser.add_argument("--spark", action="store_true", help="also start a Delta Spark session")
    parser.add_argument(
        "--horovod", type=int, metavar="N", help="also run N Horovod workers on the executors"
    )
    args = parser.parse_args(argv)
    checks: list[tuple[str, Callable[[], str]]] = [
        ("python", lambda: sys.version.split()[0]),
        ("java", _java),
        ("numpy", _numpy),
        ("pyarrow", _pyarrow),
        ("stack", _stack),
        ("horovod", _horovod),
    ]
    if args.spark or args.horovod:
        settings = settings_from(args)
        session: list[SparkSession] = []

        def _spark() -> str:
            session.append(build_spark(settings, "doctor"))
            table = f"{settings.lakehouse.root}/_doctor"
            session[0].range(3).write.format("delta").mode("overwrite").save(table)
            rows = session[0].read.format("delta").load(table).count()
            master = session[0].sparkContext.master
            return f"Spark {session[0].version} with Delta ({rows} rows read back), master {master}"

        checks.append(("spark", _spark))
    if args.horovod:

        def _workers() -> str:
            results = run_workers(session[0], allreduce_probe, args.horovod, (0,), gloo_timeout_s=60)
            same = all(r["weights"] == results[0]["weights"] for r in results)
            expected = (args.horovod - 1) / 2
            if not same or any(abs(r["average_rank"] - expected) > 1e-6 for r in results):
                raise RuntimeError(f"workers disagree after a synchronised step: {results}")
            return f"{len(results)} workers in processes {sorted(r['pid'] for r in results)} agree"

        checks.append(("horovod-spark", _workers))
    failed = 0
    for name, check in checks:
        try:
            print(f"  ok    {name:8} {check()}")
        except Exception as exc:  # noqa: BLE001 - every failure is reported, none is fatal to the report
            failed += 1
            print(f"  FAIL  {name:8} {exc}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
