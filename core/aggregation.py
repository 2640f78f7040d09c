"""From tile probabilities to one probability per image (and per patient): the rule evaluation and
scoring share, so a figure in an evaluation report is exactly what bulk scoring would have produced.

The rule and its parameters come from configuration (``aggregation``) and are recorded on every
registered model version (:meth:`AggregationRule.tags`); evaluation and scoring read them back from the
version (:meth:`AggregationRule.from_tags`), never from today's configuration.

Rules (:data:`RULES`), for images over their tiles and for patients over their images:

- ``max``: the most suspicious member decides (one noisy tile can);
- ``top_k_mean``: the mean of the ``top_k`` highest (``max`` when ``top_k`` is 1; a plain mean lets a
  small lesion drown in normal tissue);
- ``noisy_or``: ``1 - prod(1 - p)``, the chance that at least one member is positive if members were
  independent (grows with the number of suspicious members);
- ``mean``: the plain mean (right when the label is the whole image's, as in histology).

Which rule a model uses is chosen on its validation split when configured ``auto``
(:func:`model.calibration.choose_aggregation`) and recorded on its version. With two classes the
other class gets the complement; with more, every class is aggregated the same way and the row is
renormalised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

RULES = ("max", "top_k_mean", "noisy_or", "mean")


@dataclass(frozen=True)
class AggregationRule:
    """How tile scores become image scores (``rule``), and image scores patient scores (``patient_rule``)."""

    rule: str = "top_k_mean"
    image_top_k: int = 3
    patient_top_k: int = 1
    patient_rule: str = "top_k_mean"

    def __post_init__(self) -> None:
        for rule in (self.rule, self.patient_rule):
            if rule not in RULES:
                raise ValueError(f"unknown aggregation rule {rule!r}: expected one of {RULES}")
        if self.image_top_k < 1 or self.patient_top_k < 1:
            raise ValueError("aggregation top-k values must be at least 1")

    def tags(self) -> dict[str, str]:
        """The rule as model-version tags."""
        return {
            "aggregation.rule": self.rule,
            "aggregation.image_top_k": str(self.image_top_k),
            "aggregation.patient_rule": self.patient_rule,
            "aggregation.patient_top_k": str(self.patient_top_k),
        }

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> AggregationRule:
        """The rule recorded on a model version; a version without one raises (no silent default).

        Versions registered before patient rules existed record none: their patients were always the
        top-k mean of their images, which is what they get.
        """
        try:
            return cls(
                tags["aggregation.rule"],
                int(tags["aggregation.image_top_k"]),
                int(tags["aggregation.patient_top_k"]),
                tags.get("aggregation.patient_rule", "top_k_mean"),
            )
        except KeyError as exc:
            raise KeyError(f"the model version records no aggregation rule ({exc.args[0]} missing)") from None

    def describe(self) -> str:
        """In words, for reports and model cards."""

        def one(rule: str, top_k: int, members: str) -> str:
            return {
                "max": f"its most suspicious {members[:-1]}",
                "top_k_mean": f"the mean of its {top_k} most suspicious {members}"
                if top_k > 1
                else f"its most suspicious {members[:-1]}",
                "noisy_or": f"the noisy-OR of its {members}",
                "mean": f"the mean of its {members}",
            }[rule]

        return (
            f"an image is {one(self.rule, self.image_top_k, 'tiles')} ({self.rule}); a patient is "
            f"{one(self.patient_rule, self.patient_top_k, 'images')} ({self.patient_rule})"
        )

    def images(self, tiles: pd.DataFrame, classes: Sequence[str], positive: str) -> pd.DataFrame:
        """One row per ``image_id`` from tile rows."""
        return aggregate(tiles, "image_id", classes, positive, self.image_top_k, self.rule)

    def patients(self, images: pd.DataFrame, classes: Sequence[str], positive: str) -> pd.DataFrame:
        """One row per ``patient_key`` from image rows."""
        return aggregate(images, "patient_key", classes, positive, self.patient_top_k, self.patient_rule)


def combine(values: np.ndarray, rule: str, top_k: int = 1) -> float:
    """One score from the members' ``values`` by ``rule`` (NaN without members)."""
    if len(values) == 0:
        return float("nan")
    if rule == "max":
        return float(values.max())
    if rule == "mean":
        return float(values.mean())
    if rule == "noisy_or":
        clipped = np.clip(values.astype(np.float64), 0.0, 1.0 - 1e-12)
        return float(-np.expm1(np.log1p(-clipped).sum()))
    k = min(top_k, len(values))
    return float(np.partition(values, len(values) - k)[-k:].mean())


def aggregate(
    scores: pd.DataFrame,
    key: str,
    classes: Sequence[str],
    positive: str,
    top_k: int,
    rule: str = "top_k_mean",
) -> pd.DataFrame:
    """One row per ``key`` value with ``p_<class>`` columns aggregated from the rows of ``scores``.

    Args:
        scores: rows with ``key`` and one ``p_<class>`` column per class (tiles, or images).
        key: the column that names the group (``image_id``, ``patient_key``).
        classes: the model's classes, in output order.
        positive: the class whose score the rule decides (``malignant``, ``abnormal``).
        top_k: how many of the highest rows ``top_k_mean`` averages.
        rule: one of :data:`RULES`.

    Returns:
        ``key``, ``n`` (rows aggregated) and ``p_<class>`` for every class, rows summing to one.
    """
    if rule not in RULES:
        raise ValueError(f"unknown aggregation rule {rule!r}: expected one of {RULES}")
    columns = [f"p_{c}" for c in classes]
    rows = []
    for value, group in scores.groupby(key, sort=True):
        if len(classes) == 2:
            p_pos = combine(group[f"p_{positive}"].to_numpy(), rule, top_k)
            probabilities = {f"p_{c}": p_pos if c == positive else 1.0 - p_pos for c in classes}
        else:
            raw = np.array([combine(group[c].to_numpy(), rule, top_k) for c in columns])
            probabilities = dict(zip(columns, raw / raw.sum(), strict=True))
        rows.append({key: value, "n": len(group), **probabilities})
    return pd.DataFrame(rows, columns=[key, "n", *columns])
