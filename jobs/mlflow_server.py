"""Serve the lakehouse's MLflow runs and registry to the team, behind MLflow's basic-auth login.

    oncolake mlflow-server [--credentials FILE] [--host 127.0.0.1] [--port 5000] [--workers 2]
                           [--backend-store-uri URI] [--artifacts-destination URI]
                           [--auth-database-uri URI] [--config NAME|FILE] [--set key=value ...]

By default the server reads the store the jobs write (``mlflow.tracking_uri``, i.e. SQLite in the
lakehouse, ``<lakehouse.root>/mlflow.db``), so what ``oncolake train`` registered is what the team sees;
``--backend-store-uri`` points it at another database (``postgresql://...``). Artifacts are served
through the server's proxy from ``--artifacts-destination`` (default ``<lakehouse.root>/mlartifacts``,
where the jobs log them). The login database and the auth configuration (``default_permission = READ``)
live in ``<lakehouse.root>/mlflow-server/``. It is the same as running, with the variables below set:

    MLFLOW_AUTH_CONFIG_PATH=lakehouse/mlflow-server/basic_auth.ini \\
    MLFLOW_AUTH_ADMIN_USERNAME=... MLFLOW_AUTH_ADMIN_PASSWORD=... MLFLOW_FLASK_SERVER_SECRET_KEY=... \\
    mlflow server --app-name basic-auth --backend-store-uri sqlite:///$PWD/lakehouse/mlflow.db \\
        --serve-artifacts --artifacts-destination $PWD/lakehouse/mlartifacts \\
        --host 127.0.0.1 --port 5000 --workers 2

and then, as the admin, creating the expert user and the product's models. Credentials are never
defaults: they come from the environment or from ``--credentials FILE`` (``KEY=VALUE`` lines, kept
outside the repository; a set environment variable wins over the file):

    ONCOLAKE_MLFLOW_ADMIN_USER, ONCOLAKE_MLFLOW_ADMIN_PASSWORD     the administrator
    ONCOLAKE_MLFLOW_EXPERT_USER, ONCOLAKE_MLFLOW_EXPERT_PASSWORD   a reader of every experiment and model

Passwords need at least 12 characters (MLflow's rule). The admin's password only creates the admin the
first time; the expert is created, or has its password reset to the configured one, at every start.
Anonymous requests get 401. The expert may read everything but may not add versions to, or move aliases
on, models it did not create (403); the product's models (``<train.model_prefix><task>``) are created
empty by the admin at start when missing, so that no other user can claim their names first. The server
runs in the foreground; Ctrl-C or SIGTERM stops it. The work is done by :mod:`model.server`
(credentials, command line, supervision) and :mod:`model.server_rest` (the admin's REST calls).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jobs.options import job_parser, settings_from
from model.server import ServerError, load_credentials, server_plan, supervise
from model.server_rest import product_models


def build_parser() -> argparse.ArgumentParser:
    parser = job_parser("oncolake mlflow-server", __doc__)
    parser.add_argument(
        "--credentials", type=Path, metavar="FILE", help="KEY=VALUE file with the credentials"
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5000, help="port (default: 5000)")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes (default: 2)")
    parser.add_argument("--backend-store-uri", metavar="URI", help="database (default: mlflow.tracking_uri)")
    parser.add_argument(
        "--artifacts-destination",
        metavar="URI",
        help="artifact store (default: <lakehouse.root>/mlartifacts)",
    )
    parser.add_argument(
        "--auth-database-uri",
        metavar="URI",
        help="login database (default: <lakehouse.root>/mlflow-server/auth.db)",
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
        )
    except ServerError as exc:
        print(f"oncolake mlflow-server: {exc}", file=sys.stderr)
        return 2
    return supervise(plan, creds, product_models(settings), args.ready_timeout)


if __name__ == "__main__":
    raise SystemExit(main())
