"""Serve the lakehouse's MLflow runs and registry to the team, behind MLflow's basic-auth login.

    oncolake mlflow-server [--credentials FILE] [--host 127.0.0.1] [--port 5000] [--workers 2]
                           [--backend sqlite|postgresql] [--backend-store-uri URI]
                           [--auth-database-uri URI] [--artifacts-destination URI] [--access-log FILE]
                           [--auth-cache-seconds 30]
                           [--config NAME|FILE] [--set key=value ...]

By default (``--backend sqlite``) the server reads the store the jobs write (``mlflow.tracking_uri``,
i.e. SQLite in the lakehouse, ``<lakehouse.root>/mlflow.db``), so what ``oncolake train`` registered is
what the team sees, and keeps its logins in ``<lakehouse.root>/mlflow-server/auth.db``. For a team,
``--backend postgresql --backend-store-uri postgresql://mlflow@db.example.org:5432/mlflow`` keeps runs,
registry and logins in PostgreSQL (the logins in the same server's ``mlflow_auth`` database unless
``--auth-database-uri`` says otherwise; create both databases, owned by that role, first). URIs never
carry the password: it is ``ONCOLAKE_MLFLOW_DATABASE_PASSWORD``, handed to the server as libpq's
``PGPASSWORD``. Artifacts are served through the server's proxy from ``--artifacts-destination``
(default ``<lakehouse.root>/mlartifacts``, where the jobs log them). Every request is logged, one JSON
line each (time, user, method, endpoint, status; never a password, query string or body), to
``--access-log`` (default ``<lakehouse.root>/mlflow-server/access.log``). Each worker trusts a verified
login for ``--auth-cache-seconds`` (MLflow's auth cache; checking a password costs ~130 ms of CPU, on
every request without it), so a changed password or removed user takes effect within that time. It is
the same as running, with the variables below set:

    MLFLOW_AUTH_CONFIG_PATH=lakehouse/mlflow-server/basic_auth.ini ONCOLAKE_ACCESS_LOG=... \\
    MLFLOW_AUTH_ADMIN_USERNAME=... MLFLOW_AUTH_ADMIN_PASSWORD=... MLFLOW_FLASK_SERVER_SECRET_KEY=... \\
    mlflow server --app-name oncolake-auth --backend-store-uri sqlite:///$PWD/lakehouse/mlflow.db \\
        --serve-artifacts --artifacts-destination $PWD/lakehouse/mlartifacts \\
        --host 127.0.0.1 --port 5000 --workers 2

and then, as the admin, creating the users, the product's models and experiment, and the trainer's
grants. Credentials are never defaults: they come from the environment or from ``--credentials FILE``
(``KEY=VALUE`` lines, kept outside the repository; a set environment variable wins over the file):

    ONCOLAKE_MLFLOW_ADMIN_USER, ONCOLAKE_MLFLOW_ADMIN_PASSWORD       the administrator
    ONCOLAKE_MLFLOW_EXPERT_USER, ONCOLAKE_MLFLOW_EXPERT_PASSWORD     a reader of every experiment and model
    ONCOLAKE_MLFLOW_TRAINER_USER, ONCOLAKE_MLFLOW_TRAINER_PASSWORD   optional: the training service account
    ONCOLAKE_MLFLOW_DATABASE_PASSWORD                                optional: PostgreSQL's password

Passwords need at least 12 characters (MLflow's rule). The admin's password only creates the admin the
first time; the expert and the trainer are created, or have their passwords reset to the configured
ones, at every start. Anonymous requests get 401. Every user may read everything; nobody but the admin and
the trainer may add versions to, or move aliases on, the product's models (``<train.model_prefix><task>``,
created empty by the admin at start when missing, so that no other user can claim their names first), or
log runs to its experiment (``mlflow.experiment``): the trainer holds ``EDIT`` on them (403 for the
others). Training jobs log as the trainer with ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``
set. The server runs in the foreground; Ctrl-C or SIGTERM stops it. The work is done by
:mod:`model.server` (credentials, command line, supervision), :mod:`model.server_rest` (the admin's REST
calls) and :mod:`model.server_app` (the access log).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jobs.options import job_parser, settings_from
from model.server import AUTH_CACHE_SECONDS, BACKENDS, ServerError, load_credentials, server_plan, supervise
from model.server_rest import product_models


def build_parser() -> argparse.ArgumentParser:
    parser = job_parser("oncolake mlflow-server", __doc__)
    parser.add_argument(
        "--credentials", type=Path, metavar="FILE", help="KEY=VALUE file with the credentials"
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5000, help="port (default: 5000)")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes (default: 2)")
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="sqlite",
        help="where runs, registry and logins live (default: sqlite)",
    )
    parser.add_argument(
        "--backend-store-uri",
        metavar="URI",
        help="database (default: mlflow.tracking_uri; required with --backend postgresql)",
    )
    parser.add_argument(
        "--artifacts-destination",
        metavar="URI",
        help="artifact store (default: <lakehouse.root>/mlartifacts)",
    )
    parser.add_argument(
        "--auth-database-uri",
        metavar="URI",
        help="login database (default: <lakehouse.root>/mlflow-server/auth.db, or <database>_auth)",
    )
    parser.add_argument(
        "--access-log",
        type=Path,
        metavar="FILE",
        help="one JSON line per request (default: <lakehouse.root>/mlflow-server/access.log)",
    )
    parser.add_argument(
        "--auth-cache-seconds",
        type=int,
        default=AUTH_CACHE_SECONDS,
        metavar="S",
        help=f"a worker trusts a verified login this long (default: {AUTH_CACHE_SECONDS}; 0: never)",
    )
    parser.add_argument("--ready-timeout", type=float, default=120, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_from(args)
    try:
        creds = load_credentials(args.credentials)
        plan = server_plan(
            settings,
            creds,
            host=args.host,
            port=args.port,
            workers=args.workers,
            backend_store_uri=args.backend_store_uri,
            artifacts_destination=args.artifacts_destination,
            auth_database_uri=args.auth_database_uri,
            backend=args.backend,
            access_log=args.access_log,
            auth_cache_seconds=args.auth_cache_seconds,
        )
    except ServerError as exc:
        print(f"oncolake mlflow-server: {exc}", file=sys.stderr)
        return 2
    return supervise(
        plan, creds, product_models(settings), args.ready_timeout, experiment=settings.mlflow.experiment
    )


if __name__ == "__main__":
    raise SystemExit(main())
