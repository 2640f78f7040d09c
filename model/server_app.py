"""The app ``oncolake mlflow-server`` serves: MLflow's basic-auth app with an access log of who did what.

Registered as ``mlflow server --app-name oncolake-auth`` (pyproject's ``mlflow.app`` entry point).
:func:`create_app` builds MLflow's own basic-auth app (``mlflow.server.auth.create_app``, unchanged: the
same logins, permissions and stores) and, when ``ONCOLAKE_ACCESS_LOG`` names a file, puts one middleware
in front of it that appends a JSON line per request once the response is known:

    {"time": "2026-12-03T22:41:07.118Z", "user": "radiologist", "method": "GET",
     "endpoint": "/api/2.0/mlflow/registered-models/get", "status": 200, "ms": 4.1}

``user`` is the user name the request's Basic credentials claim (``null`` when it sent none; a refused
login is logged with status 401). Nothing else of the request is logged: no password, no query string
(run ids and filters stay out), no body. Each uvicorn worker appends whole lines with one ``write`` on a
file opened with ``O_APPEND``, so the workers' lines never interleave. Health checks are not logged.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

ACCESS_LOG_ENV = "ONCOLAKE_ACCESS_LOG"
UNLOGGED = frozenset({"/health", "/version"})


def claimed_user(authorization: str | None) -> str | None:
    """The user name in a ``Basic`` Authorization header (never the password); None if there is none."""
    if not authorization or authorization[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return "<malformed>"
    return decoded.partition(":")[0]


def access_line(user: str | None, method: str, endpoint: str, status: int, ms: float) -> bytes:
    """One access-log line (JSON, newline-terminated)."""
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    record = {"time": now, "user": user, "method": method, "endpoint": endpoint, "status": status}
    return (json.dumps({**record, "ms": round(ms, 1)}) + "\n").encode()


def create_app() -> Any:
    """MLflow's basic-auth FastAPI app, with the access log in front when ``ONCOLAKE_ACCESS_LOG`` is set."""
    from mlflow.server.auth import create_app as basic_auth_app
    from starlette.requests import Request
    from starlette.responses import Response

    app = basic_auth_app()
    path = os.environ.get(ACCESS_LOG_ENV)
    if not path:
        return app
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    @app.middleware("http")
    async def access_log(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            endpoint = request.url.path
            if endpoint not in UNLOGGED:
                user = claimed_user(request.headers.get("authorization"))
                ms = (time.perf_counter() - start) * 1000
                os.write(fd, access_line(user, request.method, endpoint, status, ms))

    return app
