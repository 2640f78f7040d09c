"""The multi-user server profile: ``oncolake mlflow-server --backend postgresql`` on a real PostgreSQL.

A throwaway PostgreSQL on loopback (benchmarks/postgres.py; as root its server runs as the ``postgres``
user through ``runuser``), the job started as a user starts it (benchmarks/mlflow_load.py's
``serve_job``), and then: the trainer service account registers a version and moves the champion alias,
the expert reads and is refused (403) what only the trainer may do, anonymous callers get 401; runs,
versions, aliases, users and grants live in PostgreSQL (no SQLite file is written) and survive a restart of
the server; every request is in the access log with its user and endpoint, and no password, no request
body and no query string is; no password shows in any process's arguments; and the load test of
benchmarks/mlflow_load.py at a small size (8 clients) gets no error and loses no logged metric.
"""

from __future__ import annotations

import subprocess

import pytest

from benchmarks.mlflow_load import (
    DATABASES,
    EXPERIMENT,
    MODEL,
    Users,
    access_records,
    call,
    load,
    lost_metrics,
    seed,
    serve_job,
)
from benchmarks.postgres import PostgresMissing, binary, local_postgres

pytestmark = pytest.mark.slow
BODY_SENTINEL = "body-sentinel-5f0c2a"  # a parameter value: it must reach the store, never the access log


@pytest.fixture(scope="module")
def postgres():
    try:
        binary("initdb")
    except PostgresMissing as exc:
        pytest.skip(str(exc))
    with local_postgres(DATABASES) as pg:
        yield pg


def every_process_argv() -> str:
    return subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout


def refusals(url: str, users: Users, version: str, run_id: str, experiment_id: str) -> dict[str, int]:
    source = f"mlflow-artifacts:/{experiment_id}/{run_id}/artifacts/model"
    expert = users.expert
    return {
        "expert creates a version": call(
            url,
            expert,
            "POST",
            "model-versions/create",
            json={"name": MODEL, "source": source, "run_id": run_id},
        ).status_code,
        "expert moves the champion": call(
            url,
            expert,
            "POST",
            "registered-models/alias",
            json={"name": MODEL, "alias": "champion", "version": version},
        ).status_code,
        "expert starts a run": call(
            url, expert, "POST", "runs/create", json={"experiment_id": experiment_id, "start_time": 0}
        ).status_code,
        "anonymous reads a model": call(
            url, None, "GET", "registered-models/get", params={"name": MODEL}
        ).status_code,
    }


EXPECTED_REFUSALS = {
    "expert creates a version": 403,
    "expert moves the champion": 403,
    "expert starts a run": 403,
    "anonymous reads a model": 401,
}


def test_postgres_profile_permissions_restart_access_log_and_load(postgres, tmp_path) -> None:
    users = Users.random()
    secrets_ = [*users.passwords(), postgres.password]
    with serve_job(postgres, users, tmp_path, workers=1) as job:
        argv_seen = every_process_argv()
        seeded = seed(job.url, users.trainer, param_value=BODY_SENTINEL)  # as the trainer: all 200
        expert_read = call(job.url, users.expert, "GET", "registered-models/get", params={"name": MODEL})
        assert expert_read.status_code == 200, expert_read.text
        assert (
            refusals(job.url, users, seeded.version, seeded.run_id, seeded.experiment_id) == EXPECTED_REFUSALS
        )
        result = load(job.url, users, seeded, clients=8, per_client=6)
        assert result.errors == [], result.errors[:5]
        assert set(lost_metrics(job.url, users, result).values()) == {0}
        first_start = job.printed()
    assert "granted 'training-service' EDIT on registered_model oncolake-" in first_start
    assert f"experiment {seeded.experiment_id}" in first_start

    # Everything is in PostgreSQL, nothing in SQLite files in the lakehouse.
    assert postgres.query("mlflow", f"SELECT version FROM model_versions WHERE name = '{MODEL}'") == [
        (int(seeded.version),)
    ]
    assert postgres.query("mlflow", f"SELECT name FROM experiments WHERE name = '{EXPERIMENT}'") == [
        (EXPERIMENT,)
    ]
    stored_users = {row[0] for row in postgres.query("mlflow_auth", "SELECT username FROM users")}
    assert stored_users == {users.admin[0], users.expert[0], users.trainer[0]}
    assert not list(job.lakehouse.rglob("*.db"))

    # A restart keeps every run, version, alias, user and permission.
    with serve_job(postgres, users, tmp_path, workers=1) as job:
        argv_seen += every_process_argv()
        champion = call(
            job.url,
            users.expert,
            "GET",
            "registered-models/alias",
            params={"name": MODEL, "alias": "champion"},
        ).json()["model_version"]
        assert champion["version"] == seeded.version
        run = call(job.url, users.expert, "GET", "runs/get", params={"run_id": seeded.run_id}).json()["run"]
        assert {p["key"]: p["value"] for p in run["data"]["params"]} == {"note": BODY_SENTINEL}
        assert (
            refusals(job.url, users, seeded.version, seeded.run_id, seeded.experiment_id) == EXPECTED_REFUSALS
        )
        again = seed(
            job.url, users.trainer
        )  # the trainer's grants survived: a second version, champion moved
        assert int(again.version) == int(seeded.version) + 1
        second_start = job.printed().removeprefix(first_start)
    assert "granted" not in second_start and "reserved" not in second_start  # nothing to redo

    records = access_records(job.lakehouse)
    by_user = {(r["user"], r["method"], r["endpoint"], r["status"]) for r in records}
    assert (users.trainer[0], "POST", "/api/2.0/mlflow/model-versions/create", 200) in by_user
    assert (users.expert[0], "POST", "/api/2.0/mlflow/model-versions/create", 403) in by_user
    assert (None, "GET", "/api/2.0/mlflow/registered-models/get", 401) in by_user
    assert all(set(r) == {"time", "user", "method", "endpoint", "status", "ms"} for r in records)
    log_text = (job.lakehouse / "mlflow-server" / "access.log").read_text()
    assert BODY_SENTINEL not in log_text and "?" not in log_text  # no body, no query string
    for secret in secrets_:
        assert secret not in log_text
        assert secret not in argv_seen
        assert secret not in first_start + second_start
        for path in (job.lakehouse / "mlflow-server").iterdir():
            assert secret not in path.read_text(errors="replace"), path
