"""The product's registered models: names, the alias lookup, and what each version records.

One place answers "which version holds this alias" and reads what scoring and evaluation need from a
version — its decision threshold and its tile -> image aggregation rule — with no silent default: a
version registered without them is refused with a message that says so.
"""

from __future__ import annotations

from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from conf import Settings
from core.aggregation import AggregationRule

CHALLENGER, CHAMPION = "challenger", "champion"


class VersionNotFound(LookupError):
    """The registered model has no version with that number or alias."""


class VersionIncomplete(ValueError):
    """The version lacks a tag that scoring and evaluation need (it was registered by older code)."""


def model_name(settings: Settings, task: str) -> str:
    """The registered model of a task: ``<train.model_prefix><task>``."""
    return f"{settings.train.model_prefix}{task}"


def find_version(
    name: str, alias: str | None = None, version: str | None = None, client: MlflowClient | None = None
) -> Any:
    """The model version with number ``version``, else the one holding ``alias``.

    Raises:
        VersionNotFound: naming the model and what was asked for.
    """
    client = client or MlflowClient()
    try:
        if version is not None:
            return client.get_model_version(name, str(version))
        if alias is None:
            raise ValueError("find_version: give an alias or a version")
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        wanted = f"version {version}" if version is not None else f"alias {alias!r}"
        raise VersionNotFound(f"{name} has no {wanted}") from None


def alias_version(name: str, alias: str, client: MlflowClient | None = None) -> str | None:
    """The version number holding ``alias``, or None when no version holds it."""
    try:
        return str(find_version(name, alias=alias, client=client).version)
    except VersionNotFound:
        return None


def threshold(version: Any) -> float:
    """The decision threshold recorded on a model version (fitted on its validation split)."""
    try:
        return float(version.tags["threshold"])
    except KeyError:
        raise VersionIncomplete(
            f"{version.name} v{version.version} records no 'threshold' tag: register it again with "
            "'oncolake train'"
        ) from None


def aggregation(version: Any) -> AggregationRule:
    """The tile -> image -> patient rule recorded on a model version."""
    try:
        return AggregationRule.from_tags(version.tags)
    except KeyError as exc:
        raise VersionIncomplete(f"{version.name} v{version.version}: {exc.args[0]}") from None


def version_pins(tags: dict[str, str], annotations_path: str) -> dict[str, int]:
    """The table versions one model version's lineage names: ``path -> version``.

    ``lineage.table`` / ``lineage.version`` (the tiles it trained on), ``lineage.consensus`` (``path@v``:
    the consensus table it read) and ``lineage.labels`` (collection -> ``consensus:<annotations version>``).
    """
    import json

    pins: dict[str, int] = {}

    def pin(path: str, version: int) -> None:
        pins[path] = min(version, pins.get(path, version))

    if tags.get("lineage.table") and tags.get("lineage.version", "").isdigit():
        pin(tags["lineage.table"], int(tags["lineage.version"]))
    path, _, version = tags.get("lineage.consensus", "").rpartition("@")
    if path and version.isdigit():
        pin(path, int(version))
    for origin in json.loads(tags.get("lineage.labels") or "{}").values():
        kind, _, version = str(origin).partition(":")
        if kind == "consensus" and version.isdigit():
            pin(annotations_path, int(version))
    return pins


def pinned_versions(settings: Settings, client: MlflowClient | None = None) -> dict[str, int]:
    """``table path -> the oldest version`` that any version of the product's registered models (names
    starting with ``train.model_prefix``) names in its lineage: what ``oncolake maintain`` keeps readable."""
    client = client or MlflowClient()
    prefix = settings.train.model_prefix
    annotations = settings.lakehouse.table("annotations")
    pins: dict[str, int] = {}
    for model in client.search_registered_models(filter_string=f"name LIKE '{prefix}%'", max_results=1000):
        for version in client.search_model_versions(f"name = '{model.name}'", max_results=10000):
            for path, number in version_pins(dict(version.tags or {}), annotations).items():
                pins[path] = min(number, pins.get(path, number))
    return pins
