"""The admin's side of the MLflow tracking server's REST API: the users, the product's models, the grants.

:mod:`model.server` starts and supervises the server; once it answers, these calls (as the administrator,
over ``/api/2.0/mlflow/`` and ``/api/3.0/mlflow/``) make sure the expert user, and the training service
account when one is configured, exist with the configured passwords and no admin rights
(:func:`provision_expert`, :func:`provision_trainer`); that the registered models ``oncolake train`` writes
to, and its experiment, exist and are owned by the admin (:func:`reserve_models`,
:func:`reserve_experiment`), so that no other user can claim their names first; and that the training
account may add versions, move aliases and log runs there (:func:`grant_trainer`: ``EDIT``), while every
other user stays on the server's default, ``READ``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import requests

from conf import Settings
from model.registry import model_name


class ServerError(RuntimeError):
    """The server cannot be started or set up; the message says what to fix."""


# What the training account gets on the product's models and experiment: versions, aliases, runs; not
# MANAGE (which would let it grant permissions or delete the model).
TRAINER_PERMISSION = "EDIT"


@dataclass(frozen=True)
class Credentials:
    """The administrator's, the expert's and (optional) the training account's user names and passwords,
    and the database password (passwords never in ``repr``)."""

    admin_user: str
    admin_password: str = field(repr=False)
    expert_user: str
    expert_password: str = field(repr=False)
    trainer_user: str | None = None
    trainer_password: str = field(default="", repr=False)
    database_password: str = field(default="", repr=False)


def _api(
    url: str, creds: Credentials, method: str, path: str, version: int = 2, **kwargs: Any
) -> requests.Response:
    return requests.request(
        method,
        f"{url}/api/{version}.0/mlflow/{path}",
        auth=(creds.admin_user, creds.admin_password),
        timeout=30,
        **kwargs,
    )


def _checked(response: requests.Response, what: str) -> requests.Response:
    if response.status_code != 200:
        raise ServerError(f"could not {what}: {response.status_code} {response.text[:300]}")
    return response


def _check_admin(url: str, creds: Credentials) -> None:
    found = _api(url, creds, "GET", "users/get", params={"username": creds.admin_user})
    if found.status_code == 401:
        raise ServerError(
            f"the server refused admin {creds.admin_user!r}: the login database already holds that user "
            "with another password (the configured one only creates the admin the first time)"
        )
    if found.status_code != 200 or not found.json()["user"]["is_admin"]:
        raise ServerError(f"{creds.admin_user!r} is not an admin on {url}: {found.status_code} {found.text}")


def _provision_user(url: str, creds: Credentials, role: str, username: str, password: str) -> str:
    """Create ``username``, or reset its password and remove admin rights; says what changed."""
    user = _api(url, creds, "GET", "users/get", params={"username": username})
    body = {"username": username, "password": password}
    if user.status_code == 404:
        _checked(_api(url, creds, "POST", "users/create", json=body), f"create the {role}")
        return f"created {role} {username!r}"
    _checked(user, f"look up the {role}")
    _checked(_api(url, creds, "PATCH", "users/update-password", json=body), f"set the {role}'s password")
    if user.json()["user"]["is_admin"]:
        demote = {"username": username, "is_admin": False}
        _checked(_api(url, creds, "PATCH", "users/update-admin", json=demote), f"demote the {role}")
        return f"{role} {username!r} exists; password reset, admin rights removed"
    return f"{role} {username!r} exists; password reset"


def provision_expert(url: str, creds: Credentials) -> str:
    """Make sure the expert exists, is not an admin and has the configured password; returns what changed.

    The expert relies on ``default_permission = READ`` (verified by tests/model/test_server.py): it reads
    every experiment, run and registered model, and may not create versions of, or set aliases on, a
    model it did not create. It needs no grant of its own, so none is written.
    """
    _check_admin(url, creds)
    return _provision_user(url, creds, "expert", creds.expert_user, creds.expert_password)


def provision_trainer(url: str, creds: Credentials) -> str | None:
    """The training service account, like the expert (None when none is configured); its grants are
    :func:`grant_trainer`'s."""
    if creds.trainer_user is None:
        return None
    _check_admin(url, creds)
    return _provision_user(url, creds, "trainer", creds.trainer_user, creds.trainer_password)


def grant_trainer(url: str, creds: Credentials, models: list[str], experiment_id: str | None) -> list[str]:
    """``EDIT`` for the training account on ``models`` and the experiment; returns the grants added.

    An existing grant is left as it is (MLflow refuses a second one on the same resource).
    """
    if creds.trainer_user is None:
        return []
    resources = [("registered_model", name) for name in models]
    if experiment_id is not None:
        resources.append(("experiment", experiment_id))
    added = []
    for kind, key in resources:
        body = {
            "username": creds.trainer_user,
            "resource_type": kind,
            "resource_id": key,
            "permission": TRAINER_PERMISSION,
        }
        granted = _api(url, creds, "POST", "users/permissions/grant", version=3, json=body)
        if granted.status_code == 400 and "RESOURCE_ALREADY_EXISTS" in granted.text:
            continue
        _checked(granted, f"grant {creds.trainer_user!r} {TRAINER_PERMISSION} on {kind} {key!r}")
        added.append(f"{kind} {key}")
    return added


def reserve_experiment(url: str, creds: Credentials, name: str) -> tuple[str, bool]:
    """The experiment ``oncolake train`` logs to, created by the admin when missing: (its id, created)."""
    found = _api(url, creds, "GET", "experiments/get-by-name", params={"experiment_name": name})
    if found.status_code == 200:
        return found.json()["experiment"]["experiment_id"], False
    if found.status_code != 404:
        _checked(found, f"look up experiment {name!r}")
    created = _checked(
        _api(url, creds, "POST", "experiments/create", json={"name": name}), f"reserve experiment {name!r}"
    )
    return created.json()["experiment_id"], True


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
