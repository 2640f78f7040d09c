"""The one place that builds a SparkSession: Delta configured, its jars resolved once and cached.

Delta's jars come from Maven Central the first time (through Spark's own Ivy resolver, into a cache
outside the clone); every later session, on this machine or a cluster node with the same cache, is
given the cached jar files directly, so starting a job needs no network. Under ``spark-submit`` the
user's ``--packages``/``--jars`` take precedence over both.

Output is quiet (:func:`core.quiet.quiet`): called when this module is imported (every job imports it
before the model and pipeline code whose imports warn) and again in :func:`build_spark`; executors get
``ONCOLAKE_QUIET`` so the code their Python workers run first applies the same filters. Long stages
show Spark's own console progress bar (``spark.ui.showConsoleProgress``) when stderr is a terminal.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pyspark import SparkConf, SparkContext
from pyspark.sql import SparkSession

from conf import CONF_DIR, Settings
from conf.schema import SECRET_KEY
from core.quiet import QUIET_ENV, quiet
from pipelines.io import hadoop_path

quiet()

SCALA_VERSION = "2.13"
DELTA_VERSION = importlib.metadata.version("delta-spark")
DELTA_PACKAGE = f"io.delta:delta-spark_{SCALA_VERSION}:{DELTA_VERSION}"


# Properties a job needs whatever launched it; everything else defers to spark-submit's own settings.
_OURS_ALWAYS = frozenset({"spark.sql.extensions", "spark.sql.catalog.spark_catalog"})


def cache_dir() -> Path:
    """Where downloaded artefacts (Delta jars, the Horovod wheel) are cached, outside any clone."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "oncolake"
    return Path(os.environ.get("ONCOLAKE_CACHE", default))


def ivy_dir() -> Path:
    """Spark's Ivy home for the Delta jars, keyed by the Delta version."""
    return cache_dir() / f"ivy-delta-{DELTA_VERSION}"


def cached_delta_jars() -> list[Path]:
    """The Delta jar files already resolved into the cache, or an empty list when they are not there yet."""
    jars = sorted((ivy_dir() / "jars").glob("*.jar"))
    wanted = f"io.delta_delta-spark_{SCALA_VERSION}-{DELTA_VERSION}.jar"
    return jars if any(j.name == wanted for j in jars) else []


def _delta_conf() -> dict[str, str]:
    jars = cached_delta_jars()
    if jars:
        return {"spark.jars": ",".join(str(j) for j in jars)}
    return {"spark.jars.packages": DELTA_PACKAGE, "spark.jars.ivy": str(ivy_dir())}


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False


def _local_master(master: str) -> bool:
    return master.startswith("local")


def spark_conf(settings: Settings, app: str) -> dict[str, str]:
    """Every Spark property a job's session gets, in the order they are applied (later wins)."""
    conf = {
        "spark.app.name": f"oncolake-{app}",
        "spark.master": settings.spark.master,
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.shuffle.partitions": str(settings.spark.shuffle_partitions),
        "spark.ui.enabled": str(settings.spark.ui).lower(),
        # Spark's progress bar: one line on stderr, redrawn in place while a stage runs (stages over 0.5 s),
        # on a terminal only; in a log or captured output its redraws would be noise.
        "spark.ui.showConsoleProgress": str(_stderr_is_terminal()).lower(),
        # The driver's choice of quiet output reaches the executors' Python workers (core.quiet).
        f"spark.executorEnv.{QUIET_ENV}": os.environ.get(QUIET_ENV, "1"),
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # Rows of images or tiles reach a Python worker in batches of this many: memory stays bounded
        # whatever the partition size (the default, 10,000 rows, would be gigabytes of pixels).
        "spark.sql.execution.arrow.maxRecordsPerBatch": "256",
        # A persisted DataFrame is cached in column batches built in growing heap buffers, 10,000 rows
        # each by default: a whole task's decoded images (ingest caches them), which ran a 1 GB executor
        # out of heap on the full corpus. 16 rows keep it to a few images; other caches hold small rows.
        "spark.sql.inMemoryColumnarStorage.batchSize": "16",
        # Parquet row groups of 32 MB rather than 128: a writer buffers one per task, and Petastorm
        # materialises whole row groups of tiles (as float32, ~30x the PNGs) per reader thread.
        "spark.hadoop.parquet.block.size": str(32 * 2**20),
        # Delta rebuilds a table's state from its log in this many tasks whenever it reads a new version
        # (50 by default): on a small cluster and a log of a few hundred files each such job was mostly
        # task overhead, a third of a streaming micro-batch's time on 2 cores. Up to 50, as the shuffles.
        "spark.databricks.delta.snapshotPartitions": str(min(settings.spark.shuffle_partitions, 50)),
        # A reliable checkpoint (see build_spark) is deleted once the frame that made it is gone.
        "spark.cleaner.referenceTracking.cleanCheckpoints": "true",
        **_delta_conf(),
    }
    conf.update(settings.spark.conf)
    log4j = CONF_DIR / "log4j2.properties"
    if log4j.is_file():  # not when the code runs from a --py-files zip: the cluster's logging applies
        # Beside the JVM options the configuration gives (e.g. garbage-collector settings), not instead
        # of them.
        option = f"-Dlog4j2.configurationFile=file:{log4j}"
        for key in ("spark.driver.extraJavaOptions", "spark.executor.extraJavaOptions"):
            conf[key] = f"{option} {conf[key]}" if conf.get(key) else option
    return conf


def build_spark(settings: Settings, app: str) -> SparkSession:
    """Start (or join) the job's SparkSession with Delta Lake enabled.

    Args:
        settings: the job's configuration (master, partitions, extra properties).
        app: a short job name; the Spark application is called ``oncolake-<app>``.

    Returns:
        The session; tables are then addressed by path under ``settings.lakehouse.root``.
    """
    quiet()
    active = SparkSession.getActiveSession()
    if active is not None:
        # A later job in the same process (the demo's stages, the tests) joins the running session: the
        # job's runtime SQL settings apply, static ones were fixed when it started — what getOrCreate does,
        # without its "Using an existing Spark session" warning on every stage.
        for key, value in spark_conf(settings, app).items():
            if active.conf.isModifiable(key):
                active.conf.set(key, value)
        active.sparkContext.setLogLevel(settings.spark.log_level)
        return active
    if _local_master(settings.spark.master):
        # Bind to loopback: a local job has no business listening on the machine's public address.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        # Python workers (also those of local-cluster's executor JVMs) must start from this environment;
        # PySpark reads the variable, not spark.pyspark.python, when it is not launched by spark-submit.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # Under spark-submit the JVM already runs with the user's --master, --jars or --packages: those win.
    submitted = None
    if "PYSPARK_GATEWAY_PORT" in os.environ:
        SparkContext._ensure_initialized()  # binds SparkConf to the running JVM's system properties
        submitted = SparkConf()
    builder = SparkSession.builder
    hidden: dict[str, str] = {}
    for key, value in spark_conf(settings, app).items():
        if submitted is not None and submitted.contains(key) and key not in _OURS_ALWAYS:
            continue
        if submitted is None and SECRET_KEY.search(key) and "PYSPARK_SUBMIT_ARGS" not in os.environ:
            hidden[key] = value  # never on the JVM's command line, where `ps` shows it
        else:
            builder = builder.config(key, value)
    with _properties_file(hidden):
        spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(settings.spark.log_level)
    if not _one_jvm(spark.sparkContext.master or settings.spark.master):
        # Executors are processes that can be lost: a frame whose lineage is cut (pipelines.io.materialise)
        # is written here, beside the tables, not kept in the executors' block managers, where a lost
        # executor takes it with it. Removed when the job stops (stop_spark); the cleaner removes a
        # checkpoint once nothing refers to it.
        spark.sparkContext.setCheckpointDir(checkpoint_dir(settings, spark.sparkContext.applicationId))
    return spark


def _one_jvm(master: str) -> bool:
    """Driver and executor are one JVM (``local``, ``local[N]``, ``local[N,F]``), not ``local-cluster``."""
    return master == "local" or master.startswith("local[")


def checkpoint_dir(settings: Settings, application_id: str) -> str:
    """Where an application on a cluster (or ``local-cluster``) writes its reliable checkpoints: under
    the lakehouse root (``_spark_checkpoints/<application id>``), which every executor can reach."""
    return f"{settings.lakehouse.root.rstrip('/')}/_spark_checkpoints/{application_id}"


@contextlib.contextmanager
def _properties_file(values: dict[str, str]) -> Iterator[None]:
    """Hand ``values`` to the JVM that PySpark launches through a private properties file, not ``--conf``.

    PySpark starts the driver JVM with ``spark-submit --conf key=value ...``: any process on the machine
    can read those arguments. Secret-looking properties (``conf.schema.SECRET_KEY``: an object store's
    secret key, a token) go instead into a file only this user can read, named by
    ``--properties-file`` in ``PYSPARK_SUBMIT_ARGS``, and deleted once the JVM has read it. (spark-submit
    then skips ``spark-defaults.conf``: the configuration's ``spark.conf`` is where settings belong.)
    """
    if not values:
        yield
        return
    folder = Path(tempfile.mkdtemp(prefix="oncolake-spark-"))  # mode 0700
    path = folder / "secret.properties"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as out:
        for key, value in values.items():
            out.write(f"{key}={_escape_property(value)}\n")
    os.environ["PYSPARK_SUBMIT_ARGS"] = f"--properties-file {path} pyspark-shell"
    try:
        yield
    finally:
        os.environ.pop("PYSPARK_SUBMIT_ARGS", None)
        shutil.rmtree(folder, ignore_errors=True)


def _escape_property(value: str) -> str:
    """A value as java.util.Properties reads it back (backslashes, leading spaces, line breaks)."""
    escaped = value.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
    return "\\ " + escaped[1:] if escaped.startswith(" ") else escaped


def stop_spark() -> None:
    """Stop the job's session, if it started one, before the process exits.

    Left to the JVM's shutdown hook, a ``local-cluster`` or standalone application's workers shut down
    under it, and the master relaunches executors on them dozens of times (an ERROR line each) before it
    gives the application up.
    """
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is None:
        return
    folder = active.sparkContext.getCheckpointDir()  # <checkpoint_dir>/<a random name Spark chose>
    if folder:
        fs, path = hadoop_path(active, folder)
        ours = path.getParent()
        fs.delete(ours if ours.getName() == active.sparkContext.applicationId else path, True)
    active.stop()
