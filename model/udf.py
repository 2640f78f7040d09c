"""A registered model as a Spark UDF for bulk scoring: tiles' ``pixels`` in, ``p_<class>`` out.

Built with ``pyspark.ml.functions.predict_batch_udf`` around the MLflow model rather than with
``mlflow.pyfunc.spark_udf``: ``benchmarks/score.py`` measured ``spark_udf`` loading the model once per
*task* on a local master (its per-worker cache is used only on clusters), while ``predict_batch_udf``
keeps it once per Python worker (Spark's ``ModelCache``) everywhere, and scored faster on the same tiles
(docs/benchmarks.md). The model's files are downloaded once on the driver and shipped as a zip with
``SparkContext.addArchive``, so executors need no access to the tracking server or its artifact store.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from pyspark.sql import Column, SparkSession
from pyspark.sql import types as T

BATCH_SIZE = 64  # tiles per call to the model: the pyfunc's own inference batch


def result_type(classes: Sequence[str]) -> T.StructType:
    """The UDF's result: one ``p_<class>`` double per class, the columns the model's ``predict`` returns."""
    return T.StructType([T.StructField(f"p_{c}", T.DoubleType()) for c in classes])


def tile_udf(
    spark: SparkSession, model_uri: str, classes: Sequence[str], batch_size: int = BATCH_SIZE
) -> Callable[[Column], Column]:
    """The model at ``model_uri`` (``models:/<name>/<version>``) as a UDF over a ``pixels`` column or struct.

    Returns:
        A UDF whose result is a struct of one ``p_<class>`` double per class, calibrated probabilities
        exactly as the model's own ``predict`` returns them.
    """
    import mlflow
    from pyspark.ml.functions import predict_batch_udf

    folder = Path(tempfile.mkdtemp(prefix="oncolake-model-"))
    local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(folder / "model")))
    # Shipped as one zip archive, which Spark unpacks on every executor: ``addFile`` of a local folder is
    # refused on any master but ``local`` (UNSUPPORTED_ADD_FILE.LOCAL_DIRECTORY: local-cluster, standalone,
    # YARN, Kubernetes). The archive's name is unique per call, so two versions never collide.
    archive = shutil.make_archive(str(folder / folder.name), "zip", root_dir=local)
    spark.sparkContext.addArchive(archive)
    shipped = Path(archive).name  # on the executors: the folder the archive was unpacked into

    def make_predict_fn() -> Callable:  # runs in each Python worker, once (Spark's ModelCache)
        from core.quiet import quiet

        quiet()
        import mlflow.pyfunc
        import pandas as pd
        from pyspark import SparkFiles

        # Loading puts the model's own code (a subset of model/ and core/) first on sys.path: import this
        # worker's model package first, so that later tasks in the same worker still find all of it.
        import model.pyfunc  # noqa: F401

        loaded = mlflow.pyfunc.load_model(SparkFiles.get(shipped))

        def predict(pixels):
            out = loaded.predict(pd.DataFrame({"pixels": list(pixels)}))
            return {column: out[column].to_numpy() for column in out.columns}

        return predict

    return predict_batch_udf(make_predict_fn, return_type=result_type(classes), batch_size=batch_size)
