"""MLflow: experiments in the lakehouse, the logged tile model and its registration.

Only the public configuration, figures and lineage (table path, version, counts) are logged; the
pseudonym secret and patient pseudonyms never are.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.models import infer_signature

from conf import Settings

REPO = Path(__file__).resolve().parents[1]
CHALLENGER, CHAMPION = "challenger", "champion"


def use_tracking(settings: Settings) -> str:
    """Point MLflow at the configured store and experiment (artifacts inside a local lakehouse)."""
    uri = settings.tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(settings.mlflow.registry_uri or uri)
    name = settings.mlflow.experiment
    if mlflow.get_experiment_by_name(name) is None:
        root = settings.lakehouse.root
        location = None if "://" in root else str(Path(root).resolve() / "mlartifacts")
        mlflow.create_experiment(name, artifact_location=location)
    mlflow.set_experiment(name)
    return uri


def flat_params(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested configuration as MLflow parameters (``spark.master`` = ``local[*]``)."""
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flat_params(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if not isinstance(value, str) else value
    return flat


def log_tile_model(
    weights: dict[str, Any],
    network: str,
    classes: list[str],
    temperature: float,
    example_pixels: list[bytes],
) -> mlflow.models.model.ModelInfo:
    """Log the tile classifier as a pyfunc model with signature, input example and pinned requirements."""
    import torch

    from model.pyfunc import TileClassifier

    with tempfile.TemporaryDirectory() as folder:
        weights_path, spec_path = Path(folder) / "weights.pt", Path(folder) / "spec.json"
        torch.save(weights, weights_path)
        spec_path.write_text(json.dumps({"network": network, "classes": classes, "temperature": temperature}))
        example = pd.DataFrame({"pixels": example_pixels})
        model = TileClassifier()
        artifacts = {"weights": str(weights_path), "spec": str(spec_path)}
        output = pd.DataFrame(
            np.full((len(example), len(classes)), 1 / len(classes)), columns=[f"p_{c}" for c in classes]
        )
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=model,
            artifacts=artifacts,
            code_paths=[str(REPO / "model"), str(REPO / "pipelines")],
            signature=infer_signature(example, output),
            input_example=example,
            pip_requirements=[
                f"{dist}=={_version(dist)}" for dist in ("torch", "numpy", "pandas", "pillow", "mlflow")
            ],
        )


def _version(dist: str) -> str:
    import importlib.metadata

    return importlib.metadata.version(dist)


def register(model_uri: str, name: str, tags: dict[str, str], description: str) -> str:
    """Register a version, tag it, and give it the ``challenger`` alias; returns the version number."""
    client = MlflowClient()
    version = mlflow.register_model(model_uri, name).version
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.update_model_version(name, version, description=description)
    client.set_registered_model_alias(name, CHALLENGER, version)
    return str(version)
