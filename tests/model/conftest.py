"""The ``champions`` fixture (untrained networks registered as champions: scoring mechanics) and the
``mlflow_server`` fixture: a real MLflow server with basic auth on loopback, one registered model.

Used by tests/model/test_server.py and tests/model/test_registry_browser.py; only a test that asks for
the fixture pays for a server (one per test module). The server is started from :mod:`model.server`'s
own pieces (``server_plan``, ``start``, ``wait_until_ready``) and set up with :mod:`model.server_rest`'s
(``provision_expert``, ``reserve_models``), with a lakehouse in a temporary folder and random credentials
that exist only in this process and the server's environment. What was seeded (``MODEL``, ``ALIAS``,
``METRIC``, ``METRIC_VALUE``) is on the :class:`Server` the fixture yields, so tests need not import this
module (they cannot by name under ``--import-mode=importlib``).
"""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import mlflow
import pytest
import requests
import torch
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from conf import Settings, load_settings
from core.aggregation import AggregationRule
from core.tasks import TASKS
from model.data import TileInput
from model.networks import build_network
from model.registry import model_name
from model.server import Credentials, server_plan, start, stop, wait_until_ready
from model.server_rest import product_models, provision_expert, reserve_models
from model.tracking import CHAMPION, log_tile_model, register, use_tracking
from pipelines.io import merge_into, read_table

MODEL = "oncolake-test-model"
ALIAS = "champion"
METRIC, METRIC_VALUE = "val_auc", 0.8125


@dataclass(frozen=True)
class Server:
    """A running, seeded server: where it answers, who may log in, and what was registered on it."""

    MODEL: ClassVar[str] = MODEL
    ALIAS: ClassVar[str] = ALIAS
    METRIC: ClassVar[str] = METRIC
    METRIC_VALUE: ClassVar[float] = METRIC_VALUE

    url: str
    creds: Credentials
    log: Path
    experiment_id: str
    run_id: str
    version: str
    source: str
    reserved: tuple[str, ...]

    @property
    def admin(self) -> tuple[str, str]:
        return self.creds.admin_user, self.creds.admin_password

    @property
    def expert(self) -> tuple[str, str]:
        return self.creds.expert_user, self.creds.expert_password

    def api(
        self, method: str, path: str, auth: tuple[str, str] | None, **kwargs: object
    ) -> requests.Response:
        """One REST call (``path`` under /api/2.0/mlflow/) as ``auth``, or anonymously when it is None."""
        return requests.request(method, f"{self.url}/api/2.0/mlflow/{path}", auth=auth, timeout=30, **kwargs)


class Champions:
    """Register real (untrained) networks as tasks' champions, with what training records on a version."""

    RULE: ClassVar[AggregationRule] = AggregationRule()  # a fixed rule (the configured one is "auto")

    @staticmethod
    def example(spark: SparkSession, settings: Settings) -> list[bytes]:
        """Two tiles of the lakehouse's tiles table: the input example a logged model records."""
        tiles = read_table(spark, settings.lakehouse.table("tiles")).select("pixels").limit(2)
        return list(tiles.toPandas()["pixels"])

    @classmethod
    def register(
        cls,
        settings: Settings,
        task_name: str,
        seed: int,
        example: list[bytes],
        tags: dict[str, str] | None = None,
    ) -> str:
        """Log and register a network as the task's champion; returns its version.

        ``tags`` default to what training records: a threshold and the aggregation rule."""
        task = TASKS[task_name]
        torch.manual_seed(seed)
        net = build_network(settings.train.network, len(task.classes))
        tile_input = TileInput.from_settings(settings)
        with mlflow.start_run(run_name=f"score-test-{task_name}"):
            info = log_tile_model(
                net.state_dict(), settings.train.network, list(task.classes), 1.0, example, tile_input
            )
        name = model_name(settings, task_name)
        if tags is None:
            tags = {"threshold": "0.5", "task": task_name, **cls.RULE.tags()}
        version = register(info.model_uri, name, tags, "scoring test model")
        mlflow.MlflowClient().set_registered_model_alias(name, CHAMPION, version)
        return version

    @classmethod
    def lakehouse(
        cls,
        spark: SparkSession,
        source: Settings,
        root: Path,
        collections: Sequence[str],
        tasks: Sequence[str],
    ) -> Settings:
        """A lakehouse of a module's own at ``root`` (``tiny`` profile): the ``collections``' images and
        tiles copied from ``source``'s, and an untrained champion per task in its MLflow store."""
        settings = load_settings("tiny", [f"lakehouse.root={root}", "spark.master=local[2]"])
        for table, key in (("images", "image_id"), ("tiles", "tile_id")):
            rows = read_table(spark, source.lakehouse.table(table)).where(
                F.col("collection").isin(list(collections))
            )
            merge_into(spark, rows, settings.lakehouse.table(table), [key])
        use_tracking(settings)
        example = cls.example(spark, settings)
        for task_name in tasks:
            cls.register(settings, task_name, 0, example)
        return settings


@pytest.fixture(scope="session")
def champions() -> type[Champions]:
    """:class:`Champions` (tests cannot import this module by name under ``--import-mode=importlib``)."""
    return Champions


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ok(response: requests.Response) -> dict:
    assert response.status_code == 200, f"{response.request.method} {response.url}: {response.text[:500]}"
    return response.json() if response.content else {}


def _seed(url: str, admin: tuple[str, str]) -> tuple[str, str, str, str]:
    """As the admin: an experiment, a finished run with a metric and a tiny model, version 1 as champion."""

    def call(method: str, path: str, **kwargs: object) -> dict:
        return _ok(requests.request(method, f"{url}/api/2.0/mlflow/{path}", auth=admin, timeout=30, **kwargs))

    experiment_id = call("POST", "experiments/create", json={"name": "oncolake-test"})["experiment_id"]
    run = call(
        "POST", "runs/create", json={"experiment_id": experiment_id, "start_time": int(time.time() * 1000)}
    )
    run_id, artifact_uri = run["run"]["info"]["run_id"], run["run"]["info"]["artifact_uri"]
    metric = {"run_id": run_id, "key": METRIC, "value": METRIC_VALUE, "timestamp": 0, "step": 0}
    call("POST", "runs/log-metric", json=metric)
    # The model's files go through the artifact proxy into the lakehouse, like a real logged model's.
    assert artifact_uri.startswith("mlflow-artifacts:/"), artifact_uri
    model_path = f"{artifact_uri.removeprefix('mlflow-artifacts:/')}/model/MLmodel"
    upload = requests.put(
        f"{url}/api/2.0/mlflow-artifacts/artifacts/{model_path}",
        data=b"flavors: {}\n",
        auth=admin,
        timeout=30,
    )
    _ok(upload)
    call(
        "POST",
        "runs/update",
        json={"run_id": run_id, "status": "FINISHED", "end_time": int(time.time() * 1000)},
    )
    call("POST", "registered-models/create", json={"name": MODEL})
    source = f"{artifact_uri}/model"
    version = call("POST", "model-versions/create", json={"name": MODEL, "source": source, "run_id": run_id})
    number = version["model_version"]["version"]
    call("POST", "registered-models/alias", json={"name": MODEL, "alias": ALIAS, "version": number})
    return experiment_id, run_id, number, source


def serve(folder: Path) -> Iterator[Server]:
    """Start a server with a fresh lakehouse under ``folder``, seed it, yield it, stop it."""
    lakehouse = folder / "lakehouse"
    creds = Credentials(
        admin_user="oncolake-admin",
        admin_password=secrets.token_urlsafe(18),
        expert_user="radiologist",
        expert_password=secrets.token_urlsafe(18),
    )
    settings = load_settings("tiny", [f"lakehouse.root={lakehouse}"])
    plan = server_plan(settings, creds, port=_free_port(), workers=1)
    log = folder / "mlflow-server.log"
    proc = start(plan, log)
    try:
        try:
            wait_until_ready(plan.url, proc, timeout=90)
            provision_expert(plan.url, creds)
            reserved = tuple(reserve_models(plan.url, creds, product_models(settings)))
            seeded = _seed(plan.url, (creds.admin_user, creds.admin_password))
        except Exception:
            stop(proc)
            print(log.read_text()[-5000:])
            raise
        yield Server(plan.url, creds, log, *seeded, reserved)
    finally:
        stop(proc)


@pytest.fixture(scope="module", name="mlflow_server")
def server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One seeded server per test module, stopped (with its workers) when the module is done."""
    yield from serve(tmp_path_factory.mktemp("mlflow-server"))
