"""The promotion gate: every branch of ``decide``, and ``record`` against a real MLflow registry."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from mlflow import MlflowClient

from model.promotion import Decision, decide, record
from model.registry import CHAMPION, alias_version


def test_the_first_model_is_promoted_whatever_its_auc() -> None:
    for auc in (0.4, float("nan")):
        decision = decide(auc, None, None)
        assert decision.promoted and decision.reason == "no champion yet"
        assert decision.champion_version is None and decision.champion_auc is None


def test_an_undefined_challenger_auc_never_replaces_a_champion() -> None:
    decision = decide(float("nan"), "3", 0.7)
    assert not decision.promoted and decision.reason == "challenger AUC undefined"
    assert decision.champion_version == "3" and decision.champion_auc == 0.7


@pytest.mark.parametrize("champion_auc", [None, float("nan")])
def test_a_champion_without_a_figure_is_replaced(champion_auc: float | None) -> None:
    decision = decide(0.6, "2", champion_auc)
    assert decision.promoted and decision.reason == "higher patient-level AUC"


def test_only_a_strictly_higher_auc_wins() -> None:
    assert decide(0.81, "1", 0.8).promoted
    for challenger in (0.8, 0.79):
        decision = decide(challenger, "1", 0.8)
        assert not decision.promoted and decision.reason == "champion's AUC is not beaten"


def test_the_decision_is_written_as_tags() -> None:
    assert decide(0.81234, "4", 0.8).tags() == {
        "promotion.decision": "promoted",
        "promotion.reason": "higher patient-level AUC",
        "promotion.challenger_patient_auc": "0.8123",
        "promotion.champion_version": "4",
        "promotion.champion_patient_auc": "0.8000",
    }
    first = decide(float("nan"), None, None).tags()
    assert first["promotion.champion_version"] == "" and first["promotion.champion_patient_auc"] == ""
    assert first["promotion.challenger_patient_auc"] == "nan"


def test_record_tags_the_challenger_and_moves_the_champion_only_when_promoted(
    mlflow_uri: str, tmp_path: Path
) -> None:
    client, name = MlflowClient(), "oncolake-promotion-test"
    client.create_registered_model(name)
    first, second = (client.create_model_version(name, str(tmp_path / f"v{i}")).version for i in (1, 2))
    record(name, str(first), decide(0.7, None, None), client)
    assert alias_version(name, CHAMPION, client) == str(first)

    lost = decide(0.6, str(first), 0.7)
    record(name, str(second), lost, client)
    assert alias_version(name, CHAMPION, client) == str(first)
    tags = client.get_model_version(name, str(second)).tags
    assert tags["promotion.decision"] == "not promoted" and tags["promotion.champion_version"] == str(first)

    record(name, str(second), Decision(True, 0.9, str(first), 0.7, "higher patient-level AUC"), client)
    assert alias_version(name, CHAMPION, client) == str(second)
    assert not math.isnan(
        float(client.get_model_version(name, str(second)).tags["promotion.champion_patient_auc"])
    )
