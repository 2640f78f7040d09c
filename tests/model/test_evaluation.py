"""Which tiles evaluation reads, and how it builds tile, image and patient levels by the version's rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.aggregation import AggregationRule
from core.tasks import TASKS, SplitRule
from model.evaluation import ID_COLUMNS, comparison_frame, level_frames, score_split

TASK = TASKS["histo_benign_vs_malignant"]
I1, I2, I3 = "1" * 32, "e" * 32, "5" * 32  # content-hash ids; by image, I1 is train, I2 test, I3 train


def _tile(tile: str, image: str, patient: str, label: str | None, image_label: str, **more: str) -> dict:
    row = {"tile_id": tile, "image_id": image, "patient_key": patient, "modality": "histology"}
    row |= {"collection": "breakhis", "split": "test", "label": label, "image_label": image_label}
    row = {"label_source": "whole_image"} | row | more
    return {"label_origin": f"{row['collection']}:collection"} | row


def _write(rows: list[dict], path: Path) -> str:
    frame = pd.DataFrame(rows, columns=ID_COLUMNS).assign(pixels=[b"png"] * len(rows))
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    return f"file:{path}"


def test_evaluation_reads_every_tile_of_the_tasks_images_in_the_split(tmp_path: Path) -> None:
    rows = [
        _tile("t1", I1, "p1", "malignant", "malignant"),
        _tile("t2", I1, "p1", None, "malignant"),  # unlabelled tissue of the same image: it counts
        _tile("t3", I2, "p2", "benign", "benign", split="val"),  # another split
        _tile("t4", I3, "p3", "benign", "benign", collection="mias", modality="mammography"),
        _tile("t5", I1, "p1", "malignant", "malignant", label_source="lesion_patch"),  # a training patch
        # The same image's tile labelled by an expert consensus: evaluation keeps the collection's own.
        _tile("t6", I1, "p1", "benign", "benign", label_origin="breakhis:consensus:3"),
    ]
    files = [_write(rows, tmp_path / "tiles.parquet")]
    seen: list[int] = []

    def predict(pixels: list[bytes]) -> np.ndarray:
        seen.append(len(pixels))
        return np.tile([0.25, 0.75], (len(pixels), 1))

    scored = score_split(files, TASK, "test", predict)
    assert list(scored["tile_id"]) == ["t1", "t2"] and sum(seen) == 2  # never a lesion patch
    assert list(scored.columns) == [*ID_COLUMNS, "p_benign", "p_malignant"]
    assert set(score_split(files, TASK, None, predict)["tile_id"]) == {"t1", "t2", "t3"}  # every split
    by_image = score_split(files, TASK, "train", predict, SplitRule("image"))  # split from the image id
    assert set(by_image["image_id"]) == {I1}  # I1's id puts it in train, I2's in test


def test_levels_aggregate_by_the_rule_of_the_version() -> None:
    p = [0.9, 0.8, 0.1, 0.0, 0.3, 0.6]
    tiles = pd.DataFrame(
        [
            _tile("a1", "a", "p1", "malignant", "malignant"),
            _tile("a2", "a", "p1", "malignant", "malignant"),
            _tile("a3", "a", "p1", None, "malignant"),
            _tile("a4", "a", "p1", "benign", "malignant"),
            _tile("b1", "b", "p1", "benign", "benign"),
            _tile("c1", "c", "p2", "normal", "normal"),  # a label the task does not know
        ]
    ).assign(p_malignant=p, p_benign=[1 - v for v in p])
    levels = level_frames(tiles, TASK, AggregationRule("top_k_mean", image_top_k=2, patient_top_k=1))
    assert list(levels["tile"]["tile_id"]) == ["a1", "a2", "a4", "b1"]
    images = levels["image"].set_index("image_id")
    assert list(images.index) == ["a", "b"]  # c's image label is not the task's
    assert images.loc["a", "score"] == pytest.approx(0.85) and images.loc["a", "target"] == 1
    patients = levels["patient"].set_index("patient")
    assert patients.loc["breakhis/p1", "score"] == pytest.approx(0.85)  # its most suspicious image
    assert patients.loc["breakhis/p1", "target"] == 1

    every = level_frames(tiles, TASK, AggregationRule("top_k_mean", image_top_k=4, patient_top_k=2))
    images = every["image"].set_index("image_id")
    assert images.loc["a", "score"] == pytest.approx(0.45)  # mean of all four tiles
    assert every["patient"].set_index("patient").loc["breakhis/p1", "score"] == pytest.approx(
        (0.45 + 0.3) / 2
    )


def test_the_report_compares_with_published_figures_of_the_same_kind() -> None:
    table = pd.DataFrame(
        [
            {
                "level": "image",
                "collection": "all",
                "auc": 0.91,
                "auc_low": 0.8,
                "auc_high": 0.97,
                "accuracy": 0.88,
                "patients_positive": 12,
                "patients_negative": 14,
            },
            {
                "level": "patient",
                "collection": "all",
                "auc": float("nan"),
                "auc_low": float("nan"),
                "auc_high": float("nan"),
                "accuracy": float("nan"),
                "patients_positive": 0,
                "patients_negative": 3,
            },
        ]
    )
    frame = comparison_frame(TASK, table, "patient-level")
    ours = frame[frame["source"].str.startswith("this run")]
    assert list(ours["figure"]) == ["image-level AUC 0.910 (0.800-0.970), accuracy 0.880", "AUC undefined"]
    assert list(ours["patients"]) == ["12 malignant / 14 other", "0 malignant / 3 other"]
    theirs = frame[~frame["source"].str.startswith("this run")]
    assert any("image-level random" in split for split in theirs["split"])  # the paper's, marked leaky
    assert any(split == "patient-level" for split in theirs["split"])  # BreaKHis, patient-level
    assert not any("CBIS-DDSM" in data for data in theirs["data"])  # not a histology figure
    mammography = comparison_frame(TASKS["mammo_benign_vs_malignant"], table, "patient-level")
    assert any(split.startswith("official") for split in mammography["split"])


def test_the_split_kind_names_the_collections_split_by_their_own_division() -> None:
    from model.registry_evaluation import split_kind
    from model.training.common import TaskData

    data = TaskData("tiles", 0, "", {}, (), (), ())
    strategies = pd.DataFrame(
        {
            "collection": ["mias", "cbis_ddsm", "cbis_ddsm"],
            "split_strategy": ["patient", "official", "official"],
        }
    )
    assert split_kind(data) == "patient-level (groups of linked patients never span splits)"
    assert split_kind(data, strategies).endswith(
        "; cbis_ddsm: official (the collection's own test set, whole groups kept)"
    )
    assert split_kind(data, strategies[strategies["collection"] == "mias"]) == split_kind(data)
    assert split_kind(TaskData("tiles", 0, "", {}, (), (), (), SplitRule("image")), strategies).startswith(
        "image-level"
    )


def test_report_tables_print_counts_as_integers_and_patients_per_class() -> None:
    from model.report import _markdown_table

    table = pd.DataFrame(
        [
            {"level": "image", "collection": "mias", "note": "no rows in this split"},
            {
                "level": "image",
                "collection": "all",
                "n": 339,
                "patients": 40,
                "TP": 5,
                "TN": 300,
                "FP": 30,
                "FN": 4,
                "accuracy": 0.9,
                "auc": 0.8,
                "auc_low": 0.7,
                "auc_high": 0.9,
                "patients_positive": 9,
                "patients_negative": 31,
            },
        ]
    )  # the empty row makes pandas store every count as a float
    markdown = _markdown_table(table)
    assert "339.000" not in markdown and "| 339 | 40 | 5 | 300 | 30 | 4 | 0.900 |" in markdown
    assert "0.800 (0.700–0.900) | 9/31 |" in markdown and "| — | no rows in this split |" in markdown
