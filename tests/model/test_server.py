"""model.server and model.server_rest: credentials only from outside the code, and who may do what.

The permission tests run against one real MLflow server with basic auth (the ``mlflow_server`` fixture of
tests/model/conftest.py): anonymous callers are refused (401), the expert reads everything but may not
register versions or move aliases (403), the admin may (200). tests/jobs/test_mlflow_server.py runs the job.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import requests

from conf import load_settings
from model.server import ENV_PREFIX, Credentials, ServerError, load_credentials, server_plan
from model.server_rest import provision_expert

REPO = Path(__file__).resolve().parents[2]
ADMIN_PASSWORD, EXPERT_PASSWORD = "admin-pw-0123456789", "expert-pw-0123456789"
FULL_ENV = {
    f"{ENV_PREFIX}ADMIN_USER": "boss",
    f"{ENV_PREFIX}ADMIN_PASSWORD": ADMIN_PASSWORD,
    f"{ENV_PREFIX}EXPERT_USER": "reader",
    f"{ENV_PREFIX}EXPERT_PASSWORD": EXPERT_PASSWORD,
}


# --- credentials and the command line, no server --------------------------------------------------------


def test_credentials_from_a_file_outside_the_repo_and_the_environment_wins(tmp_path: Path) -> None:
    path = tmp_path / "mlflow.env"
    path.touch(mode=0o600)
    path.write_text(
        "# oncolake MLflow server\n" + "".join(f"export {key}='{value}'\n" for key, value in FULL_ENV.items())
    )
    assert load_credentials(path, {}) == Credentials("boss", ADMIN_PASSWORD, "reader", EXPERT_PASSWORD)
    overridden = load_credentials(path, {f"{ENV_PREFIX}EXPERT_USER": "other"})
    assert overridden.expert_user == "other"
    assert ADMIN_PASSWORD not in repr(overridden)
    with pytest.raises(ServerError, match="at least 12 characters"):
        load_credentials(None, {**FULL_ENV, f"{ENV_PREFIX}EXPERT_PASSWORD": "short"})
    with pytest.raises(ServerError, match="inside the repository"):
        load_credentials(REPO / "pyproject.toml", {})


def test_plan_is_basic_auth_with_read_default_and_no_secret_on_disk(tmp_path: Path) -> None:
    settings = load_settings("tiny", [f"lakehouse.root={tmp_path}"])
    creds = load_credentials(None, FULL_ENV)
    plan = server_plan(settings, creds, port=5123, workers=1, environ={"PATH": "/bin", **FULL_ENV})
    argv = plan.argv
    assert argv[argv.index("--app-name") + 1] == "oncolake-auth"  # MLflow's basic-auth + the access log
    assert argv[argv.index("--backend-store-uri") + 1] == settings.tracking_uri()  # what the jobs write
    assert argv[argv.index("--artifacts-destination") + 1] == str(tmp_path.resolve() / "mlartifacts")
    assert plan.url == "http://127.0.0.1:5123"
    config = plan.auth_config.read_text()
    assert plan.auth_config.parent == tmp_path.resolve() / "mlflow-server"
    assert "default_permission = READ" in config
    assert f"database_uri = sqlite:///{tmp_path.resolve()}/mlflow-server/auth.db" in config
    assert ADMIN_PASSWORD not in config
    assert plan.env["MLFLOW_AUTH_ADMIN_PASSWORD"] == ADMIN_PASSWORD
    assert EXPERT_PASSWORD not in plan.env.values()  # the server never needs the expert's password
    assert plan.env["ONCOLAKE_ACCESS_LOG"] == str(tmp_path.resolve() / "mlflow-server" / "access.log")
    assert "auth_cache_ttl_seconds = 30" in config


def test_postgresql_plan_keeps_passwords_out_of_uris_and_argv(tmp_path: Path) -> None:
    settings = load_settings("tiny", [f"lakehouse.root={tmp_path}"])
    env = {
        **FULL_ENV,
        f"{ENV_PREFIX}TRAINER_USER": "trainer",
        f"{ENV_PREFIX}TRAINER_PASSWORD": "trainer-pw-0123456789",
        f"{ENV_PREFIX}DATABASE_PASSWORD": "db-pw-0123456789",
    }
    creds = load_credentials(None, env)
    assert creds.trainer_user == "trainer" and "db-pw" not in repr(creds)
    uri = "postgresql://mlflow@db.example.org:5432/tracking"
    plan = server_plan(settings, creds, backend="postgresql", backend_store_uri=uri, environ={"PATH": "/bin"})
    assert plan.argv[plan.argv.index("--backend-store-uri") + 1] == uri
    assert (
        "database_uri = postgresql://mlflow@db.example.org:5432/tracking_auth" in plan.auth_config.read_text()
    )
    assert plan.env["PGPASSWORD"] == "db-pw-0123456789"
    assert not any(secret in " ".join(plan.argv) for secret in ("db-pw", ADMIN_PASSWORD, "trainer-pw"))
    assert "trainer-pw-0123456789" not in plan.env.values()
    with pytest.raises(ServerError, match="holds a password"):
        server_plan(settings, creds, backend="postgresql", backend_store_uri="postgresql://u:pw@h/db")
    with pytest.raises(ServerError, match="needs --backend-store-uri postgresql://"):
        server_plan(settings, creds, backend="postgresql")
    with pytest.raises(ServerError, match="TRAINER_PASSWORD, or neither"):
        load_credentials(None, {**FULL_ENV, f"{ENV_PREFIX}TRAINER_USER": "trainer"})
    with pytest.raises(ServerError, match="different users"):
        load_credentials(None, {**env, f"{ENV_PREFIX}TRAINER_USER": "boss"})


# --- a real server ---------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "path", ["registered-models/search", "experiments/search", "registered-models/alias"]
)
def test_anonymous_and_wrong_password_get_401(mlflow_server, path: str) -> None:
    method = "GET"
    kwargs = {
        "experiments/search": {"params": {"max_results": 10}},
        "registered-models/alias": {"params": {"name": mlflow_server.MODEL, "alias": mlflow_server.ALIAS}},
    }.get(path, {})
    anonymous = mlflow_server.api(method, path, None, **kwargs)
    assert anonymous.status_code == 401, anonymous.text
    assert anonymous.headers["WWW-Authenticate"].startswith("Basic")
    wrong = mlflow_server.api(method, path, (mlflow_server.creds.expert_user, "not-the-password"), **kwargs)
    assert wrong.status_code == 401, wrong.text


@pytest.mark.slow
def test_expert_lists_models_and_reads_a_versions_run_metrics(mlflow_server) -> None:
    expert = mlflow_server.expert
    models = mlflow_server.api("GET", "registered-models/search", expert)
    assert models.status_code == 200, models.text
    assert mlflow_server.MODEL in [m["name"] for m in models.json()["registered_models"]]
    experiments = mlflow_server.api("GET", "experiments/search", expert, params={"max_results": 10})
    assert experiments.status_code == 200, experiments.text
    assert mlflow_server.experiment_id in [e["experiment_id"] for e in experiments.json()["experiments"]]

    champion = mlflow_server.api(
        "GET",
        "registered-models/alias",
        expert,
        params={"name": mlflow_server.MODEL, "alias": mlflow_server.ALIAS},
    )
    assert champion.status_code == 200, champion.text
    version = champion.json()["model_version"]
    assert version["version"] == mlflow_server.version
    run = mlflow_server.api("GET", "runs/get", expert, params={"run_id": version["run_id"]})
    assert run.status_code == 200, run.text
    metrics = {m["key"]: m["value"] for m in run.json()["run"]["data"]["metrics"]}
    assert metrics == {mlflow_server.METRIC: mlflow_server.METRIC_VALUE}
    # The version's files come through the artifact proxy from the lakehouse.
    path = version["source"].removeprefix("mlflow-artifacts:/")
    files = requests.get(
        f"{mlflow_server.url}/api/2.0/mlflow-artifacts/artifacts/{path}/MLmodel", auth=expert, timeout=30
    )
    assert files.status_code == 200, files.text


@pytest.mark.slow
def test_expert_may_not_register_versions_or_move_aliases(mlflow_server) -> None:
    expert, version = mlflow_server.expert, mlflow_server.version
    new_version = {
        "name": mlflow_server.MODEL,
        "source": mlflow_server.source,
        "run_id": mlflow_server.run_id,
    }
    refused = {
        "create version": mlflow_server.api("POST", "model-versions/create", expert, json=new_version),
        "move champion": mlflow_server.api(
            "POST",
            "registered-models/alias",
            expert,
            json={"name": mlflow_server.MODEL, "alias": mlflow_server.ALIAS, "version": version},
        ),
        "new alias": mlflow_server.api(
            "POST",
            "registered-models/alias",
            expert,
            json={"name": mlflow_server.MODEL, "alias": "mine", "version": version},
        ),
        "delete alias": mlflow_server.api(
            "DELETE",
            "registered-models/alias",
            expert,
            json={"name": mlflow_server.MODEL, "alias": mlflow_server.ALIAS},
        ),
        "log to the run": mlflow_server.api(
            "POST", "runs/log-metric", expert, json={**new_version, "key": "x", "value": 1, "timestamp": 0}
        ),
    }
    assert {what: r.status_code for what, r in refused.items()} == dict.fromkeys(refused, 403)
    versions = mlflow_server.api(
        "GET",
        "model-versions/search",
        mlflow_server.admin,
        params={"filter": f"name='{mlflow_server.MODEL}'"},
    )
    assert [v["version"] for v in versions.json()["model_versions"]] == [version]  # nothing slipped through


@pytest.mark.slow
def test_product_model_names_are_reserved_so_the_expert_cannot_claim_them(mlflow_server) -> None:
    expert = mlflow_server.expert
    assert mlflow_server.reserved == tuple(
        f"oncolake-{task}"
        for task in ("mammo_normal_vs_abnormal", "mammo_benign_vs_malignant", "histo_benign_vs_malignant")
    )
    name = mlflow_server.reserved[0]
    claim = mlflow_server.api("POST", "registered-models/create", expert, json={"name": name})
    assert claim.status_code == 400 and "RESOURCE_ALREADY_EXISTS" in claim.text, claim.text
    version = {"name": name, "source": mlflow_server.source, "run_id": mlflow_server.run_id}
    assert mlflow_server.api("POST", "model-versions/create", expert, json=version).status_code == 403
    assert mlflow_server.api("GET", "registered-models/get", expert, params={"name": name}).status_code == 200


@pytest.mark.slow
def test_admin_registers_a_version_and_sets_an_alias(mlflow_server) -> None:
    admin = mlflow_server.admin
    new_version = {
        "name": mlflow_server.MODEL,
        "source": mlflow_server.source,
        "run_id": mlflow_server.run_id,
    }
    created = mlflow_server.api("POST", "model-versions/create", admin, json=new_version)
    assert created.status_code == 200, created.text
    number = created.json()["model_version"]["version"]
    assert number != mlflow_server.version
    alias = {"name": mlflow_server.MODEL, "alias": "challenger", "version": number}
    assert mlflow_server.api("POST", "registered-models/alias", admin, json=alias).status_code == 200
    moved = mlflow_server.api("GET", "registered-models/alias", mlflow_server.expert, params=alias)
    assert moved.json()["model_version"]["version"] == number


@pytest.mark.slow
def test_restart_resets_the_experts_password_to_the_configured_one(mlflow_server) -> None:
    creds = mlflow_server.creds
    rotated = dataclasses.replace(creds, expert_password="rotated-" + creds.expert_password)
    try:
        assert (
            provision_expert(mlflow_server.url, rotated)
            == f"expert {creds.expert_user!r} exists; password reset"
        )
        new, old = (creds.expert_user, rotated.expert_password), mlflow_server.expert
        assert mlflow_server.api("GET", "registered-models/search", new).status_code == 200
        assert mlflow_server.api("GET", "registered-models/search", old).status_code == 401
    finally:
        provision_expert(mlflow_server.url, creds)
