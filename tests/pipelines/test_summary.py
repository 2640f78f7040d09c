"""The jobs' accounting: counting outcomes, balancing, the printed tables and the JSON written."""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.summary import (
    CollectionSummary,
    TileSummary,
    count_outcome,
    render_table,
    unbalanced,
    write_json,
)


def test_count_outcome_counts_each_content_once() -> None:
    summary = CollectionSummary(seen=5)
    known = {"old"}
    outcomes = [
        ("ok", "new"),  # first file of new content: ingested
        ("ok", "new"),  # same bytes again: already present
        ("ok", "old"),  # content already in the table: already present
        ("quarantined", None),
        ("ok", "other"),
    ]
    kept = [count_outcome(summary, status, image, known) for status, image in outcomes]
    assert kept == [True, False, False, False, True]
    assert (summary.ingested, summary.already_present, summary.quarantined) == (2, 2, 1)
    assert known == {"old", "new", "other"}
    assert summary.balanced()


def test_unbalanced_names_the_collections_that_do_not_add_up() -> None:
    good = CollectionSummary(seen=3, ingested=1, already_present=1, quarantined=1)
    bad = CollectionSummary(seen=3, ingested=1)
    assert not bad.balanced()
    assert unbalanced({"mias": good, "ddsm": bad}) == ["ddsm"]


def test_render_table_has_a_line_per_collection_and_a_total() -> None:
    mias = CollectionSummary(seen=4, ingested=3, quarantined=1, auxiliary=2)
    mias.labels.update(normal=2, malignant=1)
    ddsm = CollectionSummary(seen=2, already_present=2, rejected_rows=5)
    ddsm.labels.update(benign=2)
    lines = render_table({"mias": mias, "ddsm": ddsm}).splitlines()
    assert lines[0].split() == [
        "collection",
        "seen",
        "ingested",
        "already_present",
        "quarantined",
        "auxiliary",
        "rejected_rows",
        "normal",
        "benign",
        "malignant",
    ]
    assert set(lines[1]) == {"-"} and len(lines[1]) == len(lines[0]) and lines[4] == lines[1]
    assert lines[2].split() == ["mias", "4", "3", "0", "1", "2", "0", "2", "0", "1"]
    assert lines[3].split() == ["ddsm", "2", "0", "2", "0", "0", "5", "0", "2", "0"]
    assert lines[5].split() == ["total", "6", "3", "2", "1", "2", "5", "2", "2", "1"]
    assert len(lines) == 6


def test_write_json_writes_every_count_and_the_extra_keys(tmp_path: Path) -> None:
    mias = CollectionSummary(seen=1, ingested=1)
    mias.labels["benign"] = 1
    path = tmp_path / "new" / "summary.json"
    write_json(path, {"mias": mias}, scored=7)
    payload = json.loads(path.read_text())
    assert payload == {
        "collections": {
            "mias": {
                "seen": 1,
                "ingested": 1,
                "already_present": 0,
                "quarantined": 0,
                "erased": 0,
                "auxiliary": 0,
                "rejected_rows": 0,
                "labels": {"normal": 0, "benign": 1, "malignant": 0},
                "split_strategy": "patient",
                "moved_to_test": 0,
            }
        },
        "scored": 7,
    }


def test_tile_summary_renders_rows_and_nests_them_by_collection_split_and_label() -> None:
    summary = TileSummary(
        [("ddsm", "test", "(none)", 4), ("mias", "train", "benign", 2), ("mias", "train", "normal", 30)]
    )
    lines = summary.render().splitlines()
    assert lines[0].split() == ["collection", "split", "label", "tiles"]
    assert [line.split() for line in lines[1:]] == [
        ["ddsm", "test", "(none)", "4"],
        ["mias", "train", "benign", "2"],
        ["mias", "train", "normal", "30"],
    ]
    assert summary.as_dict() == {
        "tiles": {"ddsm": {"test": {"(none)": 4}}, "mias": {"train": {"benign": 2, "normal": 30}}}
    }
