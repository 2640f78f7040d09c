"""A logged tile model ships only the code its pyfunc imports, and loads and predicts from that code alone
in a fresh process outside the repository (no oncolake install on its path)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch

from core.codec import encode_png
from model.data import TileInput
from model.networks import build_network
from model.tracking import REPO, log_tile_model, pyfunc_code

CLASSES = ["benign", "malignant"]

# Run in a fresh interpreter: the oncolake install (an editable finder, the repository on sys.path) is
# taken away before anything is imported, so the model can only use the code it carries.
LOAD = """
import json, sys
sys.meta_path = [f for f in sys.meta_path if "__editable__" not in type(f).__module__ + repr(f)]
sys.path_hooks = [h for h in sys.path_hooks if "__editable__" not in getattr(h, "__module__", "")]
sys.path = [p for p in sys.path if p.rstrip("/") != REPO]
import mlflow.pyfunc, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
out = model.predict(pd.read_pickle(sys.argv[2]))
ours = {n: m.__file__ for n, m in sys.modules.items()
        if n.split(".")[0] in ("conf", "core", "jobs", "model", "pipelines", "synth") and m.__file__}
print(json.dumps({"p": out.to_numpy().tolist(), "modules": ours}))
"""


def _tiles(n: int = 3) -> list[bytes]:
    rng = np.random.default_rng(0)
    return [encode_png(rng.integers(0, 256, (224, 224), dtype=np.uint8)) for _ in range(n)]


def test_the_model_ships_its_pyfunc_code_only_and_loads_without_oncolake(mlflow_uri: str, tmp_path) -> None:
    torch.manual_seed(0)
    net = build_network("compact", len(CLASSES))
    tiles = _tiles()
    with mlflow.start_run():
        info = log_tile_model(net.state_dict(), "compact", CLASSES, 1.5, tiles[:2], TileInput(224, 0.5, 0.2))
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path / "dl")))

    code = local / "code"
    shipped = {str(p.relative_to(code)) for p in code.rglob("*.py")}
    expected = {
        str((REPO / m.replace(".", "/")).with_suffix(".py").relative_to(REPO))
        if not (REPO / m.replace(".", "/")).is_dir()
        else f"{m.replace('.', '/')}/__init__.py"
        for m in pyfunc_code()
    }
    assert shipped == expected
    assert {"model/pyfunc.py", "model/networks.py", "model/inference.py", "core/__init__.py"} <= shipped
    assert {p.split("/")[0] for p in shipped} == {"model", "core"}  # no pipelines/, conf/, jobs/
    assert "model/tracking.py" not in shipped and "model/registry.py" not in shipped

    inputs = tmp_path / "tiles.pkl"
    pd.DataFrame({"pixels": tiles}).to_pickle(inputs)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    script = LOAD.replace("REPO", repr(str(REPO)))
    done = subprocess.run(
        [sys.executable, "-c", script, str(local), str(inputs)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(Path(f).is_relative_to(code) for f in result["modules"].values()), result["modules"]
    assert not {n for n in result["modules"] if n.split(".")[0] in ("pipelines", "conf", "jobs")}

    own = mlflow.pyfunc.load_model(info.model_uri).predict(pd.DataFrame({"pixels": tiles}))
    assert np.allclose(result["p"], own.to_numpy(), atol=1e-6)
    assert np.allclose(own.sum(axis=1), 1.0)
