"""What each model predicts, from which collections, and which figures a collection cannot have.

Histology and mammography are different modalities, so by default each gets its own models. The
paper's single model over all four collections is kept as ``paper_all`` to reproduce it, with the
warning that the modality alone then predicts much of the label.

Which tile rows belong to a task is defined once (:meth:`Task.row_terms`) and rendered in the two forms
that read tiles: Spark SQL (:meth:`Task.sql_condition`, for the driver's plans and Delta file pruning)
and a pandas mask (:meth:`Task.rows_of`, inside training readers and evaluation). The split a row belongs
to is :class:`SplitRule`'s, in the same two forms.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import pandas as pd

MAMMOGRAPHY = ("mias", "ddsm", "cbis_ddsm")
ORIGIN = "label_origin"
"""The tiles column that says where a tile's label came from: ``<collection>:collection`` (the
collection's own findings) or ``<collection>:consensus:<annotations version>`` (expert consensus)."""
COLLECTION_LABELS = "collection"


def label_origin(collection: str, labels: str = COLLECTION_LABELS) -> str:
    """A tile's ``label_origin`` value."""
    return f"{collection}:{labels}"


# Tile label sources of a task with a tissue label (docs/tables.md): its lesions, their training patches,
# and the normal tissue of the same abnormal images.
TISSUE_SOURCES = ("finding", "lesion_patch", "normal_tissue")
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
    tissue_label: str | None = None
    """A tile label (in ``label_map``) that trains as its class but never names an image: the normal
    tissue of abnormal images, for a task whose images are all abnormal. Benign vs malignant scores an
    image from every tile of it (as bulk scoring must), so its tiles learn that normal tissue is "no
    malignancy here" instead of leaving what they say of it to chance. Normal images stay out."""

    origins: tuple[str, ...] = ()
    """Allowed ``label_origin`` values of its tiles (:func:`label_origin`): which labels each collection
    trains on. Empty: every collection's own labels (``<collection>:collection``); :meth:`with_labels`
    sets consensus labels for some."""

    def row_terms(self) -> list[tuple[str, tuple[str, ...]]]:
        """The one definition of the task's rows: ``(column, allowed values)`` terms that must all hold."""
        terms = [
            ("collection", self.collections),
            ("label", tuple(self.label_map)),
            (ORIGIN, self.allowed_origins()),
        ]
        if self.tissue_label is not None:  # the tissue of abnormal images, not normal images' tiles
            terms.append(("label_source", TISSUE_SOURCES))
        return terms if self.modality == "any" else [("modality", (self.modality,)), *terms]

    @property
    def image_labels(self) -> tuple[str, ...]:
        """The image labels the task classifies (image- and patient-level figures read these images)."""
        return tuple(label for label in self.label_map if label != self.tissue_label)

    def sql_condition(self) -> str:
        """The task's rows as a Spark SQL condition over the tiles table."""
        parts = []
        for column, values in self.row_terms():
            quoted = ", ".join(f"'{v}'" for v in values)
            parts.append(
                f"{column} = {quoted}"
                if len(values) == 1 and column == "modality"
                else f"{column} IN ({quoted})"
            )
        return " AND ".join(parts)

    def rows_of(self, frame: pd.DataFrame) -> np.ndarray:
        """The task's rows of a pandas frame of tiles, as a boolean mask (the same rows as the SQL form).

        A frame without ``label_origin`` (tiles cut before it existed, or columns read for another
        purpose) holds collection-labelled tiles.
        """
        keep = np.ones(len(frame), dtype=bool)
        for column, values in self.row_terms():
            if column == ORIGIN and column not in frame:
                keep &= (frame["collection"] + ":" + COLLECTION_LABELS).isin(list(values)).to_numpy()
                continue
            keep &= frame[column].isin(list(values)).to_numpy()
        return keep

    def with_labels(self, labels: Mapping[str, str]) -> Task:
        """The task trained on the labels ``labels`` names per collection: ``collection`` (its own) or
        ``consensus:<annotations version>``; a collection named here but not in the task (``landing``:
        landed images with consensus labels) joins it. Collections left out keep their own labels."""
        collections = (*self.collections, *(c for c in labels if c not in self.collections))
        origins = tuple(label_origin(c, labels.get(c, COLLECTION_LABELS)) for c in collections)
        return replace(self, collections=collections, origins=origins)

    def label_sources(self) -> dict[str, str]:
        """Collection -> the labels its rows use (``collection`` or ``consensus:<version>``)."""
        pairs = (origin.split(":", 1) for origin in self.allowed_origins())
        return {collection: labels for collection, labels in pairs}

    def allowed_origins(self) -> tuple[str, ...]:
        """The ``label_origin`` values of its rows."""
        return self.origins or tuple(label_origin(c) for c in self.collections)

    def on_external(self) -> Task:
        """The task as evaluated on its external collections."""
        return replace(self, collections=self.external, external=(), origins=())

    def applicable(self, collection: str) -> tuple[bool, str]:
        """Whether a collection can have this task's figures, and why not when it cannot."""
        if collection not in self.collections:
            return False, f"{collection} is not part of {self.name}"
        if "normal" in self.image_labels and collection in NO_NORMALS:
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
            {"benign": 0, "malignant": 1, "normal": 0},
            tissue_label="normal",
        ),
        Task(
            "mammo_benign_vs_malignant_external",
            "mammography",
            ("ddsm", "cbis_ddsm"),
            ("benign", "malignant"),
            "malignant",
            {"benign": 0, "malignant": 1, "normal": 0},
            tissue_label="normal",
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


@dataclass(frozen=True)
class SplitRule:
    """Which split a tile belongs to: the stored split (by patient, always, for real models), or, for the
    leakage audit only, a random split by image (what the paper did), drawn from the image's content hash
    so Spark and pandas agree on it without a table of their own.
    """

    by: Literal["patient", "image"] = "patient"
    train: float = 0.6
    val: float = 0.2

    def of(self, frame: pd.DataFrame) -> pd.Series:
        """The split of each row of ``frame`` (columns ``split`` and ``image_id``)."""
        if self.by == "patient":
            return frame["split"]
        u = frame["image_id"].str[:8].map(lambda h: int(h, 16)).to_numpy() / 2**32
        named = np.where(u < self.train, "train", np.where(u < self.train + self.val, "val", "test"))
        return pd.Series(named, index=frame.index)

    def sql(self) -> str:
        """The same, as a Spark SQL expression."""
        if self.by == "patient":
            return "split"
        u = "CAST(conv(substring(image_id, 1, 8), 16, 10) AS DOUBLE) / 4294967296"
        return (
            f"CASE WHEN {u} < {self.train!r} THEN 'train' "
            f"WHEN {u} < {self.train + self.val!r} THEN 'val' ELSE 'test' END"
        )


BY_PATIENT = SplitRule()
