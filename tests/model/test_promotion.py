"""The promotion gate: every branch of ``decide`` (floor, chance, patients, champion, margin), and ``record``
against a real MLflow registry."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from mlflow import MlflowClient

from model.promotion import Comparison, Gate, decide, record
from model.registry import CHAMPION, alias_version


def against(champion_auc: float, difference: float, low: float, high: float) -> Comparison:
    return Comparison("3", champion_auc, difference, low, high, 24)


def test_a_first_model_that_clears_the_floor_and_chance_is_promoted() -> None:
    decision = decide(0.82, 0.71, 0.93, None)
    assert decision.promoted and decision.failed == ()
    assert decision.reason.startswith("no champion yet")
    assert decision.champion_version is None and decision.champion_auc is None


@pytest.mark.parametrize(
    ("auc", "low", "failed"),
    [
        (0.64, 0.52, ("floor",)),  # the demo's old mammography model: above chance, below the floor
        (0.75, 0.48, ("interval",)),  # high enough, but could be chance on this many patients
        (0.54, 0.31, ("floor", "interval")),
        (math.nan, math.nan, ("floor", "interval")),  # one class only in the test split
    ],
)
def test_a_first_model_below_the_floor_or_at_chance_is_not_promoted(
    auc: float, low: float, failed: tuple[str, ...]
) -> None:
    decision = decide(auc, low, 0.9, None)
    assert not decision.promoted and decision.failed == failed
    assert ("evaluate.min_auc 0.7" in decision.reason) == ("floor" in failed)
    assert ("95% interval" in decision.reason) == ("interval" in failed)


def test_a_figure_from_too_few_test_patients_is_not_promoted() -> None:
    """One patient of a class: a perfect ranking's bootstrap interval is 1.000-1.000, and proves nothing."""
    lucky = decide(1.0, 1.0, 1.0, None, Gate(), patients=(1, 1))
    assert not lucky.promoted and lucky.failed == ("patients",)
    assert "1 positive / 1 other patients, fewer than evaluate.min_patients 5" in lucky.reason
    assert decide(0.82, 0.71, 0.93, None, Gate(), patients=(5, 9)).promoted
    assert decide(0.82, 0.71, 0.93, None, Gate(min_patients=10), patients=(5, 9)).failed == ("patients",)
    assert lucky.tags()["promotion.min_patients"] == "5"


def test_the_floor_is_configurable() -> None:
    assert decide(0.64, 0.52, 0.8, None, Gate(min_auc=0.6)).promoted
    assert decide(0.64, 0.52, 0.8, None, Gate(min_auc=0.65)).failed == ("floor",)


def test_a_challenger_must_beat_the_champion_beyond_the_noise() -> None:
    beaten = decide(0.9, 0.8, 0.97, against(0.8, 0.1, 0.02, 0.18))
    assert beaten.promoted and "beats champion v3" in beaten.reason
    assert beaten.champion_version == "3" and beaten.champion_auc == 0.8

    # Higher point estimate, but the paired interval reaches below the margin (0): not proven better.
    noisy = decide(0.9, 0.8, 0.97, against(0.85, 0.05, -0.03, 0.12))
    assert not noisy.promoted and noisy.failed == ("champion",)
    assert "does not beat champion v3" in noisy.reason and "-0.030" in noisy.reason

    worse = decide(0.9, 0.8, 0.97, against(0.95, -0.05, -0.1, -0.01))
    assert not worse.promoted and worse.failed == ("champion",)
    undefined = decide(0.9, 0.8, 0.97, against(0.9, math.nan, math.nan, math.nan))
    assert not undefined.promoted and undefined.failed == ("champion",)


def test_a_negative_margin_accepts_a_challenger_that_is_not_worse() -> None:
    comparison = against(0.9, 0.0, -0.03, 0.03)
    assert not decide(0.9, 0.8, 0.97, comparison).promoted
    assert decide(0.9, 0.8, 0.97, comparison, Gate(margin=-0.05)).promoted
    assert not decide(0.9, 0.8, 0.97, comparison, Gate(margin=0.05)).promoted


def test_a_challenger_that_beats_the_champion_still_needs_the_floor() -> None:
    decision = decide(0.66, 0.55, 0.77, against(0.5, 0.16, 0.05, 0.3))
    assert not decision.promoted and decision.failed == ("floor",)


def test_the_decision_is_written_as_tags() -> None:
    assert decide(0.81234, 0.7, 0.9, against(0.8, 0.0123, 0.001, 0.03)).tags() == {
        "promotion.decision": "promoted",
        "promotion.reason": decide(0.81234, 0.7, 0.9, against(0.8, 0.0123, 0.001, 0.03)).reason,
        "promotion.failed": "",
        "promotion.min_auc": "0.7",
        "promotion.margin": "0",
        "promotion.min_patients": "5",
        "promotion.challenger_patient_auc": "0.8123",
        "promotion.challenger_patient_auc_low": "0.7000",
        "promotion.challenger_patient_auc_high": "0.9000",
        "promotion.champion_version": "3",
        "promotion.champion_patient_auc": "0.8000",
        "promotion.difference": "0.0123",
        "promotion.difference_low": "0.0010",
        "promotion.difference_high": "0.0300",
    }
    first = decide(math.nan, math.nan, math.nan, None).tags()
    assert first["promotion.champion_version"] == "" and first["promotion.difference"] == ""
    assert (
        first["promotion.challenger_patient_auc"] == "nan" and first["promotion.failed"] == "floor,interval"
    )


def test_record_tags_the_challenger_and_moves_the_champion_only_when_promoted(
    mlflow_uri: str, tmp_path: Path
) -> None:
    client, name = MlflowClient(), "oncolake-promotion-test"
    client.create_registered_model(name)
    first, second = (client.create_model_version(name, str(tmp_path / f"v{i}")).version for i in (1, 2))
    at_chance = decide(0.55, 0.4, 0.7, None)
    record(name, str(first), at_chance, client)
    assert alias_version(name, CHAMPION, client) is None
    assert client.get_model_version(name, str(first)).tags["promotion.failed"] == "floor,interval"

    record(name, str(first), decide(0.8, 0.7, 0.9, None), client)
    assert alias_version(name, CHAMPION, client) == str(first)

    lost = decide(0.85, 0.75, 0.95, Comparison(str(first), 0.8, 0.05, -0.02, 0.1, 20))
    record(name, str(second), lost, client)
    assert alias_version(name, CHAMPION, client) == str(first)
    tags = client.get_model_version(name, str(second)).tags
    assert tags["promotion.decision"] == "not promoted" and tags["promotion.champion_version"] == str(first)
    assert tags["promotion.failed"] == "champion"

    won = decide(0.9, 0.8, 0.97, Comparison(str(first), 0.8, 0.1, 0.03, 0.17, 20))
    record(name, str(second), won, client)
    assert alias_version(name, CHAMPION, client) == str(second)
    assert float(client.get_model_version(name, str(second)).tags["promotion.difference_low"]) == 0.03
