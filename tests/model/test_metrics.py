"""The paper's confusion figures and the patient-bootstrap AUC, against hand counts and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from model.metrics import auc, auc_with_interval, confusion, paired_auc_difference


def test_confusion_counts_and_ratios_by_hand() -> None:
    targets = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    predicted = np.array([1, 1, 0, 0, 0, 1, 0, 1])
    figures = confusion(targets, predicted)
    assert (figures["TP"], figures["TN"], figures["FP"], figures["FN"]) == (3, 3, 1, 1)
    assert figures["accuracy"] == 6 / 8
    assert figures["sensitivity"] == figures["recall"] == 3 / 4
    assert figures["specificity"] == 3 / 4 and figures["precision"] == 3 / 4
    assert figures["f1"] == pytest.approx(f1_score(targets, predicted))
    assert figures["precision"] == pytest.approx(precision_score(targets, predicted))
    assert figures["recall"] == pytest.approx(recall_score(targets, predicted))


def test_confusion_without_positives_has_no_sensitivity() -> None:
    figures = confusion(np.zeros(4), np.array([0, 1, 0, 0]))
    assert (figures["TP"], figures["TN"], figures["FP"], figures["FN"]) == (0, 3, 1, 0)
    assert math.isnan(figures["sensitivity"]) and math.isnan(figures["f1"])
    assert figures["precision"] == 0.0 and figures["specificity"] == 3 / 4


def test_auc_matches_scikit_learn_ties_included() -> None:
    rng = np.random.default_rng(1)
    targets = rng.integers(0, 2, 200)
    scores = np.round(rng.random(200) * 0.5 + 0.3 * targets, 1)  # rounded: many ties
    assert auc(targets, scores) == pytest.approx(roc_auc_score(targets, scores))
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.75  # 3 of 4 pairs ordered


def test_auc_is_undefined_with_one_class() -> None:
    assert math.isnan(auc(np.ones(5), np.linspace(0, 1, 5)))
    assert math.isnan(auc(np.zeros(5), np.linspace(0, 1, 5)))
    result = auc_with_interval(np.ones(6), np.linspace(0, 1, 6), np.arange(6), rounds=20)
    assert math.isnan(result["auc"]) and math.isnan(result["auc_low"]) and math.isnan(result["auc_high"])


def test_the_interval_brackets_the_point_and_counts_patients() -> None:
    rng = np.random.default_rng(2)
    patients = np.repeat(np.arange(40), 5)
    targets = np.repeat(rng.integers(0, 2, 40), 5)
    scores = rng.random(200) + 0.5 * targets
    result = auc_with_interval(targets, scores, patients, rounds=300, seed=0)
    assert result["auc"] == pytest.approx(roc_auc_score(targets, scores))
    assert result["auc_low"] < result["auc"] < result["auc_high"]
    assert (result["patients"], result["n"]) == (40, 200)
    assert auc_with_interval(targets, scores, patients, rounds=300, seed=0) == result  # seeded


def test_the_bootstrap_resamples_patients_not_rows() -> None:
    """One patient holding every row: each resample is that patient's rows, so the interval is a point
    (a bootstrap over rows would spread)."""
    targets = np.array([0, 1, 0, 1, 1, 0, 0, 1])
    scores = np.array([0.2, 0.6, 0.5, 0.9, 0.4, 0.1, 0.7, 0.8])
    result = auc_with_interval(targets, scores, np.array(["p"] * 8), rounds=50)
    assert result["auc_low"] == result["auc_high"] == result["auc"] == roc_auc_score(targets, scores)
    assert result["patients"] == 1


def test_the_paired_difference_cancels_what_both_models_share() -> None:
    rng = np.random.default_rng(1)
    targets = np.repeat([0, 1], 40)
    shared = rng.normal(0, 1, 80) + targets  # both models see the same hard cases
    better = shared + 1.5 * targets
    same = paired_auc_difference(targets, shared, shared, np.arange(80), rounds=200)
    assert same["difference"] == 0 and same["low"] == 0 and same["high"] == 0 and same["groups"] == 80
    gained = paired_auc_difference(targets, better, shared, np.arange(80), rounds=200)
    assert gained["difference"] == pytest.approx(
        roc_auc_score(targets, better) - roc_auc_score(targets, shared)
    )
    assert 0 < gained["low"] < gained["difference"] < gained["high"]
    one_class = paired_auc_difference(np.ones(6), better[:6], shared[:6], np.arange(6), rounds=50)
    assert math.isnan(one_class["difference"]) and math.isnan(one_class["low"])
