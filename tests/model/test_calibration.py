"""Temperature scaling recovers over-confidence; the threshold rule meets its sensitivity target; the
aggregation rule chosen on validation suits where the signal is."""

from __future__ import annotations

import numpy as np
import pandas as pd

from core.tasks import TASKS
from model.calibration import (
    IMAGE_CANDIDATES,
    calibrated,
    choose_aggregation,
    choose_threshold,
    fit_temperature,
)


def test_temperature_scaling_recovers_a_known_temperature() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 1.5, size=(4000, 2))
    targets = np.array([rng.choice(2, p=p) for p in calibrated(true_logits, 1.0)])
    fitted = fit_temperature(true_logits * 3.0, targets)  # a model three times too confident
    assert abs(fitted - 3.0) / 3.0 < 0.1
    ranked = calibrated(true_logits * 3.0, fitted)[:, 1].argsort()
    assert (ranked == calibrated(true_logits * 3.0, 1.0)[:, 1].argsort()).all()  # ranking (AUC) unchanged
    assert fit_temperature(np.zeros((0, 2)), np.zeros(0, dtype=int)) == 1.0


def test_threshold_reaches_the_target_sensitivity_and_no_more() -> None:
    positive = np.array([1] * 10 + [0] * 10)
    scores = np.concatenate([np.linspace(0.95, 0.5, 10), np.linspace(0.6, 0.0, 10)])
    threshold = choose_threshold(positive, scores, target_sensitivity=0.9)
    sensitivity = (scores[positive == 1] >= threshold).mean()
    assert sensitivity >= 0.9 and (scores[positive == 1] >= threshold + 1e-9).mean() < 0.9
    assert choose_threshold(np.zeros(3), np.ones(3)) == 0.5


def _scored_tiles(
    rng: np.random.Generator, lesion: bool, images: int = 40, shift: float = 0.15, spurious: float = 0.0
) -> pd.DataFrame:
    """Validation tiles of ``images`` mammograms, half abnormal; an abnormal image has one suspicious tile
    among 12 (``lesion``), or every tile ``shift`` more suspicious than a normal image's (a diffuse
    signal). With probability ``spurious`` an image, of either class, also has one tile that looks
    suspicious for nothing."""
    rows = []
    for image in range(images):
        abnormal = image % 2 == 1
        scores = rng.uniform(0.0, 0.6, 12)
        if rng.random() < spurious:
            scores[int(rng.integers(1, 12))] = rng.uniform(0.7, 1.0)
        if abnormal and lesion:
            scores[0] = rng.uniform(0.7, 1.0)
        elif abnormal:
            scores = scores + shift
        for index, score in enumerate(scores):
            rows.append(
                {
                    "tile_id": f"{image}-{index}",
                    "image_id": f"i{image}",
                    "patient_key": f"p{image // 2}" if not lesion else f"p{image}",
                    "modality": "mammography",
                    "collection": "mias",
                    "split": "val",
                    "label": ("benign" if index == 0 else "normal") if abnormal else "normal",
                    "image_label": "benign" if abnormal else "normal",
                    "p_normal": 1 - score,
                    "p_abnormal": score,
                }
            )
    return pd.DataFrame(rows)


def test_the_aggregation_rule_is_chosen_on_validation() -> None:
    task, rng = TASKS["mammo_normal_vs_abnormal"], np.random.default_rng(0)
    one_lesion = _scored_tiles(rng, lesion=True)
    rule, tried = choose_aggregation(one_lesion, task, "auto", 3, "auto", 1)
    assert rule.rule == "max"  # one suspicious tile among twelve: the mean would drown it
    assert [t["chosen"] for t in tried if t["level"] == "image"].count(True) == 1
    assert {(t["rule"], t["top_k"]) for t in tried if t["level"] == "image"} == set(IMAGE_CANDIDATES)
    chosen = next(t for t in tried if t["chosen"] and t["level"] == "image")
    assert chosen["auc"] == max(t["auc"] for t in tried if t["level"] == "image")

    # A signal spread over every tile, and spurious suspicious tiles in half the images: a rule that pools
    # all tiles (mean, or noisy-OR, which sums log(1 - p)) beats the most suspicious tile, beyond chance...
    diffuse = _scored_tiles(rng, lesion=False, images=80, shift=0.1, spurious=0.5)
    pooled, tried = choose_aggregation(diffuse, task, "auto", 3, "auto", 1)
    assert pooled.rule in {"mean", "noisy_or"}
    assert next(t for t in tried if t["chosen"] and t["level"] == "image")["vs_first_low"] > 0
    # ... but where max is nearly as good (AUC 0.9975 against 1.0 on 40 images), a higher point value
    # within chance does not displace it.
    faint = _scored_tiles(rng, lesion=False)
    kept, tried = choose_aggregation(faint, task, "auto", 3, "auto", 1)
    best = max((t for t in tried if t["level"] == "image"), key=lambda t: t["auc"])
    assert kept.rule == "max" and best["rule"] != "max" and best["vs_first_low"] <= 0

    fixed, tried = choose_aggregation(one_lesion, task, "noisy_or", 3, "mean", 2)
    assert (fixed.rule, fixed.patient_rule, fixed.patient_top_k) == ("noisy_or", "mean", 2) and tried == []

    one_class = one_lesion[one_lesion["image_label"] == "normal"]
    fallback, _ = choose_aggregation(one_class, task, "auto", 4, "auto", 1)
    assert (fallback.rule, fallback.image_top_k, fallback.patient_rule) == ("top_k_mean", 4, "top_k_mean")
