"""Quiet output: third-party warnings filtered at their source, MLflow's INFO lines off.

:func:`quiet` is called first by every job (``jobs.session.build_spark``, on the driver) and by the code
Spark's Python workers and the Horovod training workers run (at the start of each UDF or worker
function). It installs ``warnings`` filters matching the *module a warning is attributed to*, so a
``FutureWarning``, ``DeprecationWarning`` or ``UserWarning`` raised inside petastorm, pyarrow, MLflow,
PySpark, torch and the other packages of :data:`THIRD_PARTY` is dropped, while one attributed to our own
code still shows (it is ours to fix). Nothing is hidden by redirecting stderr: errors and every other
warning still reach it.

The driver's choice reaches the workers through the environment: ``ONCOLAKE_QUIET=0`` (in the job's
environment, passed on to executors as ``spark.executorEnv.ONCOLAKE_QUIET``) turns the filters off
everywhere, to see every warning when debugging. The standard library only, so any process can call it
before importing anything else.
"""

from __future__ import annotations

import logging
import os
import warnings

QUIET_ENV = "ONCOLAKE_QUIET"

# Top-level packages whose own warnings are noise to a user of oncolake (import names).
THIRD_PARTY = (
    "alembic",
    "fsspec",
    "google",
    "horovod",
    "imagecodecs",
    "imagehash",
    "matplotlib",
    "mlflow",
    "numpy",
    "pandas",
    "petastorm",
    "PIL",
    "py4j",
    "pyarrow",
    "pydantic",
    "pydicom",
    "pylibjpeg",
    "pyspark",
    "scipy",
    "setuptools",
    "sklearn",
    "sqlalchemy",
    "torch",
)
CATEGORIES: tuple[type[Warning], ...] = (FutureWarning, DeprecationWarning, UserWarning)
# Loggers whose INFO lines (run links, database migrations) are turned off; warnings still show.
LOGGERS = ("mlflow", "alembic")

# Logged (not ``warnings``) cautions of third-party packages about a choice made on purpose: MLflow warns
# on every logged model that a Python object is serialised with cloudpickle; ours is our own class,
# loaded only from our own registry.
LOGGED_CAUTIONS = {"mlflow.pyfunc": "Passing a Python object as `python_model`"}


class _DropCaution(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


# A module name in one of the packages or below it: "pyarrow", "petastorm.reader", not "pyarrowish".
_MODULES = rf"(?:{'|'.join(THIRD_PARTY)})(?:\.|$)"


def enabled() -> bool:
    """Whether output is quietened here (``ONCOLAKE_QUIET`` is not ``0``)."""
    return os.environ.get(QUIET_ENV, "1") != "0"


def quiet() -> None:
    """Filter third-party warnings at their source and turn MLflow's INFO logging off, in this process.

    Idempotent: ``warnings.filterwarnings`` replaces an identical filter rather than adding a second, so
    calling it at the start of every UDF batch or worker costs next to nothing. Does nothing when
    ``ONCOLAKE_QUIET=0``.
    """
    if not enabled():
        return
    for category in CATEGORIES:
        warnings.filterwarnings("ignore", category=category, module=_MODULES)
    # MLflow sets its logger's level from this variable when it is imported (later, or in a child
    # process); the level set below covers an MLflow that is already imported.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # MLflow draws a progress bar for every artifact download (one per model load: scoring, evaluation).
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name, prefix in LOGGED_CAUTIONS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropCaution) for f in logger.filters):
            logger.addFilter(_DropCaution(prefix))
