"""The admin's side of the MLflow tracking server's REST API: the expert's account and the product's models.

:mod:`model.server` starts and supervises the server; once it answers, these calls (as the administrator,
over ``/api/2.0/mlflow/``) make sure the expert user exists with the configured password and no admin
rights (:func:`provision_expert`), and that the registered models ``oncolake train`` writes to exist and
are owned by the admin (:func:`reserve_models`), so that no other user can claim their names first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import requests

from conf import Settings
from model.registry import model_name


class ServerError(RuntimeError):
    """The server cannot be started or set up; the message says what to fix."""


@dataclass(frozen=True)
class Credentials:
    """The administrator's and the expert's user names and passwords (passwords never in ``repr``)."""

    admin_user: str
    admin_password: str = field(repr=False)
    expert_user: str
    expert_password: str = field(repr=False)


def _api(url: str, creds: Credentials, method: str, path: str, **kwargs: Any) -> requests.Response:
    return requests.request(
        method,
        f"{url}/api/2.0/mlflow/{path}",
        auth=(creds.admin_user, creds.admin_password),
        timeout=30,
        **kwargs,
    )


def _checked(response: requests.Response, what: str) -> requests.Response:
    if response.status_code != 200:
        raise ServerError(f"could not {what}: {response.status_code} {response.text[:300]}")
    return response


def provision_expert(url: str, creds: Credentials) -> str:
    """Make sure the expert exists, is not an admin and has the configured password; returns what changed.

    The expert relies on ``default_permission = READ`` (verified by tests/model/test_server.py): it reads
    every experiment, run and registered model, and may not create versions of, or set aliases on, a
    model it did not create. It needs no grant of its own, so none is written.
    """
    found = _api(url, creds, "GET", "users/get", params={"username": creds.admin_user})
    if found.status_code == 401:
        raise ServerError(
            f"the server refused admin {creds.admin_user!r}: the login database already holds that user "
            "with another password (the configured one only creates the admin the first time)"
        )
    if found.status_code != 200 or not found.json()["user"]["is_admin"]:
        raise ServerError(f"{creds.admin_user!r} is not an admin on {url}: {found.status_code} {found.text}")
    user = _api(url, creds, "GET", "users/get", params={"username": creds.expert_user})
    if user.status_code == 404:
        body = {"username": creds.expert_user, "password": creds.expert_password}
        _checked(_api(url, creds, "POST", "users/create", json=body), "create the expert")
        return f"created expert {creds.expert_user!r}"
    _checked(user, "look up the expert")
    body = {"username": creds.expert_user, "password": creds.expert_password}
    _checked(_api(url, creds, "PATCH", "users/update-password", json=body), "set the expert's password")
    if user.json()["user"]["is_admin"]:
        demote = {"username": creds.expert_user, "is_admin": False}
        _checked(_api(url, creds, "PATCH", "users/update-admin", json=demote), "demote the expert")
        return f"expert {creds.expert_user!r} exists; password reset, admin rights removed"
    return f"expert {creds.expert_user!r} exists; password reset"


def product_models(settings: Settings) -> list[str]:
    """The registered models ``oncolake train`` writes versions to (``<model_prefix><task>``)."""
    return [model_name(settings, task) for task in settings.train.tasks]


def reserve_models(url: str, creds: Credentials, names: list[str]) -> list[str]:
    """Create, as the admin, those of ``names`` that do not exist yet; returns the ones created.

    MLflow gives the creator of a registered model MANAGE on it, so a user who registered a product
    model's name before the first training would own the model that training then adds versions to.
    Reserving the names makes the admin their owner and leaves every other user on READ.
    """
    created = []
    for name in names:
        found = _api(url, creds, "GET", "registered-models/get", params={"name": name})
        if found.status_code == 200:
            continue
        if found.status_code != 404:
            _checked(found, f"look up registered model {name!r}")
        description = "Reserved by oncolake mlflow-server; versions are registered by oncolake train."
        body = {"name": name, "description": description}
        _checked(_api(url, creds, "POST", "registered-models/create", json=body), f"reserve {name!r}")
        created.append(name)
    return created
