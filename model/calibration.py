"""Calibration and the decision threshold, both fitted on the validation split only.

Temperature scaling divides the logits by one scalar T fitted to minimise the validation negative
log-likelihood: it fixes over-confidence without changing the ranking (so AUC is unchanged). The
threshold on the positive class's calibrated probability is chosen by a rule on the validation split
(default: the highest threshold that still reaches a target sensitivity), so the test split is touched once.
The tile -> image and image -> patient aggregation rules, when configured ``auto``, are chosen on the same
validation scores (:func:`choose_aggregation`), before the threshold, which is chosen under them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from core.aggregation import AggregationRule


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


# Candidates tried when a rule is ``auto``, in order of preference on a tie: (rule, top_k).
IMAGE_CANDIDATES = (("max", 1), ("top_k_mean", 2), ("top_k_mean", 3), ("noisy_or", 1), ("mean", 1))
PATIENT_CANDIDATES = (("max", 1), ("mean", 1), ("noisy_or", 1))


def choose_aggregation(
    tiles: pd.DataFrame, task: Any, rule: str, image_top_k: int, patient_rule: str, patient_top_k: int
) -> tuple[AggregationRule, list[dict[str, Any]]]:
    """The tile -> image and image -> patient rules, each fixed or (``auto``) chosen on validation scores.

    At each level the first candidate (``max``: :data:`IMAGE_CANDIDATES`, then
    :data:`PATIENT_CANDIDATES` under the chosen image rule) stands unless the candidate with the highest
    validation AUC beats it beyond chance: the lower end of the 95% interval of their paired AUC
    difference, resampling validation patients, above 0. A validation split holds a few dozen patients,
    so AUCs a few points apart are noise; picking the highest point value chose rules that lost on test
    (docs/models.md). When the validation split cannot give an AUC (one class only) an ``auto`` rule falls
    back to ``top_k_mean`` with the configured ``top_k``.

    Args:
        tiles: scored validation tiles (:func:`model.evaluation.score_split`).
        task: the task (:class:`core.tasks.Task`).
        rule, image_top_k, patient_rule, patient_top_k: the ``aggregation`` settings.

    Returns:
        The rule, and one row per candidate tried: ``level``, ``rule``, ``top_k``, ``auc``, ``chosen``
        and, for the best candidate when it is not the first, ``vs_first_low`` (the lower end of its paired
        difference's interval).
    """
    from model.evaluation import level_frames
    from model.metrics import auc, paired_auc_difference

    tried: list[dict[str, Any]] = []

    def pick(level: str, candidates: tuple[tuple[str, int], ...], build: Any) -> AggregationRule | None:
        scored, frames = [], []
        for name, top_k in candidates:
            frame = level_frames(tiles, task, build(name, top_k))[level]
            frame = frame.set_index("image_id" if level == "image" else "patient").sort_index()
            value = auc(frame["target"].to_numpy(), frame["score"].to_numpy())
            scored.append((name, top_k, value))
            frames.append(frame)
            tried.append({"level": level, "rule": name, "top_k": top_k, "auc": value, "chosen": False})
        rows = tried[len(tried) - len(scored) :]
        valid = [i for i, s in enumerate(scored) if not np.isnan(s[2])]
        if not valid:
            return None
        best = max(valid, key=lambda i: scored[i][2])  # max keeps the first of equal values
        if best != 0 and 0 in valid:
            reference, challenger = frames[0], frames[best].reindex(frames[0].index)
            difference = paired_auc_difference(
                reference["target"].to_numpy(),
                challenger["score"].to_numpy(),
                reference["score"].to_numpy(),
                (reference["collection"] + "/" + reference["patient_key"]).to_numpy(),
            )
            rows[best]["vs_first_low"] = difference["low"]
            if not difference["low"] > 0:
                best = 0
        rows[best]["chosen"] = True
        return build(scored[best][0], scored[best][1])

    image = AggregationRule(rule, image_top_k, patient_top_k, "max") if rule != "auto" else None
    if image is None:
        image = pick("image", IMAGE_CANDIDATES, lambda n, k: AggregationRule(n, k, 1, "max"))
        image = image or AggregationRule("top_k_mean", image_top_k, 1, "max")
    if patient_rule != "auto":
        return AggregationRule(image.rule, image.image_top_k, patient_top_k, patient_rule), tried
    chosen = pick(
        "patient", PATIENT_CANDIDATES, lambda n, k: AggregationRule(image.rule, image.image_top_k, k, n)
    )
    return chosen or AggregationRule(image.rule, image.image_top_k, patient_top_k, "top_k_mean"), tried
