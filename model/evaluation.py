"""Honest figures for one model on one split: tile, image and patient level, per collection and overall.

The tiles of a split are read from the pinned files of the tiles table (the version the model's lineage
names), scored in batches (only ids and probabilities are kept), and aggregated to images and patients by the
model version's :class:`core.aggregation.AggregationRule`, the rule scoring uses. Every level gets the paper's
confusion figures at the model's recorded threshold and an AUC with a patient-bootstrap 95% interval; a
collection that cannot have a figure (no normals for normal-vs-abnormal, one class only) says why instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from core.aggregation import AggregationRule, aggregate
from core.tasks import BY_PATIENT, SplitRule, Task
from model.metrics import auc_with_interval, confusion

LEVELS = ("tile", "image", "patient")
LESION_PATCH = "lesion_patch"  # the label_source of training patches (pipelines.tiling.lesion_patches)
ID_COLUMNS = [
    "tile_id",
    "image_id",
    "patient_key",
    "modality",
    "collection",
    "split",
    "label",
    "label_source",
    "label_origin",
    "image_label",
]
Predict = Callable[[list[bytes]], np.ndarray]


def split_batches(
    files: Sequence[str], task: Task, split: str | None, rule: SplitRule = BY_PATIENT, batch_rows: int = 256
) -> Iterator[pd.DataFrame]:
    """The split's tiles of the task's collections (every split when ``split`` is None, for external
    collections), ``batch_rows`` at a time, pixels included.

    The rows are the task's (:meth:`core.tasks.Task.row_terms`) but for the label terms: every tile of
    an image counts (normal tissue and unlabelled ones too), since image-level scores must see what bulk
    scoring sees, where no label says which tiles matter; lesion-centred training patches are left out.
    """
    import pyarrow.dataset as ds

    dataset = ds.dataset([f.removeprefix("file:") for f in files], format="parquet")
    wanted = ds.scalar(True)
    for column, values in task.row_terms():
        if column not in ("label", "label_source"):
            wanted = wanted & ds.field(column).isin(list(values))
    # Lesion-centred patches are training rows only: figures see the grid, as bulk scoring does.
    wanted = wanted & (ds.field("label_source") != LESION_PATCH)
    if rule.by == "patient" and split is not None:
        wanted = wanted & (ds.field("split") == split)
    for batch in dataset.to_batches(columns=[*ID_COLUMNS, "pixels"], filter=wanted, batch_size=batch_rows):
        frame = batch.to_pandas()
        if split is not None:
            frame = frame[rule.of(frame) == split]
        if len(frame):
            yield frame


def score_split(
    files: Sequence[str], task: Task, split: str | None, predict: Predict, rule: SplitRule = BY_PATIENT
) -> pd.DataFrame:
    """Tile ids with ``p_<class>`` for every tile of the split (pixels are dropped after scoring)."""
    parts = []
    for batch in split_batches(files, task, split, rule):
        probabilities = predict(list(batch["pixels"]))
        scored = batch[ID_COLUMNS].copy()
        for index, name in enumerate(task.classes):
            scored[f"p_{name}"] = probabilities[:, index]
        parts.append(scored)
    columns = [*ID_COLUMNS, *(f"p_{c}" for c in task.classes)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)


def _positive_target(labels: pd.Series, task: Task) -> pd.Series:
    positive = task.classes.index(task.positive)
    return labels.map(task.label_map).eq(positive).astype(int)


def level_frames(tiles: pd.DataFrame, task: Task, rule: AggregationRule) -> dict[str, pd.DataFrame]:
    """Per level, rows with ``collection``, ``patient_key``, ``target`` (1 = positive class) and ``score``.

    Tiles: the task's rows (:meth:`core.tasks.Task.rows_of`: labelled with a label it knows). Images:
    all tiles aggregated by ``rule``; the image label decides the target (images whose label the task
    does not know are left out). Patients: images aggregated by ``rule`` within a collection (patients
    are keyed per collection).
    """
    score = f"p_{task.positive}"
    labelled = tiles[task.rows_of(tiles)]
    tile_rows = labelled.assign(target=_positive_target(labelled["label"], task), score=labelled[score])
    images = rule.images(tiles, task.classes, task.positive)
    meta = tiles.drop_duplicates("image_id").set_index("image_id")
    images = images.join(meta[["collection", "patient_key", "image_label"]], on="image_id")
    images = images[images["image_label"].isin(list(task.image_labels))]
    images = images.assign(target=_positive_target(images["image_label"], task), score=images[score])
    keyed = images.assign(patient=images["collection"] + "/" + images["patient_key"])
    patients = aggregate(keyed, "patient", task.classes, task.positive, rule.patient_top_k, rule.patient_rule)
    truth = keyed.groupby("patient").agg(target=("target", "max"), collection=("collection", "first"))
    patients = patients.join(truth, on="patient")
    patients = patients.assign(patient_key=patients["patient"], score=patients[score])
    columns = ["collection", "patient_key", "target", "score"]
    return {
        "tile": tile_rows[["tile_id", *columns]],
        "image": images[["image_id", *columns]],
        "patient": patients[["patient", *columns]],
    }


@dataclass(frozen=True)
class Figure:
    """One row of an evaluation table; ``note`` says why a figure is missing."""

    level: str
    collection: str
    values: dict[str, Any]
    note: str = ""


def _figures(rows: pd.DataFrame, threshold: float, rounds: int, seed: int) -> dict[str, Any]:
    targets, scores = rows["target"].to_numpy(), rows["score"].to_numpy()
    values = confusion(targets, scores >= threshold)
    values.update(auc_with_interval(targets, scores, rows["patient_key"].to_numpy(), rounds, seed))
    # Patients per class behind the figure (at tile and image level a patient with rows of both classes
    # counts in both).
    values["patients_positive"] = int(rows.loc[rows["target"] == 1, "patient_key"].nunique())
    values["patients_negative"] = int(rows.loc[rows["target"] != 1, "patient_key"].nunique())
    return values


def figures(
    levels: dict[str, pd.DataFrame], task: Task, threshold: float, rounds: int = 1000, seed: int = 0
) -> list[Figure]:
    """The evaluation tables: per level, every collection of the task and ``all``."""
    table = []
    for level in LEVELS:
        rows = levels[level]
        for collection in [*task.collections, "all"]:
            subset = rows if collection == "all" else rows[rows["collection"] == collection]
            if collection != "all":
                applicable, reason = task.applicable(collection)
                if not applicable:
                    table.append(Figure(level, collection, {}, f"not applicable: {reason}"))
                    continue
            if subset.empty:
                table.append(Figure(level, collection, {}, "no rows in this split"))
                continue
            values = _figures(subset, threshold, rounds, seed)
            note = ""
            if math.isnan(values["auc"]):
                present = task.positive if subset["target"].all() else f"not {task.positive}"
                note = f"AUC undefined: only {present} cases in this split"
            table.append(Figure(level, collection, values, note))
    return table


def subgroup_figures(
    images: pd.DataFrame, attributes: pd.DataFrame, threshold: float, rounds: int = 200
) -> list[Figure]:
    """Image-level figures per value of each subgroup attribute the images have (digitizer, density, …).

    Args:
        images: the image level of :func:`level_frames`.
        attributes: ``image_id`` and one column per subgroup (null where an image has none).
        threshold: the model's threshold.
        rounds: bootstrap rounds (fewer than the main table: subgroups are many and small).
    """
    joined = images.merge(attributes, on="image_id", how="left")
    table = []
    for column in [c for c in attributes.columns if c != "image_id"]:
        for value, subset in joined.dropna(subset=[column]).groupby(column, sort=True):
            values = _figures(subset, threshold, rounds, seed=0)
            note = "AUC undefined: one class only" if math.isnan(values["auc"]) else ""
            table.append(Figure("image", f"{column}={value}", values, note))
    return table


def figures_frame(table: Sequence[Figure]) -> pd.DataFrame:
    """The figures as one flat frame (for CSV, MLflow and the report)."""
    return pd.DataFrame(
        [{"level": f.level, "collection": f.collection, **f.values, "note": f.note} for f in table]
    )


# Published figures a reader compares this run's with, each with the split that produced it (Table 5 of
# the paper this project started from put its own figure beside others without saying which split each
# came from). ``tasks``: the tasks a row compares with.
PUBLISHED = (
    {
        "source": "the paper this project started from (claimed)",
        "data": "BreaKHis + mammography collections, one model",
        "split": "image-level random 60/40 (leaky: one patient's images on both sides)",
        "figure": "accuracy 0.999",
        "tasks": ("histo_benign_vs_malignant", "mammo_benign_vs_malignant", "mammo_normal_vs_abnormal"),
    },
    {
        "source": "published CNNs on BreaKHis (e.g. Spanhol et al., IJCNN 2016)",
        "data": "BreaKHis",
        "split": "patient-level",
        "figure": "patient-level accuracy about 0.85-0.93",
        "tasks": ("histo_benign_vs_malignant",),
    },
    {
        "source": "published whole-image classifiers on CBIS-DDSM (e.g. Shen et al., Sci. Rep. 2019)",
        "data": "CBIS-DDSM",
        "split": "official (the collection's own train/test division)",
        "figure": "whole-image AUC 0.69-0.88",
        "tasks": ("mammo_benign_vs_malignant", "mammo_benign_vs_malignant_external"),
    },
)


def comparison_frame(task: Task, table: pd.DataFrame, split_kind: str) -> pd.DataFrame:
    """This run's image- and patient-level figures beside the published ones that compare with the task.

    Args:
        table: the run's figures (:func:`figures_frame`).
        split_kind: how this run's test split was drawn (e.g. ``patient-level (strategy patient)``).
    """
    rows: list[dict[str, Any]] = []
    overall = table[table["collection"] == "all"].set_index("level")
    for level in ("image", "patient"):
        if level not in overall.index:
            continue
        row = overall.loc[level]
        auc, low, high = (float(row.get(k, math.nan)) for k in ("auc", "auc_low", "auc_high"))
        figure = "AUC undefined" if math.isnan(auc) else f"{level}-level AUC {auc:.3f} ({low:.3f}-{high:.3f})"
        accuracy = float(row.get("accuracy", math.nan))
        if not math.isnan(accuracy):
            figure += f", accuracy {accuracy:.3f}"
        positive, negative = row.get("patients_positive", math.nan), row.get("patients_negative", math.nan)
        patients = "" if pd.isna(positive) else f"{int(positive)} {task.positive} / {int(negative)} other"
        rows.append(
            {
                "source": "this run (synthetic corpus)",
                "data": ", ".join(task.collections),
                "split": split_kind,
                "figure": figure,
                "patients": patients,
            }
        )
    for published in PUBLISHED:
        if task.name in published["tasks"]:
            rows.append({**{k: v for k, v in published.items() if k != "tasks"}, "patients": ""})
    return pd.DataFrame(rows, columns=["source", "data", "split", "figure", "patients"])
