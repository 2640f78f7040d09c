"""Load on the multi-user MLflow server: concurrent authenticated clients against PostgreSQL on loopback.

    python -m benchmarks.mlflow_load [--clients 8] [--requests 250] [--workers 2]

Starts a throwaway PostgreSQL (:mod:`benchmarks.postgres`), then ``oncolake mlflow-server --backend
postgresql`` as its own process (the job as a user runs it: admin, expert and trainer from the
environment, the database password as ``ONCOLAKE_MLFLOW_DATABASE_PASSWORD``), seeds a run, a version of a
product model and its ``champion`` alias as the trainer, and sends ``--clients`` concurrent clients
``--requests`` requests each: half the clients are experts reading the registry (the model, its champion,
its versions, the experiment, the champion's run), half are training accounts logging metrics to a run of
their own between registry reads. It prints throughput, the error rate (every answer but 200 is an error:
the load never asks for something it may not have) and latency percentiles, then checks that no logged
metric was lost (each run's metric history holds exactly the calls answered 200) and reads the access log.

tests/model/test_server_postgres.py runs the same code at a small size.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests

from benchmarks.postgres import Postgres, free_port, local_postgres
from model.server import ENV_PREFIX

REPO = Path(__file__).resolve().parents[1]
DATABASES = ("mlflow", "mlflow_auth")
MODEL = "oncolake-histo_benign_vs_malignant"  # a product model the tiny profile reserves
EXPERIMENT = "oncolake"  # mlflow.experiment of the profiles


@dataclass(frozen=True)
class Users:
    """The server's accounts (passwords never in ``repr``)."""

    admin: tuple[str, str] = field(repr=False)
    expert: tuple[str, str] = field(repr=False)
    trainer: tuple[str, str] = field(repr=False)

    @classmethod
    def random(cls) -> Users:
        import secrets

        return cls(
            ("oncolake-admin", secrets.token_urlsafe(18)),
            ("radiologist", secrets.token_urlsafe(18)),
            ("training-service", secrets.token_urlsafe(18)),
        )

    def environment(self, database_password: str) -> dict[str, str]:
        """The ``ONCOLAKE_MLFLOW_*`` variables ``oncolake mlflow-server`` reads."""
        pairs = {"ADMIN": self.admin, "EXPERT": self.expert, "TRAINER": self.trainer}
        env = {f"{ENV_PREFIX}{role}_USER": user for role, (user, _) in pairs.items()}
        env |= {f"{ENV_PREFIX}{role}_PASSWORD": password for role, (_, password) in pairs.items()}
        return env | {f"{ENV_PREFIX}DATABASE_PASSWORD": database_password}

    def passwords(self) -> list[str]:
        return [self.admin[1], self.expert[1], self.trainer[1]]


@dataclass
class Job:
    """A running ``oncolake mlflow-server`` process and where it answers."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    lakehouse: Path

    def printed(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def serve_job(
    pg: Postgres,
    users: Users,
    folder: Path,
    workers: int = 2,
    timeout: float = 120,
    extra: tuple[str, ...] = (),
) -> Iterator[Job]:
    """``oncolake mlflow-server --backend postgresql`` as a user starts it; SIGINT (Ctrl-C) stops it."""
    port = free_port()
    lakehouse = folder / "lakehouse"
    log = folder / f"server-{port}.log"
    argv = [sys.executable, "-m", "jobs.cli", "mlflow-server", "--config", "tiny"]
    argv += ["--set", f"lakehouse.root={lakehouse}", "--port", str(port), "--workers", str(workers)]
    argv += ["--backend", "postgresql", "--backend-store-uri", pg.uri(DATABASES[0]), *extra]
    env = {**os.environ, **users.environment(pg.password), "PYTHONUNBUFFERED": "1"}
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    job = Job(proc, f"http://127.0.0.1:{port}", log, lakehouse)
    try:
        deadline = time.monotonic() + timeout
        while "mlflow-server: serving" not in job.printed():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"oncolake mlflow-server did not come up:\n{job.printed()[-4000:]}")
            time.sleep(0.5)
        yield job
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def call(
    url: str, auth: tuple[str, str] | None, method: str, path: str, **kwargs: object
) -> requests.Response:
    """One REST call under /api/2.0/mlflow/."""
    return requests.request(method, f"{url}/api/2.0/mlflow/{path}", auth=auth, timeout=60, **kwargs)


def ok(response: requests.Response) -> dict:
    assert response.status_code == 200, f"{response.request.method} {response.url}: {response.text[:400]}"
    return response.json() if response.content else {}


@dataclass(frozen=True)
class Seeded:
    experiment_id: str
    run_id: str
    version: str


def seed(url: str, trainer: tuple[str, str], param_value: str = "seed") -> Seeded:
    """As the trainer: a finished run with a parameter and a metric, a version of MODEL, its champion."""
    experiment_id = ok(
        call(url, trainer, "GET", "experiments/get-by-name", params={"experiment_name": EXPERIMENT})
    )["experiment"]["experiment_id"]
    now = int(time.time() * 1000)
    run = ok(
        call(url, trainer, "POST", "runs/create", json={"experiment_id": experiment_id, "start_time": now})
    )
    run_id = run["run"]["info"]["run_id"]
    ok(
        call(
            url,
            trainer,
            "POST",
            "runs/log-parameter",
            json={"run_id": run_id, "key": "note", "value": param_value},
        )
    )
    metric = {"run_id": run_id, "key": "val_auc", "value": 0.75, "timestamp": now, "step": 0}
    ok(call(url, trainer, "POST", "runs/log-metric", json=metric))
    ok(
        call(
            url,
            trainer,
            "POST",
            "runs/update",
            json={"run_id": run_id, "status": "FINISHED", "end_time": now},
        )
    )
    source = f"{run['run']['info']['artifact_uri']}/model"
    created = ok(
        call(
            url,
            trainer,
            "POST",
            "model-versions/create",
            json={"name": MODEL, "source": source, "run_id": run_id},
        )
    )
    version = created["model_version"]["version"]
    alias = {"name": MODEL, "alias": "champion", "version": version}
    ok(call(url, trainer, "POST", "registered-models/alias", json=alias))
    return Seeded(experiment_id, run_id, version)


@dataclass
class LoadResult:
    """What :func:`load` measured."""

    clients: int
    requests: int
    seconds: float
    latencies_ms: list[float]
    errors: list[str]
    metrics_logged: dict[str, int]  # run id -> log-metric calls answered 200

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    @property
    def error_rate(self) -> float:
        return len(self.errors) / self.requests

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q))


def load(url: str, users: Users, seeded: Seeded, clients: int = 8, per_client: int = 250) -> LoadResult:
    """``clients`` threads, each its own authenticated session: even ones experts reading the registry,
    odd ones the trainer logging metrics to its own run between reads; ``per_client`` requests each."""
    reads = [
        ("GET", "registered-models/get", {"params": {"name": MODEL}}),
        ("GET", "registered-models/alias", {"params": {"name": MODEL, "alias": "champion"}}),
        ("GET", "model-versions/search", {"params": {"filter": f"name='{MODEL}'"}}),
        ("GET", "experiments/get", {"params": {"experiment_id": seeded.experiment_id}}),
        ("GET", "runs/get", {"params": {"run_id": seeded.run_id}}),
    ]
    latencies: list[float] = []
    errors: list[str] = []
    logged: dict[str, int] = {}
    lock = threading.Lock()
    ready = threading.Barrier(clients + 1)

    def client(index: int) -> None:
        writer = index % 2 == 1
        session = requests.Session()
        session.auth = users.trainer if writer else users.expert
        run_id = None
        if writer:
            body = {"experiment_id": seeded.experiment_id, "start_time": int(time.time() * 1000)}
            run_id = ok(session.post(f"{url}/api/2.0/mlflow/runs/create", json=body, timeout=60))["run"][
                "info"
            ]["run_id"]
        mine: list[float] = []
        failed: list[str] = []
        count = 0
        ready.wait()
        for i in range(per_client):
            if writer and i % 2 == 0:
                metric = {"run_id": run_id, "key": "load", "value": float(i), "timestamp": i, "step": i}
                method, path, kwargs = "POST", "runs/log-metric", {"json": metric}
            else:
                method, path, kwargs = reads[(i // 2 if writer else i) % len(reads)]
            start = time.perf_counter()
            try:
                response = session.request(method, f"{url}/api/2.0/mlflow/{path}", timeout=60, **kwargs)
                status = response.status_code
            except requests.RequestException as exc:
                status, response = -1, None
                failed.append(f"{path}: {type(exc).__name__}")
            mine.append((time.perf_counter() - start) * 1000)
            if status == 200 and path == "runs/log-metric":
                count += 1
            elif status != 200 and response is not None:
                failed.append(f"{path}: {status} {response.text[:120]}")
        with lock:
            latencies.extend(mine)
            errors.extend(failed)
            if run_id is not None:
                logged[run_id] = count

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    ready.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    return LoadResult(clients, clients * per_client, seconds, latencies, errors, logged)


def lost_metrics(url: str, users: Users, result: LoadResult) -> dict[str, int]:
    """Per writer run: logged calls answered 200 minus the points the server kept (0 when nothing lost)."""
    lost = {}
    for run_id, count in result.metrics_logged.items():
        history = ok(
            call(
                url,
                users.expert,
                "GET",
                "metrics/get-history",
                params={"run_id": run_id, "metric_key": "load", "max_results": 25000},
            )
        )
        lost[run_id] = count - len(history.get("metrics", []))
    return lost


def access_records(lakehouse: Path) -> list[dict]:
    path = lakehouse / "mlflow-server" / "access.log"
    return [json.loads(line) for line in path.read_text().splitlines()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=250, help="requests per client")
    parser.add_argument("--workers", type=int, default=2, help="the server's uvicorn workers")
    parser.add_argument(
        "--auth-cache-seconds",
        type=int,
        nargs="+",
        default=[0, 30],
        help="one run per value (0: every request checks the password; the server's default is 30)",
    )
    args = parser.parse_args(argv)
    failed = False
    for cache in args.auth_cache_seconds:
        users = Users.random()
        with (
            tempfile.TemporaryDirectory(prefix="oncolake-load-") as tmp,
            local_postgres(DATABASES) as pg,
            serve_job(pg, users, Path(tmp), args.workers, extra=("--auth-cache-seconds", str(cache))) as job,
        ):
            seeded = seed(job.url, users.trainer)
            result = load(job.url, users, seeded, args.clients, args.requests)
            lost = lost_metrics(job.url, users, result)
            records = access_records(job.lakehouse)
        print(
            f"mlflow load (auth cache {cache} s): {result.clients} clients x {args.requests} requests, "
            f"{args.workers} workers, PostgreSQL: {result.requests} requests in {result.seconds:.1f} s = "
            f"{result.throughput:.1f} req/s; errors {len(result.errors)} ({result.error_rate:.2%}); "
            f"latency p50 {result.percentile(50):.0f} ms, p95 {result.percentile(95):.0f} ms, "
            f"p99 {result.percentile(99):.0f} ms; metric points lost {sum(lost.values())}; "
            f"access-log lines {len(records)}",
            flush=True,
        )
        for error in result.errors[:10]:
            print("  error:", error)
        failed |= bool(result.errors) or any(lost.values())
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
