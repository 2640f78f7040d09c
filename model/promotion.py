"""The promotion gate: a challenger becomes ``champion`` only if it beats the champion on the same data.

Both models are scored on the challenger's test split (same tiles table version), so the comparison is
between models, not between test sets. The decision and both figures are recorded on the challenger's
version as tags, whichever way it goes. Which version holds ``champion`` is
:func:`model.registry.alias_version`'s to say.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mlflow import MlflowClient

from model.registry import CHAMPION


@dataclass(frozen=True)
class Decision:
    """What the gate decided and on which figures (patient-level test AUC over all collections)."""

    promoted: bool
    challenger_auc: float
    champion_version: str | None
    champion_auc: float | None
    reason: str

    def tags(self) -> dict[str, str]:
        return {
            "promotion.decision": "promoted" if self.promoted else "not promoted",
            "promotion.reason": self.reason,
            "promotion.challenger_patient_auc": f"{self.challenger_auc:.4f}",
            "promotion.champion_version": self.champion_version or "",
            "promotion.champion_patient_auc": "" if self.champion_auc is None else f"{self.champion_auc:.4f}",
        }


def decide(challenger_auc: float, champion_version: str | None, champion_auc: float | None) -> Decision:
    """Promote when there is no champion yet, or when the challenger's AUC is strictly higher."""
    if champion_version is None:
        return Decision(True, challenger_auc, None, None, "no champion yet")
    if math.isnan(challenger_auc):
        return Decision(False, challenger_auc, champion_version, champion_auc, "challenger AUC undefined")
    if champion_auc is None or math.isnan(champion_auc) or challenger_auc > champion_auc:
        return Decision(True, challenger_auc, champion_version, champion_auc, "higher patient-level AUC")
    return Decision(False, challenger_auc, champion_version, champion_auc, "champion's AUC is not beaten")


def record(name: str, version: str, decision: Decision, client: MlflowClient | None = None) -> None:
    """Write the decision's tags on the challenger's version and move ``champion`` if it won."""
    client = client or MlflowClient()
    for key, value in decision.tags().items():
        client.set_model_version_tag(name, version, key, value)
    if decision.promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
