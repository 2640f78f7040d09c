"""The MLflow model that scoring loads: normalised tiles in, calibrated class probabilities out.

Its input is exactly the tiles table's encoding (a ``pixels`` column of PNG bytes), so a Spark UDF built
from the registered model can be applied to the tiles table as it is. The network's weights, its name,
the class names, the calibration temperature and how tiles are fed to the network (size, pixel mean and
spread) travel as artifacts; the code travels with the model (``code_paths``: this module and what it
imports from ``model/`` and ``core/``, see :func:`model.tracking.pyfunc_code`), so loading it needs no
oncolake install.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.pyfunc.model import PythonModel

# When set, every model load appends its process id to this file: how an operator (or
# benchmarks/score.py) checks that Spark's Python workers load the model once each, not once per batch.
LOAD_LOG_ENV = "ONCOLAKE_MODEL_LOAD_LOG"


class TileClassifier(PythonModel):
    """Calibrated tile probabilities: ``softmax(logits / temperature)``, one ``p_<class>`` column each."""

    def load_context(self, context: Any) -> None:
        import torch

        from model.data import TileInput
        from model.networks import build_network

        spec = json.loads(Path(context.artifacts["spec"]).read_text())
        self.classes: list[str] = spec["classes"]
        self.temperature = float(spec["temperature"])
        self.batch_size = int(spec.get("batch_size", 64))
        # None: logged before the tile input was recorded (model.inference.LEGACY_INPUT)
        self.tile_input = TileInput(**spec["tile_input"]) if "tile_input" in spec else None
        self.net = build_network(spec["network"], len(self.classes))
        self.net.load_state_dict(
            torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True)
        )
        self.net.eval()
        try:  # in a Spark task (the scoring UDF): as many threads as the task's cores, not the machine's
            from pyspark import TaskContext

            task = TaskContext.get()
        except ImportError:
            task = None
        if task is not None:
            torch.set_num_threads(max(1, task.cpus()))
        if os.environ.get(LOAD_LOG_ENV):
            with open(os.environ[LOAD_LOG_ENV], "a") as log:
                log.write(f"{os.getpid()}\n")

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from model.inference import predict_tiles

        pixels = list(model_input["pixels"])
        probabilities = predict_tiles(
            self.net, pixels, len(self.classes), self.temperature, self.batch_size, self.tile_input
        )
        return pd.DataFrame(probabilities, columns=[f"p_{c}" for c in self.classes])
