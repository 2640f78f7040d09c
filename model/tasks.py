"""What each model predicts, from which collections, and which figures a collection cannot have.

Histology and mammography are different modalities, so by default each gets its own models. The
paper's single model over all four collections is kept as ``paper_all`` to reproduce it, with the
warning that the modality alone then predicts much of the label.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

MAMMOGRAPHY = ("mias", "ddsm", "cbis_ddsm")
NO_NORMALS = {
    "cbis_ddsm": "CBIS-DDSM has no normal images",
    "breakhis": "BreaKHis has no normal images",
}


@dataclass(frozen=True)
class Task:
    """A classification task: tile labels mapped to class indices; labels not in the map are left out."""

    name: str
    modality: str
    collections: tuple[str, ...]
    classes: tuple[str, ...]
    positive: str
    label_map: dict[str, int] = field(hash=False)
    warning: str | None = None
    external: tuple[str, ...] = ()
    """Collections of the same modality kept out of training and evaluated whole (external validation)."""

    def on_external(self) -> Task:
        """The task as evaluated on its external collections."""
        return replace(self, collections=self.external, external=())

    def applicable(self, collection: str) -> tuple[bool, str]:
        """Whether a collection can have this task's figures, and why not when it cannot."""
        if collection not in self.collections:
            return False, f"{collection} is not part of {self.name}"
        if "normal" in self.label_map and collection in NO_NORMALS:
            return False, NO_NORMALS[collection]
        return True, ""


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task(
            "mammo_normal_vs_abnormal",
            "mammography",
            ("mias", "ddsm"),
            ("normal", "abnormal"),
            "abnormal",
            {"normal": 0, "benign": 1, "malignant": 1},
        ),
        Task(
            "mammo_benign_vs_malignant",
            "mammography",
            MAMMOGRAPHY,
            ("benign", "malignant"),
            "malignant",
            {"benign": 0, "malignant": 1},
        ),
        Task(
            "mammo_benign_vs_malignant_external",
            "mammography",
            ("ddsm", "cbis_ddsm"),
            ("benign", "malignant"),
            "malignant",
            {"benign": 0, "malignant": 1},
            # MIAS, digitised elsewhere from other films: CBIS-DDSM re-releases DDSM, so neither of those
            # two could be the external one without sharing images with the training set.
            external=("mias",),
        ),
        Task(
            "histo_benign_vs_malignant",
            "histology",
            ("breakhis",),
            ("benign", "malignant"),
            "malignant",
            {"benign": 0, "malignant": 1},
        ),
        Task(
            "paper_all",
            "any",
            ("breakhis", *MAMMOGRAPHY),
            ("normal", "benign", "malignant"),
            "malignant",
            {"normal": 0, "benign": 1, "malignant": 2},
            warning="modality alone predicts much of the label: BreaKHis, the only histology, has no normals",
        ),
    )
}
