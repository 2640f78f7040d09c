"""The MLflow tracking server behind basic auth: its credentials, its command line, and its supervision.

:func:`load_credentials` reads the admin's and the expert's credentials from the environment and/or a
``KEY=VALUE`` file outside the repository (there are no defaults); :func:`server_plan` turns the settings
into the ``mlflow server --app-name oncolake-auth`` command line and environment (MLflow's basic-auth app
with an access log, :mod:`model.server_app`; the auth configuration says ``default_permission = READ``;
stores on SQLite or PostgreSQL); :func:`start`, :func:`wait_until_ready` and :func:`stop` run that process
group; :func:`supervise` runs it in the foreground as ``oncolake mlflow-server`` does: start, wait for
``/health``, provision the expert and the trainer, reserve the product's models and experiment and grant the
trainer EDIT on them (:mod:`model.server_rest`), serve until the process exits or SIGINT/SIGTERM arrives,
stop every worker.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit, urlunsplit

import requests

from conf import Settings
from model.server_app import ACCESS_LOG_ENV
from model.server_rest import (
    Credentials,
    ServerError,
    grant_trainer,
    provision_expert,
    provision_trainer,
    reserve_experiment,
    reserve_models,
)

__all__ = [
    "APP_NAME",
    "BACKENDS",
    "CREDENTIAL_KEYS",
    "DEFAULT_PERMISSION",
    "ENV_PREFIX",
    "MIN_PASSWORD",
    "OPTIONAL_KEYS",
    "Credentials",
    "ServerError",
    "ServerPlan",
    "load_credentials",
    "server_plan",
    "start",
    "stop",
    "supervise",
    "wait_until_ready",
    "write_auth_config",
]

ENV_PREFIX = "ONCOLAKE_MLFLOW_"
CREDENTIAL_KEYS = ("ADMIN_USER", "ADMIN_PASSWORD", "EXPERT_USER", "EXPERT_PASSWORD")
# Optional: the training service account (both or neither) and the PostgreSQL password (libpq's PGPASSWORD).
OPTIONAL_KEYS = ("TRAINER_USER", "TRAINER_PASSWORD", "DATABASE_PASSWORD")
APP_NAME = "oncolake-auth"  # MLflow's basic-auth app plus the access log (model.server_app)
BACKENDS = ("sqlite", "postgresql")
AUTH_CACHE_SECONDS = 30  # see write_auth_config
MIN_PASSWORD = 12  # mlflow.utils.validation._validate_password refuses shorter ones
# Permission of every user on experiments and models without an explicit grant (creators get MANAGE).
DEFAULT_PERMISSION = "READ"
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ServerPlan:
    """Everything needed to start the server: the command line, its environment and where it answers."""

    argv: list[str]
    env: dict[str, str] = field(repr=False)
    url: str
    auth_config: Path


def _read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines (``export`` prefix, quotes and ``#`` comments allowed), as shells source them."""
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        if not sep:
            raise ServerError(f"{path}:{number}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def load_credentials(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Credentials:
    """The admin's and the expert's credentials, from the environment and/or a file outside the repo.

    There are deliberately no defaults: a tracking server holding patient-derived models must never
    come up with a password that is written in the code. A set ``ONCOLAKE_MLFLOW_*`` variable wins over
    the file; passwords need at least 12 characters and the two users must differ.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, str] = {}
    if path is not None:
        path = path.expanduser().resolve()
        if not path.is_file():
            raise ServerError(f"credentials file {path} does not exist")
        if path.is_relative_to(REPO) and (REPO / ".git").exists():
            raise ServerError(f"credentials file {path} is inside the repository: keep it outside")
        if path.stat().st_mode & 0o077:
            print(f"oncolake mlflow-server: warning: others may read {path} (chmod 600 it)", file=sys.stderr)
        values = {k: v for k, v in _read_env_file(path).items() if k.startswith(ENV_PREFIX)}
    values.update({k: v for k, v in environ.items() if k.startswith(ENV_PREFIX)})
    found = {key: values.get(ENV_PREFIX + key, "") for key in CREDENTIAL_KEYS}
    missing = [ENV_PREFIX + key for key, value in found.items() if not value]
    if missing:
        where = f"the environment or {path}" if path else "the environment (or give --credentials FILE)"
        raise ServerError(f"no credentials: set {', '.join(missing)} in {where}")
    optional = {key: values.get(ENV_PREFIX + key, "") for key in OPTIONAL_KEYS}
    if bool(optional["TRAINER_USER"]) != bool(optional["TRAINER_PASSWORD"]):
        raise ServerError(f"set both {ENV_PREFIX}TRAINER_USER and {ENV_PREFIX}TRAINER_PASSWORD, or neither")
    creds = Credentials(
        found["ADMIN_USER"],
        found["ADMIN_PASSWORD"],
        found["EXPERT_USER"],
        found["EXPERT_PASSWORD"],
        trainer_user=optional["TRAINER_USER"] or None,
        trainer_password=optional["TRAINER_PASSWORD"],
        database_password=optional["DATABASE_PASSWORD"],
    )
    passwords = [("ADMIN", creds.admin_password), ("EXPERT", creds.expert_password)]
    if creds.trainer_user:
        passwords.append(("TRAINER", creds.trainer_password))
    for role, password in passwords:
        if len(password) < MIN_PASSWORD:
            raise ServerError(f"{ENV_PREFIX}{role}_PASSWORD must have at least {MIN_PASSWORD} characters")
    users = [creds.admin_user, creds.expert_user, *([creds.trainer_user] if creds.trainer_user else [])]
    if len(set(users)) != len(users):
        raise ServerError("the admin, the expert and the trainer must be different users")
    return creds


def write_auth_config(folder: Path, database_uri: str, cache_seconds: int = AUTH_CACHE_SECONDS) -> Path:
    """MLflow's basic-auth configuration; no secret is written, the admin's comes from the environment.

    ``cache_seconds`` is MLflow's ``auth_cache_ttl_seconds``: each worker remembers a verified login that
    long instead of hashing the password again (scrypt, ~130 ms of CPU) on every request; a changed
    password or a removed user is seen by every worker within that time. 0 turns the cache off.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "basic_auth.ini"
    path.write_text(
        "# Written by oncolake mlflow-server at every start; edits are overwritten.\n"
        "[mlflow]\n"
        f"default_permission = {DEFAULT_PERMISSION}\n"
        f"database_uri = {database_uri}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "grant_default_workspace_access = false\n"
        f"auth_cache_ttl_seconds = {cache_seconds}\n"
    )
    return path


def _local(uri_or_path: str) -> bool:
    return "://" not in uri_or_path


def _no_password(uri: str, what: str) -> None:
    """Refuse a database URI carrying a password: it would show in ``ps`` and in the auth config."""
    if urlsplit(uri).password is not None:
        raise ServerError(
            f"{what} holds a password: leave it out of the URI (it would show in `ps` and on disk) and "
            f"set {ENV_PREFIX}DATABASE_PASSWORD instead (given to the server as libpq's PGPASSWORD)"
        )


def _postgres_uris(backend_store_uri: str | None, auth_database_uri: str | None) -> tuple[str, str]:
    """The PostgreSQL store and login database: the login one defaults to ``<database>_auth`` beside it."""
    if not backend_store_uri or not backend_store_uri.startswith(("postgresql://", "postgresql+")):
        raise ServerError(
            "--backend postgresql needs --backend-store-uri postgresql://USER@HOST:PORT/DATABASE "
            "(the password in " + ENV_PREFIX + "DATABASE_PASSWORD)"
        )
    if auth_database_uri is None:
        parts = urlsplit(backend_store_uri)
        database = parts.path.strip("/") or "mlflow"
        auth_database_uri = urlunsplit(parts._replace(path=f"/{database}_auth"))
    return backend_store_uri, auth_database_uri


def server_plan(
    settings: Settings,
    creds: Credentials,
    *,
    host: str = "127.0.0.1",
    port: int = 5000,
    workers: int = 2,
    backend_store_uri: str | None = None,
    artifacts_destination: str | None = None,
    auth_database_uri: str | None = None,
    backend: str = "sqlite",
    access_log: Path | None = None,
    auth_cache_seconds: int = AUTH_CACHE_SECONDS,
    environ: Mapping[str, str] | None = None,
) -> ServerPlan:
    """The ``mlflow server --app-name oncolake-auth`` command line and environment for these settings.

    By default (``backend="sqlite"``) the server serves the store the jobs write
    (``mlflow.tracking_uri``), proxies artifacts from ``<lakehouse.root>/mlartifacts`` and keeps its login
    database in ``<lakehouse.root>/mlflow-server/auth.db``. With ``backend="postgresql"`` both the store
    (``backend_store_uri``, required) and the login database (default: the same server's
    ``<database>_auth``) are PostgreSQL databases; URIs carry no password, the database password goes to
    the server as ``PGPASSWORD``. Every request is logged (user, time, endpoint, status) to ``access_log``
    (default ``<lakehouse.root>/mlflow-server/access.log``); a verified login is remembered
    ``auth_cache_seconds`` by each worker (:func:`write_auth_config`). Writes the auth configuration file
    (into the lakehouse, or a temporary folder when the lakehouse is not a local folder) so that the
    returned plan can be started as it is.
    """
    if backend not in BACKENDS:
        raise ServerError(f"--backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    root = settings.lakehouse.root
    local = _local(root)
    state = Path(root).resolve() / "mlflow-server" if local else None
    if backend == "postgresql":
        backend_store_uri, auth_database_uri = _postgres_uris(backend_store_uri, auth_database_uri)
    if backend_store_uri is None:
        if settings.tracking_uri().startswith(("http://", "https://")):
            raise ServerError(
                f"mlflow.tracking_uri is a server ({settings.tracking_uri()}): "
                "give the database this one should serve with --backend-store-uri"
            )
        backend_store_uri = settings.tracking_uri()
    if artifacts_destination is None:
        if not local:
            raise ServerError(f"lakehouse.root {root} is not a local folder: give --artifacts-destination")
        artifacts_destination = str(Path(root).resolve() / "mlartifacts")
    if auth_database_uri is None:
        if state is None:
            raise ServerError(f"lakehouse.root {root} is not a local folder: give --auth-database-uri")
        auth_database_uri = f"sqlite:///{state / 'auth.db'}"
    for uri, what in ((backend_store_uri, "--backend-store-uri"), (auth_database_uri, "--auth-database-uri")):
        _no_password(uri, what)
    config_dir = state if state is not None else Path(tempfile.mkdtemp(prefix="oncolake-mlflow-auth-"))
    auth_config = write_auth_config(config_dir, auth_database_uri, auth_cache_seconds)
    if access_log is None and state is not None:
        access_log = state / "access.log"
    if _local(artifacts_destination):
        Path(artifacts_destination).mkdir(parents=True, exist_ok=True)
    if backend_store_uri.startswith("sqlite:///"):
        Path(backend_store_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)

    argv = [
        *(sys.executable, "-m", "mlflow", "server", "--app-name", APP_NAME),
        *("--backend-store-uri", backend_store_uri),
        *("--serve-artifacts", "--artifacts-destination", artifacts_destination),
        *("--host", host, "--port", str(port), "--workers", str(workers)),
    ]
    registry = settings.mlflow.registry_uri
    # A registry kept apart from the runs' store is served too, when the server serves the jobs' store.
    serves_jobs_store = backend_store_uri == settings.tracking_uri()
    if (
        serves_jobs_store
        and registry
        and "://" in registry
        and not registry.startswith(("http://", "https://"))
    ):
        argv += ["--registry-store-uri", registry]
    environ = os.environ if environ is None else environ
    # The expert's and the trainer's passwords stay with this process: the server never needs them.
    env = {k: v for k, v in environ.items() if not k.startswith(ENV_PREFIX)}
    if creds.database_password:
        env["PGPASSWORD"] = creds.database_password
    if access_log is not None:
        access_log.parent.mkdir(parents=True, exist_ok=True)
        env[ACCESS_LOG_ENV] = str(access_log)
    env.update(
        MLFLOW_AUTH_CONFIG_PATH=str(auth_config),
        MLFLOW_AUTH_ADMIN_USERNAME=creds.admin_user,
        MLFLOW_AUTH_ADMIN_PASSWORD=creds.admin_password,
        # Signs the sign-up form's CSRF token; one per start is enough, all workers inherit it.
        MLFLOW_FLASK_SERVER_SECRET_KEY=environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY") or secrets.token_hex(32),
    )
    # Nothing leaves the machine, and no GenAI job runner (huey) competes with the workers for cores;
    # either can be turned back on by setting the variable.
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    url_host = f"[{host}]" if ":" in host else ("127.0.0.1" if host in {"0.0.0.0", ""} else host)
    return ServerPlan(argv=argv, env=env, url=f"http://{url_host}:{port}", auth_config=auth_config)


def start(plan: ServerPlan, log: Path | None = None) -> subprocess.Popen[bytes]:
    """Start the server in its own process group (so it can be stopped with all its workers)."""
    out = open(log, "ab") if log is not None else None  # noqa: SIM115 - the child keeps it open
    try:
        return subprocess.Popen(
            plan.argv,
            env=plan.env,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
        )
    finally:
        if out is not None:
            out.close()


def stop(proc: subprocess.Popen[bytes], timeout: float = 20) -> int:
    """SIGTERM (which ``mlflow server`` forwards to its workers), then SIGKILL for the whole group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers: uvicorn workers whose supervisor died
    return proc.wait()


def wait_until_ready(url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 120) -> None:
    """Poll ``/health`` (open to anonymous callers) until the server answers, or fail if it exits."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise ServerError(f"mlflow server exited with status {proc.returncode} before answering")
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise ServerError(f"mlflow server did not answer on {url} within {timeout:.0f} s")
        time.sleep(0.5)


def supervise(
    plan: ServerPlan,
    creds: Credentials,
    models: list[str],
    ready_timeout: float = 120,
    experiment: str | None = None,
) -> int:
    """Run the planned server in the foreground until it exits or SIGINT/SIGTERM stops it; its exit status.

    Once ``/health`` answers, the expert (and the trainer) are provisioned, ``models`` and ``experiment``
    are reserved and the trainer is granted ``EDIT`` on them (:mod:`model.server_rest`); a failure there stops
    the server (status 1): without the expert's account it fails closed rather than serve half set up.
    A stop asked for by a signal exits 0; otherwise the server's own status is returned.
    """
    proc = start(plan)
    stopping: list[int] = []

    def _stop(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        wait_until_ready(plan.url, proc, ready_timeout)
        print(f"mlflow-server: {provision_expert(plan.url, creds)}", flush=True)
        if trainer := provision_trainer(plan.url, creds):
            print(f"mlflow-server: {trainer}", flush=True)
        if reserved := reserve_models(plan.url, creds, models):
            print(f"mlflow-server: reserved registered models {', '.join(reserved)}", flush=True)
        experiment_id = None
        if experiment is not None:
            experiment_id, created = reserve_experiment(plan.url, creds, experiment)
            if created:
                print(f"mlflow-server: reserved experiment {experiment!r}", flush=True)
        if granted := grant_trainer(plan.url, creds, models, experiment_id):
            print(f"mlflow-server: granted {creds.trainer_user!r} EDIT on {', '.join(granted)}", flush=True)
        print(
            f"mlflow-server: serving {plan.url} (auth config {plan.auth_config}); Ctrl-C stops it", flush=True
        )
        proc.wait()
    except (ServerError, requests.RequestException) as exc:
        if not stopping:
            print(f"oncolake mlflow-server: {exc}", file=sys.stderr)
            return 1
    finally:
        stop(proc)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0 if stopping else (proc.returncode or 0)
