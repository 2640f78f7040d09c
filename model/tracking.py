"""MLflow: experiments in the lakehouse, the logged tile model and its registration.

Only the public configuration, figures and lineage (table path, version, counts) are logged; the
pseudonym secret and patient pseudonyms never are. A logged model carries as code only the modules its
pyfunc imports (:func:`pyfunc_code`: :mod:`model.pyfunc` and what it imports from ``model/`` and
``core/``), never ``pipelines/``, Spark or the rest of the product.
"""

from __future__ import annotations

import ast
import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.models import infer_signature

from conf import Settings
from model.registry import CHALLENGER, CHAMPION

if TYPE_CHECKING:
    from model.data import TileInput

REPO = Path(__file__).resolve().parents[1]
SHIPPED_PACKAGES = ("model", "core")  # where a logged model's code comes from
__all__ = ["CHALLENGER", "CHAMPION", "log_tile_model", "pyfunc_code", "register", "use_tracking"]


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


def _imported(path: Path) -> set[str]:
    """The modules of :data:`SHIPPED_PACKAGES` a source file imports, at any depth (function-level too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found.update(n for n in names if n.split(".")[0] in SHIPPED_PACKAGES)
    return found


def pyfunc_code(root: str = "model.pyfunc") -> list[str]:
    """The modules a logged model needs: ``root`` and everything it imports from ``model/`` and ``core/``,
    transitively, with their packages' ``__init__`` (sorted module names)."""
    needed: set[str] = set()
    todo = [root]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):
            module = ".".join(parts[:depth])
            package = REPO.joinpath(*parts[:depth])
            source = package / "__init__.py" if package.is_dir() else package.with_suffix(".py")
            if module not in needed and source.is_file():
                needed.add(module)
                todo.extend(_imported(source))
    return sorted(needed)


def _stage_code(folder: Path) -> list[str]:
    """Copy :func:`pyfunc_code`'s files under ``folder`` as packages; returns the top-level folders."""
    for module in pyfunc_code():
        parts = module.split(".")
        package = REPO.joinpath(*parts)
        source = package / "__init__.py" if package.is_dir() else package.with_suffix(".py")
        target = folder.joinpath(source.relative_to(REPO))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    return [str(folder / name) for name in SHIPPED_PACKAGES if (folder / name).is_dir()]


def log_tile_model(
    weights: dict[str, Any],
    network: str,
    classes: list[str],
    temperature: float,
    example_pixels: list[bytes],
    tile_input: TileInput | None = None,
) -> mlflow.models.model.ModelInfo:
    """Log the tile classifier as a pyfunc model with signature, input example and pinned requirements.

    ``tile_input`` (how the network is fed: tile size, pixel mean and spread) is recorded in the model's
    spec; a model logged without it is fed as models were before it was recorded
    (:data:`model.inference.LEGACY_INPUT`). The model's code is :func:`pyfunc_code`.
    """
    import torch

    from model.pyfunc import TileClassifier

    with tempfile.TemporaryDirectory() as folder:
        weights_path, spec_path = Path(folder) / "weights.pt", Path(folder) / "spec.json"
        torch.save(weights, weights_path)
        spec: dict[str, Any] = {"network": network, "classes": classes, "temperature": temperature}
        if tile_input is not None:
            spec["tile_input"] = tile_input.spec()
        spec_path.write_text(json.dumps(spec))
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
            code_paths=_stage_code(Path(folder) / "code"),
            signature=infer_signature(example, output),
            input_example=example,
            pip_requirements=[
                f"{dist}=={_version(dist)}"
                for dist in ("torch", "numpy", "pandas", "pillow", "scipy", "mlflow")
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
