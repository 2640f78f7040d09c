"""From tile probabilities to one probability per image (and per patient): the rule evaluation and
scoring share, so a figure in an evaluation report is exactly what bulk scoring would have produced.

The rule and its parameters come from configuration (``aggregation``) and are recorded on every
registered model version (:meth:`AggregationRule.tags`); evaluation and scoring read them back from the
version (:meth:`AggregationRule.from_tags`), never from today's configuration.

An image is as suspicious as its most suspicious region: the positive class's image probability is the
mean of its ``top_k`` highest tile probabilities (the max alone lets one noisy tile decide; a plain mean
lets a small lesion drown in normal tissue). With two classes the other class gets the complement; with
more, every class is aggregated the same way and the row is renormalised. Patients aggregate their
images with ``top_k=1`` (a patient is positive when any image is).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

RULES = ("top_k_mean",)


@dataclass(frozen=True)
class AggregationRule:
    """How tile scores become image scores, and image scores patient scores."""

    rule: str = "top_k_mean"
    image_top_k: int = 3
    patient_top_k: int = 1

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"unknown aggregation rule {self.rule!r}: expected one of {RULES}")
        if self.image_top_k < 1 or self.patient_top_k < 1:
            raise ValueError("aggregation top-k values must be at least 1")

    def tags(self) -> dict[str, str]:
        """The rule as model-version tags."""
        return {
            "aggregation.rule": self.rule,
            "aggregation.image_top_k": str(self.image_top_k),
            "aggregation.patient_top_k": str(self.patient_top_k),
        }

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> AggregationRule:
        """The rule recorded on a model version; a version without one raises (no silent default)."""
        try:
            return cls(
                tags["aggregation.rule"],
                int(tags["aggregation.image_top_k"]),
                int(tags["aggregation.patient_top_k"]),
            )
        except KeyError as exc:
            raise KeyError(f"the model version records no aggregation rule ({exc.args[0]} missing)") from None

    def images(self, tiles: pd.DataFrame, classes: Sequence[str], positive: str) -> pd.DataFrame:
        """One row per ``image_id`` from tile rows."""
        return aggregate(tiles, "image_id", classes, positive, self.image_top_k)

    def patients(self, images: pd.DataFrame, classes: Sequence[str], positive: str) -> pd.DataFrame:
        """One row per ``patient_key`` from image rows."""
        return aggregate(images, "patient_key", classes, positive, self.patient_top_k)


def _top_k_mean(values: np.ndarray, top_k: int) -> float:
    if len(values) == 0:
        return float("nan")
    k = min(top_k, len(values))
    return float(np.partition(values, len(values) - k)[-k:].mean())


def aggregate(
    scores: pd.DataFrame, key: str, classes: Sequence[str], positive: str, top_k: int
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
