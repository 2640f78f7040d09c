"""Layered configuration: ``base.yaml``, then a profile, then ``--set`` overrides.

The YAML files ship inside this package, so a job sent to a cluster with ``--py-files`` finds its base
configuration next to the code. A profile is a packaged name (``local``, ``cluster``, ``tiny``) or a
path to a YAML file of the user's; a profile may start with ``extends: <profile>`` to build on another.
Every key remembers which file (or ``--set``) gave it, so a validation error names both the key and the
file to fix, before any Spark work starts. ``base.yaml`` holds every key's default (the schema has
none); task and network names are checked against their registries' names and local paths are made
absolute here, on the driver (see :mod:`conf.schema`).
"""

from __future__ import annotations

import difflib
import os
import re
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from conf.schema import Settings, absolute_path

# Read through importlib.resources so the packaged YAML is found inside a --py-files zip too.
PACKAGED: Traversable = files(__name__)
CONF_DIR = Path(__file__).resolve().parent
CONFIG_ENV = "ONCOLAKE_CONFIG"
DEFAULT_PROFILE = "local"


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the offending key and where it came from."""


def profile_names() -> list[str]:
    """The packaged profiles a user can name with ``--config``."""
    names = (entry.name for entry in PACKAGED.iterdir())
    return sorted(n.removesuffix(".yaml") for n in names if n.endswith(".yaml") and n != "base.yaml")


def _profile_path(profile: str) -> Path | Traversable:
    candidate = Path(profile)
    if candidate.suffix in {".yaml", ".yml"} or candidate.exists():
        if not candidate.is_file():
            raise ConfigError(f"config file {profile!r} does not exist")
        return candidate.resolve()
    packaged = PACKAGED / f"{profile}.yaml"
    if not packaged.is_file() or profile == "base":
        raise ConfigError(
            f"unknown config {profile!r}: use one of {profile_names()} or a path to a YAML file"
        )
    return packaged


def _read_yaml(path: Path | Traversable) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def _merge(
    target: dict[str, Any], layer: dict[str, Any], origin: str, origins: dict[str, str], prefix: str = ""
) -> None:
    """Deep-merge ``layer`` into ``target``, recording for every leaf key which file set it."""
    for key, value in layer.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(target.get(key), dict) and value:
            _merge(target[key], value, origin, origins, f"{dotted}.")
        else:
            target[key] = value
            for replaced in [k for k in origins if k.startswith(f"{dotted}.")]:
                del origins[replaced]  # a section given whole replaces the keys under it
            origins[dotted] = origin


def _profile_layers(profile: str, seen: tuple[str, ...] = ()) -> list[tuple[str, dict[str, Any]]]:
    path = _profile_path(profile)
    if str(path) in seen:
        raise ConfigError(f"{path}: 'extends' forms a cycle")
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    layers = _profile_layers(str(parent), (*seen, str(path))) if parent else []
    return [*layers, (_display(path), data)]


def _display(path: Path | Traversable) -> str:
    """A short name for messages: packaged files as ``conf/<name>``, the user's relative to the cwd."""
    if not isinstance(path, Path) or path.parent == CONF_DIR:
        return f"conf/{path.name}"
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``key.path=value``; the value is read as YAML so numbers, booleans and null keep their type."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key.path=value")
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    node: Any = value
    for part in reversed(dotted.split(".")):
        node = {part: node}
    return node


def _origin_of(loc: tuple[Any, ...], origins: dict[str, str]) -> str:
    parts = [str(p) for p in loc]
    for end in range(len(parts), 0, -1):
        found = origins.get(".".join(parts[:end]))
        if found:
            return found
    # A section given as a whole (or missing) is attributed to the layer that set its parent.
    return next((o for k, o in origins.items() if k.startswith(parts[0] + ".")), "the configuration")


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The valid keys at the place an unknown key was found, for a 'did you mean' hint."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _explain(exc: ValidationError, origins: dict[str, str]) -> str:
    lines = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        origin = _origin_of(loc, origins)
        if error["type"] == "extra_forbidden":
            hint = difflib.get_close_matches(str(loc[-1]), _known_keys(Settings, loc), n=1)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            lines.append(f"unknown key {key!r} in {origin}{suggestion}")
        elif error["type"] == "missing":
            lines.append(f"{key} has no value in {origin} (every key's default is in conf/base.yaml)")
        elif error["type"] == "literal_error" and isinstance(error.get("input"), str):
            allowed = re.findall(r"'([^']*)'", str(error.get("ctx", {}).get("expected", "")))
            hint = difflib.get_close_matches(error["input"], allowed, n=1)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            lines.append(f"{key} in {origin}: {error['input']!r} is not one of {allowed}{suggestion}")
        else:
            lines.append(f"{key} in {origin}: {error['msg']} (got {error.get('input')!r})")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _check_paths(settings: Settings, origins: dict[str, str]) -> None:
    """Local source folders must exist: failing now beats failing after the cluster has spun up."""
    for name, location in settings.sources.model_dump().items():
        if location and "://" not in location and not Path(location).exists():
            key = f"sources.{name}"
            raise ConfigError(
                f"{key} in {origins.get(key, 'the configuration')}: path {location!r} does not exist"
            )


def load_settings(config: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Settings:
    """Load the configuration of a job.

    Args:
        config: a packaged profile name or a YAML file; ``None`` falls back to ``$ONCOLAKE_CONFIG``,
            then to ``local``.
        overrides: ``key.path=value`` strings from ``--set``, applied last, in order.

    Returns:
        The validated, immutable settings.

    Raises:
        ConfigError: naming each bad key and the file (or ``--set``) it came from.
    """
    profile = config or os.environ.get(CONFIG_ENV) or DEFAULT_PROFILE
    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}
    base = PACKAGED / "base.yaml"
    _merge(merged, _read_yaml(base), _display(base), origins)
    for origin, layer in _profile_layers(profile):
        _merge(merged, layer, origin, origins)
    for text in overrides:
        key, value = parse_override(text)
        _merge(merged, _nest(key, value), f"--set {text}", origins)
    merged["profile"] = Path(profile).stem
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, origins)) from None
    _check_paths(settings, origins)
    return settings


__all__ = ["ConfigError", "Settings", "absolute_path", "load_settings", "parse_override", "profile_names"]
