"""Calibration and the decision threshold, both fitted on the validation split only.

Temperature scaling divides the logits by one scalar T fitted to minimise the validation negative
log-likelihood: it fixes over-confidence without changing the ranking (so AUC is unchanged). The
threshold on the positive class's calibrated probability is chosen by a rule on the validation split
(default: the highest threshold that still reaches a target sensitivity), so the test split is touched once.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The temperature T > 0 minimising the NLL of ``softmax(logits / T)``; 1.0 without data."""
    if len(targets) == 0:
        return 1.0

    def nll(log_t: float) -> float:
        scaled = log_softmax(logits / np.exp(log_t), axis=1)
        return float(-scaled[np.arange(len(targets)), targets].mean())

    return float(np.exp(minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded").x))


def calibrated(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Class probabilities after temperature scaling."""
    return softmax(logits / temperature, axis=1)


def choose_threshold(
    positive: np.ndarray, scores: np.ndarray, rule: str = "sensitivity", target_sensitivity: float = 0.9
) -> float:
    """The decision threshold on ``scores`` (flag ``score >= threshold``) by ``rule``.

    ``sensitivity``: the highest threshold whose sensitivity on the positives reaches the target, so at
    least that share of positives is found with as few false alarms as that allows. ``youden``: the
    threshold maximising sensitivity + specificity. 0.5 when a class is missing.
    """
    positive = positive.astype(bool)
    if not positive.any() or positive.all():
        return 0.5
    if rule == "youden":
        candidates = np.unique(scores)
        youden = [(scores[positive] >= t).mean() + (scores[~positive] < t).mean() for t in candidates]
        return float(candidates[int(np.argmax(youden))])
    if rule != "sensitivity":
        raise ValueError(f"unknown threshold rule {rule!r}: expected 'sensitivity' or 'youden'")
    positives = np.sort(scores[positive])[::-1]
    needed = int(np.ceil(target_sensitivity * len(positives)))
    return float(positives[max(needed, 1) - 1])
