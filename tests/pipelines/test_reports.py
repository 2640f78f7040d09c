"""Expert reports in (JSON Lines, CSV, Label Studio) and consensus out, on the session corpus's crowd.

The session corpus (``conftest.corpus``) is written with a synthetic crowd's reports beside it
(``reports/``, ``reports.json``: readers, planted bad reports, the truth). The tests that write copy the
session lakehouse's ``images`` and ``annotations`` tables into a lakehouse of their own (a Delta table is
its folder), so the shared tables stay read-only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pipelines.crowd import build_consensus
from pipelines.io import current_version, read_table
from pipelines.normalise import Transform, transform_geometry
from pipelines.pseudonym import DEMO_SECRET
from pipelines.reports import (
    FileError,
    ReportError,
    csv_rows,
    ingest_reports,
    jsonl_rows,
    label_studio_rows,
    normalise_report,
    parse_file,
    place_mark,
)
from pipelines.sources.base import Geometry

GOOD = {"reporter": "dr-a", "image_id": "a" * 32, "label": "Malignant ", "reported_at": "2026-03-01T10:00:00"}


def _reason(raw: dict) -> str:
    with pytest.raises(ReportError) as caught:
        normalise_report(raw, DEMO_SECRET, keep_text=False)
    return str(caught.value)


def test_a_report_is_made_canonical_and_its_reporter_pseudonymous() -> None:
    row = normalise_report(
        {**GOOD, "birads": "4a", "density": "3", "text": "Mrs X, born 1950"}, DEMO_SECRET, False
    )
    assert row["label"] == "malignant" and row["ref_image_id"] == "a" * 32 and row["ref_source_key"] is None
    assert row["birads"] == "4A" and row["density"] == "C"
    assert row["reporter"] != "dr-a" and len(row["reporter"]) == 20
    assert row["text"] is None  # dropped unless privacy.keep_report_text
    assert row["report_id"].startswith("sha256:")  # no id given: the content hash
    assert row["reported_at"].tzinfo is not None
    kept = normalise_report({**GOOD, "text": "note", "report_id": " r-1 "}, DEMO_SECRET, True)
    assert kept["text"] == "note" and kept["report_id"] == "r-1"
    by_path = normalise_report(
        {**{k: v for k, v in GOOD.items() if k != "image_id"}, "collection": "MIAS", "path": "./mdb001.pgm"},
        DEMO_SECRET,
        False,
    )
    from pipelines.pseudonym import path_key

    assert by_path["ref_source_key"] == path_key("mias", "mdb001.pgm")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"label": "suspicious"}, "unknown label"),
        ({"label": "N/A"}, "no label"),
        ({"reporter": " "}, "no reporter"),
        ({"reported_at": "last Tuesday"}, "not an ISO 8601 time"),
        ({"image_id": "not-hex"}, "not a content hash"),
        ({"image_id": None}, "no image"),
        ({"birads": "7"}, "not a BI-RADS assessment"),
        ({"density": "E"}, "not a BI-RADS density"),
        ({"marks": "[{"}, "not JSON"),
        ({"marks": [{"kind": "polygon", "points": [[1, 1], [2, 2]]}]}, "at least 3 points"),
        ({"marks": [{"kind": "circle", "x": 1, "y": 1, "radius": -2}]}, "radius must be positive"),
        ({"marks": [{"kind": "circle", "x": "left", "y": 1, "radius": 2}]}, "not a number"),
        ({"marks": [{"kind": "star"}]}, "unknown kind"),
        ({"marks": [{"kind": "box", "x0": 5, "y0": 5, "x1": 1, "y1": 9}]}, "x1 > x0"),
    ],
)
def test_each_bad_field_is_refused_with_its_reason(change: dict, expected: str) -> None:
    assert expected in _reason({**GOOD, **change})


def test_csv_with_bom_quoted_newlines_na_cells_and_a_long_row() -> None:
    text = (
        "\ufeffReporter , Image_ID,label,reported_at,Marks,text\r\n"
        f"dr-a,{'b' * 32},benign,2026-01-01,"
        '"[{""kind"": ""circle"", ""x"": 5, ""y"": 6, ""radius"": 2}]","two\nlines"\r\n'
        "\r\n"
        f"dr-b,{'c' * 32},NA,2026-01-02,,\r\n"
        f"dr-c,{'d' * 32},normal,2026-01-03,,,extra\r\n"
    )
    rows = list(csv_rows(text.encode().decode("utf-8-sig")))
    assert [line for line, _ in rows] == [2, 5, 6]  # the quoted newline makes row 1 two lines
    assert rows[0][1]["text"] == "two\nlines" and json.loads(rows[0][1]["marks"])[0]["radius"] == 2
    assert "__error__" in rows[2][1]
    with pytest.raises(FileError, match="lacks label"):
        list(csv_rows("reporter,image_id,reported_at\n"))


def test_a_jsonl_line_that_does_not_parse_fails_the_file_with_its_line() -> None:
    with pytest.raises(FileError) as caught:
        list(jsonl_rows('{"a": 1}\n\n{"b": \n'))
    assert caught.value.line == 3
    rows = parse_file(Path("/nowhere"), "batch.jsonl", b'{"a": 1}\n{"b": \n', DEMO_SECRET, False)
    assert len(rows) == 1 and rows[0]["status"] == "quarantined" and "line 2" in rows[0]["reason"]
    empty = parse_file(Path("/nowhere"), "empty.csv", b"", DEMO_SECRET, False)
    assert "empty file" in empty[0]["reason"]
    latin = parse_file(Path("/nowhere"), "old.csv", "reporter\nJos\xe9".encode("latin-1"), DEMO_SECRET, False)
    assert "line 2 is not UTF-8" in latin[0]["reason"]
    other = parse_file(Path("/nowhere"), "notes.txt", b"hello", DEMO_SECRET, False)
    assert "not a reports file" in other[0]["reason"]


def test_marks_follow_the_image_transform_as_collection_geometry_does() -> None:
    transform = Transform(
        flipped=True, top=10, left=20, bottom=210, right=120, scale=2.0, height=400, width=200
    )
    image = {
        "original_height": 240,
        "original_width": 150,
        "height": 400,
        "width": 200,
        **{f"t_{k}": v for k, v in transform.to_dict().items()},
    }
    circle = place_mark({"kind": "circle", "x": 50.0, "y": 60.0, "radius": 5.0}, "original", image)
    expected = transform_geometry(Geometry(kind="circle", x=50.0, y=60.0, radius=5.0), transform, 150)
    assert (circle.x, circle.y, circle.radius) == (expected.x, expected.y, expected.radius)
    box = place_mark(
        {"kind": "box", "x0": 40.0, "y0": 50.0, "x1": 60.0, "y1": 70.0, "rotation": 0.0}, "original", image
    )
    assert box.kind == "outline" and len(box.points) == 4
    with pytest.raises(ReportError, match="outside the image"):
        place_mark({"kind": "circle", "x": 151.0, "y": 60.0, "radius": 5.0}, "original", image)
    # Label Studio: percent of the normalised image, a rectangle turned 90 degrees about its corner.
    turned = place_mark(
        {"kind": "box", "x0": 50.0, "y0": 50.0, "x1": 60.0, "y1": 55.0, "rotation": 90.0}, "percent", image
    )
    (x0, y0), (x1, y1) = turned.points[0], turned.points[1]
    assert (round(x0, 6), round(y0, 6)) == (99.5, 199.5)
    assert math.isclose(x1, 99.5, abs_tol=1e-6) and math.isclose(y1, 219.5)  # 10 % of 200 wide, now downwards


def test_label_studio_export_maps_choices_regions_and_users() -> None:
    export = [
        {
            "id": 7,
            "data": {"image": "/data/upload/x.png", "image_id": "e" * 32},
            "annotations": [
                {
                    "id": 11,
                    "completed_by": {"id": 2, "email": "reader@site.example"},
                    "updated_at": "2026-05-01T09:00:00.123Z",
                    "result": [
                        {"type": "choices", "from_name": "label", "value": {"choices": ["Malignant"]}},
                        {"type": "choices", "from_name": "birads", "value": {"choices": ["4"]}},
                        {
                            "type": "rectanglelabels",
                            "from_name": "lesion",
                            "original_width": 200,
                            "original_height": 400,
                            "value": {"x": 10, "y": 20, "width": 5, "height": 5, "rotation": 0},
                        },
                        {
                            "type": "ellipselabels",
                            "value": {"x": 50, "y": 50, "radiusX": 4, "radiusY": 2, "rotation": 30},
                        },
                        {"type": "polygonlabels", "value": {"points": [[1, 1], [5, 1], [5, 5]]}},
                    ],
                },
                {"id": 12, "was_cancelled": True, "completed_by": 3, "result": []},
            ],
        }
    ]
    rows = list(label_studio_rows(json.dumps(export)))
    assert len(rows) == 1
    number, row = rows[0]
    assert number == 1 and row["label"] == "Malignant" and row["birads"] == "4"
    assert row["reporter"] == "reader@site.example" and row["report_id"].startswith("label-studio:7:11:")
    assert [m["kind"] for m in row["marks"]] == ["box", "ellipse", "polygon"]
    canonical = normalise_report(row, DEMO_SECRET, False, "percent")
    assert canonical["space"] == "percent" and canonical["label"] == "malignant"


def test_every_report_is_ingested_already_present_or_quarantined(spark: SparkSession, crowd) -> None:
    manifest, summary = crowd.manifest, crowd.first
    planted = manifest["planted"]
    good = manifest["reports"] + crowd.landing_reports
    assert summary.balanced()
    assert summary.quarantined == len(planted), summary
    assert summary.ingested + summary.already_present == good
    assert summary.ingested >= good - 2  # identical reports without an id share a hash
    quarantine = read_table(spark, crowd.settings.lakehouse.table("quarantine")).where(
        "collection = 'reports'"
    )
    reasons = [r["reason"] for r in quarantine.collect()]
    assert len(reasons) == len(planted)
    for needle in (
        "unknown image",
        "unknown label",
        "not a class of histology",
        "at least 3 points",
        "outside the image",
        "ISO 8601",
        "no reporter",
        "does not parse as JSON",
        "header lacks label",
        "not a reports file",
    ):
        assert any(needle in reason for reason in reasons), (needle, reasons)


def test_expert_rows_are_pseudonymous_textless_and_never_tile_labels(spark: SparkSession, crowd) -> None:
    annotations = read_table(spark, crowd.settings.lakehouse.table("annotations"))
    expert = annotations.where("source = 'expert'").where(F.col("report_id") != "late-1")
    assert expert.select("report_id").distinct().count() == crowd.first.ingested
    readers = {r["reader"] for r in crowd.manifest["readers"]}
    stored = {r["reporter"] for r in expert.select("reporter").distinct().collect()}
    assert stored and not stored & readers and all(len(s) == 20 for s in stored)
    assert expert.where(F.col("text").isNotNull()).count() == 0
    assert annotations.where("source = 'collection'").where(F.col("report_id").isNotNull()).count() == 0
    # Marks land near the collection's own findings: a mark's centre within the finding's radius + noise.
    circles = expert.where("geometry_kind = 'circle'").select("image_id", F.col("geometry").alias("mark"))
    own = annotations.where("source = 'collection' AND geometry_kind = 'circle'").select(
        "image_id", "geometry"
    )
    pairs = circles.join(own, "image_id").collect()
    assert pairs
    close = 0
    for row in pairs:
        mark, truth = json.loads(row["mark"]), json.loads(row["geometry"])
        close += math.hypot(mark["x"] - truth["x"], mark["y"] - truth["y"]) <= truth["radius"]
    assert close >= 0.5 * len(pairs)  # an image with two lesions pairs each mark with both


def test_consensus_tables_per_method_and_version_with_merged_marks(spark: SparkSession, crowd) -> None:
    settings, summary = crowd.settings, crowd.consensus
    assert not summary.skipped and summary.reports > 0
    consensus = read_table(spark, settings.lakehouse.table("consensus"))
    version = summary.annotations_version
    rows = consensus.where(F.col("annotations_version") == version)
    per_image = (
        rows.groupBy("image_id").agg(F.countDistinct("method").alias("m")).select("m").distinct().collect()
    )
    assert [r["m"] for r in per_image] == [2]
    for row in rows.limit(50).collect():
        assert abs(sum(row["probabilities"].values()) - 1) < 1e-6
        assert row["label"] in row["probabilities"] and 0 <= row["agreement"] <= 1
        assert row["probabilities"][row["label"]] == max(row["probabilities"].values())
    assert rows.where("modality = 'histology'").where("label = 'normal'").count() == 0
    merged = rows.where(F.size("findings") > 0).select(F.explode("findings").alias("f"))
    assert merged.where("f.readers >= 2").count() > 0  # marks of several readers became one finding
    reporters = read_table(spark, settings.lakehouse.table("reporters"))
    by_kind = {r["reader"]: r["kind"] for r in crowd.manifest["readers"]}
    assert reporters.where(F.col("annotations_version") == version).count() == 2 * len(by_kind)
    for modality, methods in summary.methods.items():
        assert set(methods) == {"majority_vote", "dawid_skene"}
        assert methods["dawid_skene"].accuracy is not None and methods["dawid_skene"].accuracy > 0.7, modality
    again = build_consensus(spark, settings, crowd.manifest["truth"])  # the same annotations version
    assert again.skipped and again.annotations_version == version
    assert read_table(spark, settings.lakehouse.table("consensus")).count() == consensus.count()


def test_rerun_adds_nothing_and_a_new_reading_is_a_new_row(
    spark: SparkSession, crowd, tmp_path: Path
) -> None:
    settings = crowd.settings
    annotations = settings.lakehouse.table("annotations")
    version = current_version(spark, annotations)
    again = ingest_reports(spark, settings, crowd.reports, DEMO_SECRET)
    first = crowd.first
    assert (again.ingested, again.quarantined) == (0, first.quarantined)
    assert again.already_present == first.ingested + first.already_present
    assert current_version(spark, annotations) == version
    image = read_table(spark, settings.lakehouse.table("images")).where("collection = 'mias'").first()
    folder = tmp_path / "later"
    folder.mkdir()
    rows = [
        {
            "report_id": "late-1",
            "reporter": "reader-01",
            "image_id": image["image_id"],
            "label": "benign",
            "reported_at": "2027-01-01T00:00:00Z",
        },
        {
            "report_id": "late-1",
            "reporter": "reader-01",
            "image_id": image["image_id"],
            "label": "malignant",
            "reported_at": "2027-01-02T00:00:00Z",
        },
    ]
    (folder / "late.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    late = ingest_reports(spark, settings, folder, DEMO_SECRET)
    assert (late.seen, late.ingested, late.already_present) == (2, 1, 1)  # one id: the first row wins
    kept = read_table(spark, annotations).where("report_id = 'late-1'").collect()
    assert [r["label"] for r in kept] == ["benign"]
