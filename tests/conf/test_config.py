"""Layered configuration: profiles, overrides, and errors that name the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from conf import ConfigError, load_settings, profile_names


def test_profiles_layer_on_base_and_tiny_extends_local() -> None:
    tiny = load_settings("tiny")
    assert tiny.profile == "tiny"
    assert tiny.synth.images == 60  # tiny's own value
    assert tiny.lakehouse.root == "./lakehouse"  # from local, which tiny extends
    assert tiny.mlflow.experiment == "oncolake"  # from base
    assert {"local", "cluster", "tiny"} <= set(profile_names())


def test_embedded_default_tracks_mlflow_in_sqlite_inside_the_lakehouse(tmp_path: Path) -> None:
    settings = load_settings("local", [f"lakehouse.root={tmp_path}"])
    assert settings.tracking_uri() == f"sqlite:///{tmp_path}/mlflow.db"


def test_set_overrides_keep_yaml_types() -> None:
    settings = load_settings("local", ["spark.shuffle_partitions=16", "spark.ui=true", "synth.downscale=4.5"])
    assert settings.spark.shuffle_partitions == 16
    assert settings.spark.ui is True
    assert settings.synth.downscale == 4.5


def test_environment_variable_selects_the_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONCOLAKE_CONFIG", "tiny")
    assert load_settings().profile == "tiny"


def test_misspelled_key_names_the_key_and_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "mine.yaml"
    bad.write_text("extends: local\nlakehouse:\n  rooot: /tmp/x\n")
    with pytest.raises(ConfigError) as err:
        load_settings(str(bad))
    message = str(err.value)
    assert "lakehouse.rooot" in message
    assert str(bad) in message or "mine.yaml" in message
    assert "did you mean 'root'" in message


def test_wrong_type_from_set_names_the_override() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings("local", ["spark.shuffle_partitions=many"])
    assert "spark.shuffle_partitions" in str(err.value)
    assert "--set spark.shuffle_partitions=many" in str(err.value)


def test_missing_source_folder_fails_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"sources\.mias .*does not exist"):
        load_settings("local", [f"sources.mias={tmp_path / 'nowhere'}"])


def test_unknown_profile_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown config 'prod'.*local"):
        load_settings("prod")


def test_settings_are_immutable() -> None:
    settings = load_settings("local")
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen error type is an implementation detail
        settings.spark.shuffle_partitions = 3  # type: ignore[misc]


def test_cluster_profile_is_valid_and_refuses_the_demo_secret() -> None:
    settings = load_settings("cluster")
    assert settings.spark.master.startswith("spark://")
    assert settings.privacy.allow_demo_secret is False
    assert settings.tracking_uri().startswith("https://")
