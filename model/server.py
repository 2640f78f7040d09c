"""The MLflow tracking server behind basic auth: its credentials, its command line, and its supervision.

:func:`load_credentials` reads the admin's and the expert's credentials from the environment and/or a
``KEY=VALUE`` file outside the repository (there are no defaults); :func:`server_plan` turns the settings
into the ``mlflow server --app-name basic-auth`` command line and environment (writing the auth
configuration, ``default_permission = READ``); :func:`start`, :func:`wait_until_ready` and :func:`stop`
run that process group; :func:`supervise` runs it in the foreground as ``oncolake mlflow-server`` does:
start, wait for ``/health``, provision the expert and reserve the product's models
(:mod:`model.server_rest`), serve until the process exits or SIGINT/SIGTERM arrives, stop every worker.
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

import requests

from conf import Settings
from model.server_rest import Credentials, ServerError, provision_expert, reserve_models

__all__ = [
    "CREDENTIAL_KEYS",
    "DEFAULT_PERMISSION",
    "ENV_PREFIX",
    "MIN_PASSWORD",
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
    creds = Credentials(
        found["ADMIN_USER"], found["ADMIN_PASSWORD"], found["EXPERT_USER"], found["EXPERT_PASSWORD"]
    )
    for role, password in (("ADMIN", creds.admin_password), ("EXPERT", creds.expert_password)):
        if len(password) < MIN_PASSWORD:
            raise ServerError(f"{ENV_PREFIX}{role}_PASSWORD must have at least {MIN_PASSWORD} characters")
    if creds.admin_user == creds.expert_user:
        raise ServerError("the admin and the expert must be different users")
    return creds


def write_auth_config(folder: Path, database_uri: str) -> Path:
    """MLflow's basic-auth configuration; no secret is written, the admin's comes from the environment."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "basic_auth.ini"
    path.write_text(
        "# Written by oncolake mlflow-server at every start; edits are overwritten.\n"
        "[mlflow]\n"
        f"default_permission = {DEFAULT_PERMISSION}\n"
        f"database_uri = {database_uri}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "grant_default_workspace_access = false\n"
    )
    return path


def _local(uri_or_path: str) -> bool:
    return "://" not in uri_or_path


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
    environ: Mapping[str, str] | None = None,
) -> ServerPlan:
    """The ``mlflow server --app-name basic-auth`` command line and environment for these settings.

    By default the server serves the store the jobs write (``mlflow.tracking_uri``), proxies artifacts
    from ``<lakehouse.root>/mlartifacts`` and keeps its login database in
    ``<lakehouse.root>/mlflow-server/auth.db``. Writes the auth configuration file (into the lakehouse,
    or a temporary folder when the lakehouse is not a local folder) so that the returned plan can be
    started as it is.
    """
    root = settings.lakehouse.root
    local = _local(root)
    state = Path(root).resolve() / "mlflow-server" if local else None
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
    config_dir = state if state is not None else Path(tempfile.mkdtemp(prefix="oncolake-mlflow-auth-"))
    auth_config = write_auth_config(config_dir, auth_database_uri)
    if _local(artifacts_destination):
        Path(artifacts_destination).mkdir(parents=True, exist_ok=True)
    if backend_store_uri.startswith("sqlite:///"):
        Path(backend_store_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)

    argv = [
        *(sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth"),
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
    # The expert's password stays with this process: the server never needs it.
    env = {k: v for k, v in environ.items() if not k.startswith(ENV_PREFIX)}
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


def supervise(plan: ServerPlan, creds: Credentials, models: list[str], ready_timeout: float = 120) -> int:
    """Run the planned server in the foreground until it exits or SIGINT/SIGTERM stops it; its exit status.

    Once ``/health`` answers, the expert is provisioned and ``models`` are reserved; a failure there stops
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
        if reserved := reserve_models(plan.url, creds, models):
            print(f"mlflow-server: reserved registered models {', '.join(reserved)}", flush=True)
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
