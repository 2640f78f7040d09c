"""The promotion gate: a version becomes ``champion`` only if it is good enough, and better than the champion.

Four conditions, all on the challenger's test split (the tiles table version its lineage pins), all
required, the first version of a model included:

1. **floor**: its patient-level test AUC reaches ``evaluate.min_auc`` (default 0.70);
2. **interval**: the lower end of that AUC's patient-bootstrap 95% interval is above 0.5 (a model whose
   figure could be chance on this many patients is not promoted, however high the point estimate);
3. **patients**: the test split holds at least ``evaluate.min_patients`` (default 5) patients of each
   class: with one or two, every bootstrap resample that has both classes holds the same pair, and the
   "interval" of a perfect ranking is 1.000-1.000;
4. **champion**: when a champion exists, the challenger beats it on the same test patients: the champion
   is re-scored on the challenger's test split at its own threshold and rule, and a paired bootstrap over
   those patients (both models' scores resampled together) gives the AUC difference challenger - champion
   and its 95% interval, whose lower end must be above ``evaluate.promotion_margin`` (default 0: better
   beyond the test set's noise; a negative margin accepts a challenger that is not worse by more than it).

A version that fails stays ``challenger``; the decision, the conditions that failed and every figure
behind them are tags on the version (:meth:`Decision.tags`), whichever way it goes, and the evaluation
report prints them. Which version holds ``champion`` is :func:`model.registry.alias_version`'s to say.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mlflow import MlflowClient

from model.registry import CHAMPION

CONDITIONS = ("floor", "interval", "patients", "champion")


@dataclass(frozen=True)
class Gate:
    """The gate's settings: ``evaluate.min_auc``, ``evaluate.promotion_margin``, ``evaluate.min_patients``."""

    min_auc: float = 0.70
    margin: float = 0.0
    min_patients: int = 5


@dataclass(frozen=True)
class Comparison:
    """Challenger minus champion patient-level AUC on the same test patients (paired bootstrap)."""

    champion_version: str
    champion_auc: float
    difference: float
    low: float
    high: float
    patients: int


@dataclass(frozen=True)
class Decision:
    """What the gate decided and on which figures (patient-level test AUC over all collections)."""

    promoted: bool
    challenger_auc: float
    challenger_low: float
    challenger_high: float
    comparison: Comparison | None
    failed: tuple[str, ...]
    """The conditions (:data:`CONDITIONS`) that failed; empty when promoted."""
    reason: str
    gate: Gate = Gate()

    @property
    def champion_version(self) -> str | None:
        return self.comparison.champion_version if self.comparison else None

    @property
    def champion_auc(self) -> float | None:
        return self.comparison.champion_auc if self.comparison else None

    def tags(self) -> dict[str, str]:
        """The decision as model-version tags (figures as text, ``nan`` when undefined, '' when absent)."""

        def number(value: float | None) -> str:
            return "" if value is None else f"{value:.4f}"

        compared = self.comparison
        return {
            "promotion.decision": "promoted" if self.promoted else "not promoted",
            "promotion.reason": self.reason,
            "promotion.failed": ",".join(self.failed),
            "promotion.min_auc": f"{self.gate.min_auc:g}",
            "promotion.margin": f"{self.gate.margin:g}",
            "promotion.min_patients": str(self.gate.min_patients),
            "promotion.challenger_patient_auc": number(self.challenger_auc),
            "promotion.challenger_patient_auc_low": number(self.challenger_low),
            "promotion.challenger_patient_auc_high": number(self.challenger_high),
            "promotion.champion_version": compared.champion_version if compared else "",
            "promotion.champion_patient_auc": number(compared.champion_auc if compared else None),
            "promotion.difference": number(compared.difference if compared else None),
            "promotion.difference_low": number(compared.low if compared else None),
            "promotion.difference_high": number(compared.high if compared else None),
        }

    def summary(self) -> str:
        """One line for the report and the job's output."""
        outcome = "promoted to champion" if self.promoted else "not promoted (stays challenger)"
        return f"{outcome}: {self.reason}"


def _below(value: float, bound: float) -> bool:
    """``value`` is not above ``bound`` (NaN never passes)."""
    return math.isnan(value) or value <= bound


def decide(
    challenger_auc: float,
    challenger_low: float,
    challenger_high: float,
    comparison: Comparison | None,
    gate: Gate = Gate(),
    patients: tuple[int, int] | None = None,
) -> Decision:
    """Apply the four conditions (module docstring); every failed one is named in the reason.

    Args:
        challenger_auc, challenger_low, challenger_high: the challenger's patient-level test AUC and its
            patient-bootstrap 95% interval (NaN when undefined).
        comparison: against the champion, or None when the model has no champion yet.
        gate: the floor, the margin and the patients per class.
        patients: the test patients of the positive and of the other class behind the AUC; None when
            not counted (the condition is then not applied).
    """
    failed, why = [], []
    if math.isnan(challenger_auc) or challenger_auc < gate.min_auc:
        failed.append("floor")
        why.append(f"patient-level test AUC {challenger_auc:.3f} is below evaluate.min_auc {gate.min_auc:g}")
    if _below(challenger_low, 0.5):
        failed.append("interval")
        why.append(f"the lower end of its 95% interval ({challenger_low:.3f}) is not above 0.5")
    if patients is not None and min(patients) < gate.min_patients:
        failed.append("patients")
        why.append(
            f"its test split holds {patients[0]} positive / {patients[1]} other patients, fewer than "
            f"evaluate.min_patients {gate.min_patients} of each class"
        )
    if comparison is not None and _below(comparison.low, gate.margin):
        failed.append("champion")
        why.append(
            f"it does not beat champion v{comparison.champion_version} "
            f"({comparison.champion_auc:.3f}) on the same {comparison.patients} test patients: AUC "
            f"difference {comparison.difference:+.3f} (95% CI {comparison.low:+.3f} to "
            f"{comparison.high:+.3f}), whose lower end is not above the margin {gate.margin:g}"
        )
    if failed:
        reason = "; ".join(why)
    elif comparison is None:
        reason = (
            f"no champion yet; patient-level test AUC {challenger_auc:.3f} (95% CI {challenger_low:.3f}-"
            f"{challenger_high:.3f}) clears the floor {gate.min_auc:g} and chance"
        )
    else:
        reason = (
            f"beats champion v{comparison.champion_version} ({comparison.champion_auc:.3f}) on the same "
            f"{comparison.patients} test patients: AUC difference {comparison.difference:+.3f} (95% CI "
            f"{comparison.low:+.3f} to {comparison.high:+.3f}) above the margin {gate.margin:g}"
        )
    return Decision(
        not failed, challenger_auc, challenger_low, challenger_high, comparison, tuple(failed), reason, gate
    )


def record(name: str, version: str, decision: Decision, client: MlflowClient | None = None) -> None:
    """Write the decision's tags on the challenger's version and move ``champion`` if it won."""
    client = client or MlflowClient()
    for key, value in decision.tags().items():
        client.set_model_version_tag(name, version, key, value)
    if decision.promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
