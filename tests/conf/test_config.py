"""Layered configuration: profiles, overrides, errors that name the key and the file, names checked
against their registries, local paths made absolute, and every default in base.yaml alone."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from conf import ConfigError, load_settings, profile_names
from conf.schema import NetworkName, Settings, TaskName
from core.tasks import TASKS
from model.networks import NETWORKS


def test_profiles_layer_on_base_and_tiny_extends_local(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    tiny = load_settings("tiny")
    assert tiny.profile == "tiny"
    assert tiny.synth.images == 60  # tiny's own value
    assert tiny.lakehouse.root == str(tmp_path / "lakehouse")  # local's ./lakehouse, made absolute
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


def test_a_tile_step_larger_than_the_tile_is_refused() -> None:
    """Pixels between tiles would never be read: refused when the settings load, not at tiling time."""
    with pytest.raises(ConfigError, match=r"tiles\.stride is 224: it must lie between 8 and tiles\.size 112"):
        load_settings("local", ["tiles.size=112"])
    with pytest.raises(ConfigError, match=r"tiles\.scored_stride\.mammography is 300"):
        load_settings("local", ["tiles.scored_stride.mammography=300"])
    settings = load_settings(
        "local", ["tiles.size=112", "tiles.stride=112", "tiles.scored_stride.mammography=56"]
    )
    assert (settings.tiles.stride, settings.tiles.scored_stride["mammography"]) == (112, 56)


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


def _sections(model: type[BaseModel]) -> list[type[BaseModel]]:
    found = [model]
    for field in model.model_fields.values():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            found += _sections(field.annotation)
    return found


def test_base_yaml_is_the_one_place_of_the_defaults() -> None:
    with_default = [
        f"{section.__name__}.{name}"
        for section in _sections(Settings)
        for name, field in section.model_fields.items()
        if not field.is_required()
    ]
    assert with_default == [], "defaults belong in conf/base.yaml, not in conf/schema.py"
    with pytest.raises(ValidationError):
        Settings.model_validate({})  # a Settings is built only through load_settings


def test_a_profile_that_empties_a_section_names_the_missing_keys(tmp_path: Path) -> None:
    bad = tmp_path / "empty.yaml"
    bad.write_text("extends: local\naggregation: {}\n")
    with pytest.raises(ConfigError) as err:
        load_settings(str(bad))
    assert re.search(r"aggregation\.image_top_k has no value in \S*empty\.yaml", str(err.value))


def test_the_declared_names_are_the_registries_names() -> None:
    assert set(typing.get_args(TaskName)) == set(TASKS)
    assert set(typing.get_args(NetworkName)) == set(NETWORKS)


def test_a_misspelled_task_fails_at_load_naming_the_key_and_the_override() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings("local", ["train.tasks=[histo_benign_vs_malignant, mammo_normal_vs_abnromal]"])
    message = str(err.value)
    assert "train.tasks.1 in --set train.tasks=" in message
    assert "did you mean 'mammo_normal_vs_abnormal'?" in message


def test_an_unknown_network_fails_at_load_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "net.yaml"
    bad.write_text("extends: local\ntrain:\n  network: alexnet\n")
    with pytest.raises(ConfigError) as err:
        load_settings(str(bad))
    message = str(err.value)
    assert re.search(r"train\.network in \S*net\.yaml:", message)
    assert "'alexnet' is not one of ['alexnet_like', 'compact']" in message


def test_no_tasks_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"train\.tasks in --set train\.tasks=\[\]"):
        load_settings("local", ["train.tasks=[]"])


def test_local_paths_are_made_absolute_on_the_driver(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "raw" / "mias").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    settings = load_settings(
        "local", ["lakehouse.root=lake/../lake2", "synth.out=out", "sources.mias=raw/mias", "sources.ddsm="]
    )
    assert settings.lakehouse.root == str(tmp_path / "lake2")
    assert settings.synth.out == str(tmp_path / "out")
    assert settings.sources.mias == str(tmp_path / "raw" / "mias")
    assert settings.sources.ddsm is None
    assert settings.tracking_uri() == f"sqlite:///{tmp_path / 'lake2'}/mlflow.db"
    # Made absolute once, at load: the values no longer depend on where they are read.
    monkeypatch.chdir(tmp_path / "raw")
    assert settings.lakehouse.table("images") == f"{tmp_path / 'lake2'}/images"


def test_home_is_expanded_and_uris_are_kept(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    settings = load_settings("local", ["synth.out=~/synthetic"])
    assert settings.synth.out == str(tmp_path / "synthetic")
    remote = load_settings("cluster", ["synth.out=s3a://bucket/synthetic"])
    assert remote.lakehouse.root == "s3a://oncolake-lakehouse/prod"
    assert remote.synth.out == "s3a://bucket/synthetic"


def test_recorded_settings_redact_secrets_and_hide_source_paths(tmp_path: Path) -> None:
    config = tmp_path / "site.yaml"
    config.write_text(
        "extends: tiny\n"
        "spark:\n  conf:\n    spark.hadoop.fs.s3a.secret.key: s3-secret-value\n"
        "    spark.executor.cores: '2'\n"
        "mlflow:\n  tracking_uri: https://trainer:mlflow-password@mlflow.example.org\n"
        f"sources:\n  mias: {tmp_path}\n"
    )
    recorded = load_settings(str(config)).public_dict()
    text = repr(recorded)
    assert "s3-secret-value" not in text and "mlflow-password" not in text
    assert recorded["spark"]["conf"]["spark.executor.cores"] == "2"
    assert recorded["sources"]["mias"] == str(tmp_path)  # visible unless privacy.hash_source_paths
    hidden = load_settings(str(config), ["privacy.hash_source_paths=true"]).public_dict()
    assert str(tmp_path) not in repr({k: hidden[k] for k in ("sources", "synth", "landing")})
