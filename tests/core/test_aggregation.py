"""The tile -> image -> patient rule: top-k mean of the positive class, the complement for two classes,
renormalised class means for more, patients by their most suspicious image, and the rule's tags."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from core.aggregation import AggregationRule, aggregate, combine

BINARY = ("benign", "malignant")


def _tiles(rows: dict[str, list[float]]) -> pd.DataFrame:
    """Tile rows of a binary task: image id -> the tiles' malignant probabilities."""
    return pd.DataFrame(
        [
            {"image_id": image, "p_benign": 1.0 - p, "p_malignant": p}
            for image, values in rows.items()
            for p in values
        ]
    )


def test_the_positive_class_is_the_mean_of_the_top_k_tiles_and_the_other_its_complement() -> None:
    tiles = _tiles({"b": [0.9, 0.1, 0.8, 0.2], "a": [0.3]})
    out = aggregate(tiles, "image_id", BINARY, "malignant", 3)
    assert list(out.columns) == ["image_id", "n", "p_benign", "p_malignant"]
    assert list(out["image_id"]) == ["a", "b"]  # one row per image, sorted
    assert list(out["n"]) == [1, 4]
    assert out["p_malignant"].tolist() == pytest.approx([0.3, (0.9 + 0.8 + 0.2) / 3])
    assert (out["p_benign"] + out["p_malignant"]).tolist() == pytest.approx([1.0, 1.0])


def test_top_1_is_the_max_and_a_large_k_the_plain_mean() -> None:
    tiles = _tiles({"x": [0.2, 0.7, 0.4]})
    assert aggregate(tiles, "image_id", BINARY, "malignant", 1)["p_malignant"].iloc[0] == pytest.approx(0.7)
    plain = aggregate(tiles, "image_id", BINARY, "malignant", 10)["p_malignant"].iloc[0]
    assert plain == pytest.approx((0.2 + 0.7 + 0.4) / 3)


def test_the_positive_class_decides_whichever_column_it_is() -> None:
    tiles = _tiles({"x": [0.9, 0.1]})
    out = aggregate(tiles, "image_id", BINARY, "benign", 1).iloc[0]
    assert out["p_benign"] == pytest.approx(0.9) and out["p_malignant"] == pytest.approx(0.1)


def test_three_classes_are_each_top_k_averaged_then_renormalised() -> None:
    classes = ("normal", "benign", "malignant")
    tiles = pd.DataFrame(
        {
            "image_id": ["x", "x", "x"],
            "p_normal": [0.8, 0.1, 0.6],
            "p_benign": [0.1, 0.1, 0.3],
            "p_malignant": [0.1, 0.8, 0.1],
        }
    )
    out = aggregate(tiles, "image_id", classes, "malignant", 2).iloc[0]
    raw = np.array([(0.8 + 0.6) / 2, (0.1 + 0.3) / 2, (0.8 + 0.1) / 2])
    for c, expected in zip(classes, raw / raw.sum(), strict=True):
        assert out[f"p_{c}"] == pytest.approx(expected)
    assert sum(out[f"p_{c}"] for c in classes) == pytest.approx(1.0)


def test_a_patient_is_as_suspicious_as_its_most_suspicious_image() -> None:
    rule = AggregationRule("top_k_mean", image_top_k=2, patient_top_k=1)
    tiles = _tiles({"i1": [0.9, 0.7, 0.1], "i2": [0.2, 0.3], "i3": [0.4]})
    images = rule.images(tiles, BINARY, "malignant")
    assert images["p_malignant"].tolist() == pytest.approx([0.8, 0.25, 0.4])
    images["patient_key"] = ["p1", "p1", "p2"]
    patients = rule.patients(images, BINARY, "malignant")
    assert patients["patient_key"].tolist() == ["p1", "p2"]
    assert patients["p_malignant"].tolist() == pytest.approx([0.8, 0.4])
    assert patients["p_benign"].tolist() == pytest.approx([0.2, 0.6])
    assert patients["n"].tolist() == [2, 1]


def test_the_rule_round_trips_through_model_version_tags() -> None:
    rule = AggregationRule("noisy_or", image_top_k=5, patient_top_k=2, patient_rule="mean")
    tags = rule.tags()
    assert tags == {
        "aggregation.rule": "noisy_or",
        "aggregation.image_top_k": "5",
        "aggregation.patient_rule": "mean",
        "aggregation.patient_top_k": "2",
    }
    assert all(isinstance(v, str) for v in tags.values())  # MLflow tags are strings
    assert AggregationRule.from_tags({**tags, "threshold": "0.4"}) == rule
    # Versions registered before patient rules existed: their patients were the top-k mean of images.
    del tags["aggregation.patient_rule"]
    assert AggregationRule.from_tags(tags).patient_rule == "top_k_mean"


def test_every_rule_by_hand() -> None:
    values = np.array([0.5, 0.1, 0.2, 0.8])
    assert combine(values, "max") == 0.8
    assert combine(values, "mean") == pytest.approx(0.4)
    assert combine(values, "top_k_mean", 2) == pytest.approx(0.65)
    assert combine(values, "top_k_mean", 9) == pytest.approx(0.4)
    assert combine(values, "noisy_or") == pytest.approx(1 - 0.5 * 0.9 * 0.8 * 0.2)
    assert combine(np.array([1.0, 0.3]), "noisy_or") == pytest.approx(1.0)
    assert math.isnan(combine(np.array([]), "max"))
    tiles = _tiles({"i1": [0.9, 0.7, 0.1], "i2": [0.2, 0.3]})
    rule = AggregationRule("noisy_or", patient_rule="mean")
    images = rule.images(tiles, BINARY, "malignant")
    assert images["p_malignant"].tolist() == pytest.approx([1 - 0.1 * 0.3 * 0.9, 1 - 0.8 * 0.7])
    images["patient_key"] = ["p1", "p1"]
    assert rule.patients(images, BINARY, "malignant")["p_malignant"].iloc[0] == pytest.approx(
        images["p_malignant"].mean()
    )
    assert "noisy-OR of its tiles" in rule.describe() and "mean of its images" in rule.describe()


@pytest.mark.parametrize(
    "missing", ["aggregation.rule", "aggregation.image_top_k", "aggregation.patient_top_k"]
)
def test_a_version_without_the_rule_raises_instead_of_defaulting(missing: str) -> None:
    tags = AggregationRule().tags()
    del tags[missing]
    with pytest.raises(KeyError, match=missing):
        AggregationRule.from_tags(tags)
    with pytest.raises(KeyError, match="no aggregation rule"):
        AggregationRule.from_tags({})


def test_unknown_rules_and_top_k_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown aggregation rule"):
        AggregationRule("median")
    with pytest.raises(ValueError, match="at least 1"):
        AggregationRule(image_top_k=0)
    with pytest.raises(ValueError, match="unknown aggregation rule"):
        AggregationRule.from_tags({**AggregationRule().tags(), "aggregation.rule": "median"})
    with pytest.raises(ValueError, match="unknown aggregation rule"):
        AggregationRule(patient_rule="auto")  # "auto" is a setting, never a recorded rule
