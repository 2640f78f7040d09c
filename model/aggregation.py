"""From tile probabilities to one probability per image (and per patient): the rule evaluation and
scoring share, so a figure in an evaluation report is exactly what bulk scoring would have produced.

An image is as suspicious as its most suspicious region: the positive class's image probability is the
mean of its ``top_k`` highest tile probabilities (the max alone lets one noisy tile decide; a plain mean
lets a small lesion drown in normal tissue). With two classes the other class gets the complement; with
more, every class is aggregated the same way and the row is renormalised. Patients aggregate their
images with ``top_k=1`` (a patient is positive when any image is).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

TOP_K = 3


def _top_k_mean(values: np.ndarray, top_k: int) -> float:
    if len(values) == 0:
        return float("nan")
    k = min(top_k, len(values))
    return float(np.partition(values, len(values) - k)[-k:].mean())


def aggregate(
    scores: pd.DataFrame, key: str, classes: Sequence[str], positive: str, top_k: int = TOP_K
) -> pd.DataFrame:
    """One row per ``key`` value with ``p_<class>`` columns aggregated from the rows of ``scores``.

    Args:
        scores: rows with ``key`` and one ``p_<class>`` column per class (tiles, or images).
        key: the column that names the group (``image_id``, ``patient_key``).
        classes: the model's classes, in output order.
        positive: the class whose top-k mean decides (``malignant``, ``abnormal``).
        top_k: how many of the highest rows count.

    Returns:
        ``key``, ``n`` (rows aggregated) and ``p_<class>`` for every class, rows summing to one.
    """
    columns = [f"p_{c}" for c in classes]
    rows = []
    for value, group in scores.groupby(key, sort=True):
        if len(classes) == 2:
            p_pos = _top_k_mean(group[f"p_{positive}"].to_numpy(), top_k)
            probabilities = {f"p_{c}": p_pos if c == positive else 1.0 - p_pos for c in classes}
        else:
            raw = np.array([_top_k_mean(group[c].to_numpy(), top_k) for c in columns])
            probabilities = dict(zip(columns, raw / raw.sum(), strict=True))
        rows.append({key: value, "n": len(group), **probabilities})
    return pd.DataFrame(rows, columns=[key, "n", *columns])
