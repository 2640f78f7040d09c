"""Temperature scaling recovers over-confidence; the threshold rule meets its sensitivity target."""

from __future__ import annotations

import numpy as np

from model.calibration import calibrated, choose_threshold, fit_temperature


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
