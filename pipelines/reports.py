"""Expert reports in: JSON Lines, CSV and Label Studio exports become ``annotations`` rows (``source =
'expert'``), MERGEd by report id.

The format (docs/crowd.md has the full contract). One report per JSON Lines line or CSV row:

- ``report_id``: the sender's id of the report; without one, the report's content hash;
- ``reporter``: the reader's id in the sender's system, stored only as a keyed pseudonym;
- the image, one of: ``image_id`` (the lakehouse's id, the file's SHA-256 truncated to 32 hex), ``sha256``
  (a file's full content hash: what a device or a landed file knows), or ``collection`` + ``path`` (the
  path as the collection names it, relative to its root);
- ``label``: ``normal``, ``benign`` or ``malignant`` (histology: ``benign`` or ``malignant``);
- ``birads`` (0-6, or 4A/4B/4C) and ``density`` (A-D or 1-4), optional;
- ``marks``, optional: a list of ``{"kind": "circle", "x", "y", "radius"}``, ``{"kind": "box", "x0",
  "y0", "x1", "y1"}``, ``{"kind": "ellipse", "x", "y", "rx", "ry", "rotation"}`` or ``{"kind":
  "polygon", "points": [[x, y], ...]}`` in the image's original pixels (origin top-left), mapped to
  normalised pixels with the image's stored ``transform``, as the collections' geometry is (CSV: the
  list as JSON in the ``marks`` column);
- ``reported_at``: ISO 8601 time (UTC when it has no offset);
- ``text``: dropped unless ``privacy.keep_report_text`` is on (notes carry identifiers).

Label Studio's JSON export (:func:`label_studio_rows`) maps to the same fields: a choice is the label,
rectangle / ellipse / polygon labels are marks in percentages of the image it showed (the normalised
image that ``oncolake reports export-tasks`` serves), ``completed_by`` is the reporter.

Work is split as in ingest: the driver only lists the files; the executors read and parse them
(:func:`parse_file`, pseudonymising reporters there), the rows are resolved against ``images`` and
``landing_images`` by joins on keys (never on pixels), the executors check labels and place marks
(:func:`build_report`), and the driver MERGEs ``quarantine`` and then ``annotations``. A file that does not
parse is quarantined whole with the line that failed; a row with an unknown image, an unknown label, a
malformed mark or a mark outside the image is quarantined alone. Every report seen is ingested, already
present (its report id is in the table, or came earlier in this run) or quarantined. Rows are never
updated: a reader who reports again adds a row, and consensus reads the latest per reader and image.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from functools import reduce
from pathlib import Path
from typing import Any

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from conf import Settings
from core.ids import stable_id, stable_id_sql
from core.quiet import quiet
from pipelines.decode import FINDING_TYPE, object_frame
from pipelines.ingest import QUARANTINE_SCHEMA
from pipelines.io import merge_into, read_table, table_exists
from pipelines.keycheck import verify_secret
from pipelines.normalise import Transform, transform_geometry
from pipelines.pseudonym import HIDDEN, PATH_PATTERN, path_key, pseudonymise
from pipelines.sources.base import LABELS, NOT_UTF8, Geometry, printable_path
from pipelines.sources.files import escape_reason, walk
from pipelines.summary import CollectionSummary

NAME = "reports"
"""The quarantine's collection for report files, and the summary's row."""
SOURCE = "expert"
"""``annotations.source`` of the rows written here."""
REPORTER_NAMESPACE = "reporter"
"""Reporters are pseudonymised like patients, in a namespace of their own."""
CLASSES: dict[str, tuple[str, ...]] = {
    "mammography": ("normal", "benign", "malignant"),
    "histology": ("benign", "malignant"),
}
"""The labels a report may give an image of each modality (histology has no normal class)."""
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".json": "label_studio"}
EMPTY = {"", "na", "n/a", "nan", "null", "none", "-"}
"""Cell values that mean "no value" (real exports write all of these)."""
_HEX = re.compile(r"^[0-9a-f]+$")
_BIRADS = re.compile(r"^([0-6])([abc])?$")
_DENSITY = {"a": "A", "b": "B", "c": "C", "d": "D", "1": "A", "2": "B", "3": "C", "4": "D"}
ELLIPSE_POINTS = 24
"""Vertices of the polygon an ellipse mark becomes."""

PARSED_SCHEMA = T.StructType(
    [
        T.StructField("file", T.StringType(), False),
        T.StructField("line", T.IntegerType(), True),
        T.StructField("unit", T.StringType(), False),
        T.StructField("status", T.StringType(), False),
        T.StructField("reason", T.StringType(), True),
        T.StructField("report_id", T.StringType(), True),
        T.StructField("reporter", T.StringType(), True),
        T.StructField("ref_image_id", T.StringType(), True),
        T.StructField("ref_source_key", T.StringType(), True),
        T.StructField("label", T.StringType(), True),
        T.StructField("birads", T.StringType(), True),
        T.StructField("density", T.StringType(), True),
        T.StructField("marks", T.StringType(), True),
        T.StructField("space", T.StringType(), True),
        T.StructField("reported_at", T.TimestampType(), True),
        T.StructField("text", T.StringType(), True),
        T.StructField("format", T.StringType(), False),
    ]
)
"""One row per report (or per file that did not parse): :func:`parse_file`'s output."""

BUILT_SCHEMA = T.StructType(
    [
        T.StructField("file", T.StringType(), False),
        T.StructField("line", T.IntegerType(), True),
        T.StructField("report_id", T.StringType(), True),
        T.StructField("image_id", T.StringType(), True),
        T.StructField("collection", T.StringType(), True),
        T.StructField("reporter", T.StringType(), True),
        T.StructField("label", T.StringType(), True),
        T.StructField("reported_at", T.TimestampType(), True),
        T.StructField("text", T.StringType(), True),
        T.StructField("status", T.StringType(), False),
        T.StructField("reason", T.StringType(), True),
        T.StructField("findings", T.ArrayType(FINDING_TYPE), True),
    ]
)
"""One row per report after the image is known: :func:`build_report`'s output."""


class ReportError(ValueError):
    """A report (or a whole file) that cannot be used; the message is the quarantine reason."""


@dataclasses.dataclass(frozen=True)
class FileError(Exception):
    """A reports file that does not parse: quarantined whole, with the line (or task) that failed."""

    line: int | None
    reason: str


# --- Parsing (executors) -----------------------------------------------------------------------------


def _value(raw: Any) -> Any:
    """A cell or field with its blanks and "no value" spellings turned into ``None``; text stripped."""
    if raw is None:
        return None
    if isinstance(raw, str):
        text = raw.strip()
        return None if text.lower() in EMPTY else text
    if isinstance(raw, float) and math.isnan(raw):
        return None
    return raw


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise ReportError(f"malformed mark: {what} is not a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ReportError(f"malformed mark: {what} {value!r} is not a number") from None
    if not math.isfinite(number):
        raise ReportError(f"malformed mark: {what} is not finite")
    return number


def canonical_mark(mark: Any) -> dict[str, Any]:
    """A mark checked for shape and numbers, in the canonical form :func:`place_mark` reads.

    Raises:
        ReportError: an unknown kind, a missing or non-numeric coordinate, a non-positive size, a polygon
            of fewer than 3 points.
    """
    if not isinstance(mark, Mapping):
        raise ReportError("malformed mark: not an object")
    kind = str(mark.get("kind", "")).strip().lower()
    out: dict[str, Any]
    if kind == "circle":
        out = {k: _number(mark.get(k), k) for k in ("x", "y", "radius")}
        if out["radius"] <= 0:
            raise ReportError("malformed mark: a circle's radius must be positive")
    elif kind == "box":
        out = {k: _number(mark.get(k), k) for k in ("x0", "y0", "x1", "y1")}
        if out["x1"] <= out["x0"] or out["y1"] <= out["y0"]:
            raise ReportError("malformed mark: a box needs x1 > x0 and y1 > y0")
        out["rotation"] = _number(mark.get("rotation", 0.0), "rotation")
    elif kind == "ellipse":
        out = {k: _number(mark.get(k), k) for k in ("x", "y", "rx", "ry")}
        if out["rx"] <= 0 or out["ry"] <= 0:
            raise ReportError("malformed mark: an ellipse's radii must be positive")
        out["rotation"] = _number(mark.get("rotation", 0.0), "rotation")
    elif kind == "polygon":
        points = mark.get("points")
        if not isinstance(points, list | tuple) or len(points) < 3:
            raise ReportError("malformed mark: a polygon needs at least 3 points")
        pairs = []
        for point in points:
            if not isinstance(point, list | tuple) or len(point) != 2:
                raise ReportError("malformed mark: a polygon's point is not [x, y]")
            pairs.append([_number(point[0], "x"), _number(point[1], "y")])
        out = {"points": pairs}
    else:
        raise ReportError(
            f"malformed mark: unknown kind {kind or '(none)'!r} (circle, box, ellipse, polygon)"
        )
    return {"kind": kind, **out}


def _time(value: Any) -> datetime:
    if value is None:
        raise ReportError("no reported_at")
    try:
        when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise ReportError(f"reported_at {str(value)[:40]!r} is not an ISO 8601 time") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _image_ref(fields: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """``(image_id, source_key)`` from the image fields; exactly one is set."""
    image_id, digest = fields.get("image_id"), fields.get("sha256") or fields.get("content_hash")
    if image_id is not None:
        text = str(image_id).lower()
        if not _HEX.match(text) or len(text) not in (32, 64):
            raise ReportError("image_id is not a content hash (32 or 64 hex characters)")
        return text[:32], None
    if digest is not None:
        text = str(digest).lower()
        if not _HEX.match(text) or len(text) != 64:
            raise ReportError("sha256 is not 64 hex characters")
        return text[:32], None
    collection, path = fields.get("collection"), fields.get("path")
    if collection is None or path is None:
        raise ReportError("no image: give image_id, sha256, or collection and path")
    relative = str(path).replace("\\", "/").removeprefix("./")
    return None, path_key(str(collection).lower(), relative)


def normalise_report(
    raw: Mapping[str, Any], secret: bytes, keep_text: bool, space: str = "original"
) -> dict[str, Any]:
    """One report's fields checked and canonical, the reporter already pseudonymised.

    Args:
        raw: the report as parsed (keys in any case; blank and ``NA``-like values are absent).
        secret: the pseudonym key.
        keep_text: keep the free text (``privacy.keep_report_text``).
        space: what the marks' numbers are: ``original`` pixels or ``percent`` of the normalised image.

    Raises:
        ReportError: the reason the report cannot be used.
    """
    fields = {str(k).strip().lower(): _value(v) for k, v in raw.items() if k is not None}
    reporter = fields.get("reporter")
    if reporter is None:
        raise ReportError("no reporter")
    label = fields.get("label")
    if label is None:
        raise ReportError("no label")
    label = str(label).lower()
    if label not in LABELS:
        raise ReportError(f"unknown label {label[:40]!r} (normal, benign, malignant)")
    ref_image_id, ref_source_key = _image_ref(fields)
    birads = fields.get("birads")
    if birads is not None:
        match = _BIRADS.match(str(birads).lower().removeprefix("bi-rads").strip())
        if not match:
            raise ReportError(f"birads {str(birads)[:20]!r} is not a BI-RADS assessment (0-6, 4A-4C)")
        birads = match.group(1) + (match.group(2) or "").upper()
    density = fields.get("density")
    if density is not None:
        density = _DENSITY.get(str(density).lower().removesuffix(".0"))
        if density is None:
            raise ReportError(f"density {str(fields['density'])[:20]!r} is not a BI-RADS density (A-D, 1-4)")
    marks = fields.get("marks")
    if isinstance(marks, str):
        try:
            marks = json.loads(marks)
        except json.JSONDecodeError:
            raise ReportError("malformed mark: the marks column is not JSON") from None
    if marks is not None and not isinstance(marks, list):
        raise ReportError("malformed mark: marks is not a list")
    canonical = [canonical_mark(m) for m in marks or []]
    when = _time(fields.get("reported_at"))
    report_id = fields.get("report_id")
    if report_id is None:  # the content hash of the report as sent
        report_id = "sha256:" + stable_id(json.dumps(raw, sort_keys=True, default=str), length=None)
    return {
        "report_id": str(report_id),
        "reporter": pseudonymise(secret, REPORTER_NAMESPACE, str(reporter)),
        "ref_image_id": ref_image_id,
        "ref_source_key": ref_source_key,
        "label": label,
        "birads": birads,
        "density": density,
        "marks": json.dumps(canonical) if canonical else None,
        "space": space,
        "reported_at": when,
        "text": str(fields["text"]) if keep_text and fields.get("text") is not None else None,
    }


def jsonl_rows(text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line, report)`` per non-blank line; a line that is not a JSON object fails the whole file."""
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FileError(number, f"line {number} does not parse as JSON ({exc.msg})") from None
        if not isinstance(value, dict):
            raise FileError(number, f"line {number} is not a JSON object")
        yield number, value


REQUIRED_COLUMNS = ("reporter", "label", "reported_at")


def csv_rows(text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line, report)`` per CSV row (quoted values may hold newlines; the line is the row's first).

    The header names the fields (any case, spaces around them ignored); it must hold
    :data:`REQUIRED_COLUMNS` and an image reference (``image_id``, ``sha256`` or ``collection`` and
    ``path``). A row with more cells than the header fails alone, as do empty rows (skipped).
    """
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise FileError(None, "empty CSV: no header") from None
    except csv.Error as exc:
        raise FileError(1, f"line 1: the header does not parse ({exc})") from None
    names = [h.strip().lower() for h in header]
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    has_image = {"image_id", "sha256", "content_hash"} & set(names) or {"collection", "path"} <= set(names)
    if missing or not has_image:
        lacks = missing + ([] if has_image else ["image_id / sha256 / collection + path"])
        raise FileError(1, f"line 1: the CSV header lacks {', '.join(lacks)}")
    start = reader.line_num + 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise FileError(start, f"line {start} does not parse as CSV ({exc})") from None
        line, start = start, reader.line_num + 1
        if not any(c.strip() for c in cells):
            continue
        if len(cells) > len(names):
            yield line, {"__error__": f"{len(cells)} cells, the header has {len(names)}"}
            continue
        yield line, dict(zip(names, cells, strict=False))


def _ls_reporter(completed_by: Any) -> str | None:
    """A reader's e-mail where the export gives one, else ``label-studio-user:<user id>``."""
    if isinstance(completed_by, Mapping):
        email = _value(completed_by.get("email"))
        if email:
            return str(email)
        completed_by = completed_by.get("id")
    return None if completed_by is None else f"label-studio-user:{completed_by}"


def _ls_mark(value: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """A Label Studio region (percentages of the image; rotation in degrees about the top-left corner for
    rectangles, about the centre for ellipses) as a mark in percent units."""
    if kind == "rectanglelabels":
        x, y = _number(value.get("x"), "x"), _number(value.get("y"), "y")
        width, height = _number(value.get("width"), "width"), _number(value.get("height"), "height")
        return {
            "kind": "box",
            "x0": x,
            "y0": y,
            "x1": x + width,
            "y1": y + height,
            "rotation": value.get("rotation", 0),
        }
    if kind == "ellipselabels":
        return {
            "kind": "ellipse",
            "x": value.get("x"),
            "y": value.get("y"),
            "rx": value.get("radiusX"),
            "ry": value.get("radiusY"),
            "rotation": value.get("rotation", 0),
        }
    return {"kind": "polygon", "points": value.get("points")}


_LS_REGIONS = ("rectanglelabels", "ellipselabels", "polygonlabels")


def label_studio_rows(text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(task number, report)`` per annotation of a Label Studio JSON export (cancelled ones skipped).

    The task's ``data`` names the image (``image_id``, or ``collection`` and ``path``); a choice whose
    control is named ``birads`` or ``density`` fills that field, any other choice is the label; regions are
    marks in percent of the shown image (``space = percent``). The report id is the task, annotation and
    update time: an annotation edited in Label Studio is a new report, the earlier one stays.
    """
    try:
        tasks = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FileError(exc.lineno, f"line {exc.lineno} does not parse as JSON ({exc.msg})") from None
    if not isinstance(tasks, list):
        raise FileError(None, "not a Label Studio export (a JSON list of tasks)")
    for number, task in enumerate(tasks, start=1):
        if not isinstance(task, Mapping):
            yield number, {"__error__": "the task is not a JSON object"}
            continue
        if "annotations" not in task and "data" not in task:
            yield number, {"__error__": "a task without data or annotations (export as JSON, not JSON_MIN)"}
            continue
        data = task.get("data") or {}
        for annotation in task.get("annotations") or []:
            if not isinstance(annotation, Mapping) or annotation.get("was_cancelled"):
                continue
            row: dict[str, Any] = {k: data.get(k) for k in ("image_id", "collection", "path") if k in data}
            when = annotation.get("updated_at") or annotation.get("created_at")
            row["reporter"] = _ls_reporter(annotation.get("completed_by"))
            row["reported_at"] = when
            row["report_id"] = f"label-studio:{task.get('id')}:{annotation.get('id')}:{when}"
            marks: list[Any] = []
            try:
                for result in annotation.get("result") or []:
                    kind, value = result.get("type"), result.get("value") or {}
                    control = str(result.get("from_name", "")).lower()
                    if kind == "choices" and value.get("choices"):
                        field = next((f for f in ("birads", "density") if f in control), "label")
                        row[field] = value["choices"][0]
                    elif kind in _LS_REGIONS:
                        marks.append(_ls_mark(value, kind))
            except (AttributeError, ReportError, TypeError) as exc:
                yield number, {"__error__": str(exc) if isinstance(exc, ReportError) else "malformed result"}
                continue
            if marks:
                row["marks"] = marks
            yield number, row


PARSERS = {"jsonl": jsonl_rows, "csv": csv_rows, "label_studio": label_studio_rows}


def _row(file: str, line: int | None, unit: str, fmt: str, **values: Any) -> dict[str, Any]:
    return {"file": file, "line": line, "unit": unit, "format": fmt, **values}


def parse_file(
    root: Path, file: str, data: bytes | None, secret: bytes, keep_text: bool
) -> list[dict[str, Any]]:
    """Every report of one file as a :data:`PARSED_SCHEMA` row (``status`` ``ok`` or ``quarantined``), or
    one quarantined row for the whole file when it does not parse.

    Args:
        root: the reports folder (the file is read from it when ``data`` is None).
        file: the file's path relative to ``root``.
        data: the file's bytes, when the caller has them (a stream's ``binaryFile`` rows).
        secret: the pseudonym key for reporters.
        keep_text: keep the free text.
    """
    suffix = Path(file).suffix.lower()
    fmt = FORMATS.get(suffix)
    if fmt is None:
        reason = (
            f"not a reports file ({suffix or 'no'} suffix; expected .jsonl, .csv or a Label Studio .json)"
        )
        return [_row(file, None, "file", "unknown", status="quarantined", reason=reason)]
    unit = "task" if fmt == "label_studio" else "line"
    escape = escape_reason(root, file) if data is None else None
    if escape is not None:
        return [_row(file, None, "file", fmt, status="quarantined", reason=escape)]
    try:
        if data is None:
            data = (root / file).read_bytes()
        if not data:
            raise FileError(None, "empty file (0 bytes)")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise FileError(line, f"line {line} is not UTF-8 text") from None
        raws = list(PARSERS[fmt](text))
    except FileError as exc:
        return [_row(file, exc.line, "file", fmt, status="quarantined", reason=exc.reason)]
    except OSError as exc:
        return [
            _row(file, None, "file", fmt, status="quarantined", reason=f"unreadable: {exc.strerror or exc}")
        ]
    space = "percent" if fmt == "label_studio" else "original"
    rows = []
    for line, raw in raws:
        try:
            if "__error__" in raw:
                raise ReportError(raw["__error__"])
            rows.append(
                _row(file, line, unit, fmt, status="ok", **normalise_report(raw, secret, keep_text, space))
            )
        except ReportError as exc:
            rows.append(_row(file, line, unit, fmt, status="quarantined", reason=f"{unit} {line}: {exc}"))
    return rows


def parse_files(frame: DataFrame, root: str, secret: bytes, keep_text: bool) -> DataFrame:
    """Executors: ``frame`` (one ``file`` per row, relative to ``root``) read and parsed (:func:`parse_file`).

    Returns:
        :data:`PARSED_SCHEMA` rows.
    """
    columns = PARSED_SCHEMA.fieldNames()
    base = Path(root)

    def run(batches: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        quiet()
        for batch in batches:
            for file in batch["file"]:
                rows = parse_file(base, str(file), None, secret, keep_text)
                yield object_frame(rows, columns)

    return frame.mapInPandas(run, PARSED_SCHEMA)


# --- Placing marks and checking labels (executors) ---------------------------------------------------


def _turned(
    x: float, y: float, offsets: Iterable[tuple[float, float]], degrees: float
) -> list[tuple[float, float]]:
    """The points ``(x, y) + offset``, the offsets turned by ``degrees`` (clockwise on screen) about
    ``(x, y)``."""
    cos, sin = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return [(x + dx * cos - dy * sin, y + dx * sin + dy * cos) for dx, dy in offsets]


def _polygon_ellipse(x: float, y: float, rx: float, ry: float, degrees: float) -> list[tuple[float, float]]:
    steps = (2 * math.pi * k / ELLIPSE_POINTS for k in range(ELLIPSE_POINTS))
    return _turned(x, y, ((rx * math.cos(t), ry * math.sin(t)) for t in steps), degrees)


def _rotated_box(x0: float, y0: float, x1: float, y1: float, degrees: float) -> list[tuple[float, float]]:
    """A box's corners, turned by ``degrees`` (clockwise on screen) about its first corner."""
    return _turned(x0, y0, [(0.0, 0.0), (x1 - x0, 0.0), (x1 - x0, y1 - y0), (0.0, y1 - y0)], degrees)


def place_mark(mark: Mapping[str, Any], space: str, image: Mapping[str, Any]) -> Geometry:
    """A canonical mark as a geometry in the image's normalised pixels.

    ``original`` marks are pixel-centre coordinates of the decoded file (what the collection's own
    geometry is in) and go through the stored transform (:func:`pipelines.normalise.transform_geometry`);
    ``percent`` marks are percentages of the normalised image (Label Studio on an exported task).

    Raises:
        ReportError: a mark whose centre or any vertex lies outside the image.
    """
    if space == "percent":
        width, height = float(image["width"]), float(image["height"])

        def px(x: float, y: float) -> tuple[float, float]:
            return x / 100 * width - 0.5, y / 100 * height - 0.5

        limit_x, limit_y = 100.0, 100.0
    else:
        width, height = float(image["original_width"]), float(image["original_height"])

        def px(x: float, y: float) -> tuple[float, float]:
            return x, y

        limit_x, limit_y = width, height
    kind = mark["kind"]
    if kind == "circle" or kind == "ellipse":
        anchors = [(mark["x"], mark["y"])]
    elif kind == "box":
        anchors = [(mark["x0"], mark["y0"]), (mark["x1"], mark["y1"])]
    else:
        anchors = [tuple(p) for p in mark["points"]]
    for x, y in anchors:
        if not (0 <= x <= limit_x and 0 <= y <= limit_y):
            raise ReportError(
                f"mark outside the image: ({x:g}, {y:g}) is not within {limit_x:g} x {limit_y:g}"
                + (" percent" if space == "percent" else " pixels")
            )
    if kind == "circle":
        cx, cy = px(mark["x"], mark["y"])
        scale = width / 100 if space == "percent" else 1.0
        geometry = Geometry(kind="circle", x=cx, y=cy, radius=mark["radius"] * scale)
    else:
        if kind == "ellipse":
            cx, cy = px(mark["x"], mark["y"])
            sx, sy = (width / 100, height / 100) if space == "percent" else (1.0, 1.0)
            points = _polygon_ellipse(cx, cy, mark["rx"] * sx, mark["ry"] * sy, mark["rotation"])
        elif kind == "box":
            x0, y0 = px(mark["x0"], mark["y0"])
            x1, y1 = px(mark["x1"], mark["y1"])
            points = _rotated_box(x0, y0, x1, y1, mark["rotation"])
        else:
            points = [px(x, y) for x, y in mark["points"]]
        geometry = Geometry(kind="outline", points=tuple(points))
    if space == "percent":
        return geometry
    t = Transform(
        **{
            k: image[f"t_{k}"]
            for k in ("flipped", "top", "left", "bottom", "right", "scale", "height", "width")
        }
    )
    return transform_geometry(geometry, t, int(image["original_width"]))


def build_report(row: Mapping[str, Any]) -> dict[str, Any]:
    """A parsed report joined to its image: the label checked against the modality and the marks placed.

    Returns:
        ``status`` (``ok`` or ``quarantined``), ``reason`` and ``findings`` (one per mark, or one without
        geometry), in :data:`pipelines.decode.FINDING_TYPE`'s fields.
    """
    if row.get("image_id") is None:
        how = "image_id / sha256" if row.get("ref_image_id") is not None else "collection + path"
        return {
            "status": "quarantined",
            "reason": f"unknown image (by {how}): not in images or landing_images",
        }
    label, modality = row["label"], row["modality"]
    if label not in CLASSES[modality]:
        return {
            "status": "quarantined",
            "reason": f"label {label!r} is not a class of {modality} images ({', '.join(CLASSES[modality])})",
        }
    marks = json.loads(row["marks"]) if row.get("marks") else []
    if marks and label == "normal":
        return {"status": "quarantined", "reason": "marks on a report labelled normal"}
    descriptors = {key: str(row[key]) for key in ("birads", "density") if row.get(key) is not None}
    if "birads" in descriptors:
        descriptors["assessment"] = descriptors.pop("birads")
    descriptors["format"] = str(row["format"])
    findings = []
    try:
        for index, mark in enumerate(marks):
            geometry = place_mark(mark, row["space"], row)
            findings.append(
                {
                    "index": index,
                    "label": label,
                    "subtype": None,
                    "descriptors": {**descriptors, "mark": mark["kind"]},
                    "geometry_kind": geometry.kind,
                    "geometry": json.dumps(dataclasses.asdict(geometry)),
                    "mask_png": None,
                }
            )
    except ReportError as exc:
        return {"status": "quarantined", "reason": str(exc)}
    if not findings:
        findings.append(
            {
                "index": 0,
                "label": label,
                "subtype": None,
                "descriptors": descriptors,
                "geometry_kind": None,
                "geometry": None,
                "mask_png": None,
            }
        )
    return {"status": "ok", "reason": None, "findings": findings}


_TRANSFORM_FIELDS = ("flipped", "top", "left", "bottom", "right", "scale", "height", "width")


IMAGE_TABLES = ("images", "landing_images")
"""The tables whose images reports may name."""


_IMAGE_GEOMETRY = ("collection", "modality", "original_height", "original_width", "height", "width")
"""The image columns a report is resolved against (beside ``image_id`` and the transform's fields)."""


def image_tables(
    spark: SparkSession, settings: Settings, shape: Callable[[DataFrame], DataFrame]
) -> DataFrame | None:
    """``shape`` applied to each of :data:`IMAGE_TABLES` that exists, the results united by name;
    ``None`` when neither exists yet."""
    paths = [settings.lakehouse.table(name) for name in IMAGE_TABLES]
    frames = [shape(read_table(spark, path)) for path in paths if table_exists(spark, path)]
    return reduce(DataFrame.unionByName, frames) if frames else None


def known_images(spark: SparkSession, settings: Settings) -> DataFrame | None:
    """The images reports may name: ``images`` and ``landing_images``, keys and geometry only (no pixels).

    Returns:
        ``image_id, source_key, collection, modality, original_height, original_width, height, width`` and
        the transform's fields as ``t_<field>``; ``None`` when neither table exists yet.
    """
    return image_tables(
        spark,
        settings,
        lambda table: table.select(
            "image_id",
            "source_key",
            *_IMAGE_GEOMETRY,
            *(F.col("transform")[k].alias(f"t_{k}") for k in _TRANSFORM_FIELDS),
        ),
    )


def resolve_images(parsed: DataFrame, images: DataFrame | None) -> DataFrame:
    """Each parsed report with its image's keys and geometry (null when no image matches).

    Two equi-joins, one per kind of reference (by ``image_id``, by ``source_key``), never a join on an
    ``OR`` (which Spark can only run as a nested loop).
    """
    image_columns = ["image_id", *_IMAGE_GEOMETRY, *(f"t_{k}" for k in _TRANSFORM_FIELDS)]
    if images is None:
        nulls = [F.lit(None).cast("string").alias(c) for c in ("image_id", "collection", "modality")]
        return parsed.select("*", *nulls)
    by_id = images.select(*image_columns).dropDuplicates(["image_id"])
    by_key = images.select("source_key", *image_columns).dropDuplicates(["source_key"])
    renamed_id = by_id.select(*(F.col(c).alias(f"i_{c}") for c in image_columns))
    renamed_key = by_key.select(
        F.col("source_key").alias("k_source_key"), *(F.col(c).alias(f"k_{c}") for c in image_columns)
    )
    joined = parsed.join(renamed_id, parsed["ref_image_id"] == renamed_id["i_image_id"], "left").join(
        renamed_key, parsed["ref_source_key"] == renamed_key["k_source_key"], "left"
    )
    return joined.select(
        *(parsed[c] for c in parsed.columns),
        *(F.coalesce(F.col(f"i_{c}"), F.col(f"k_{c}")).alias(c) for c in image_columns),
    )


def _missing(value: Any) -> bool:
    """pandas' stand-in for a null in an object column handed to ``mapInPandas``."""
    return isinstance(value, float) and math.isnan(value)


def build_reports(resolved: DataFrame) -> DataFrame:
    """Executors: :func:`build_report` on every parsed report; quarantined parse rows pass through.

    Returns:
        :data:`BUILT_SCHEMA` rows.
    """
    columns = BUILT_SCHEMA.fieldNames()

    def run(batches: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        quiet()
        for batch in batches:
            out = []
            for record in batch.to_dict("records"):
                row = {str(k): (None if _missing(v) else v) for k, v in record.items()}
                if row["status"] == "ok":
                    row.update(build_report(row))
                out.append(row)
            yield object_frame(out, columns)

    return resolved.mapInPandas(run, BUILT_SCHEMA)


# --- Writing (driver) -----------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def quarantine_rows(built: DataFrame, hash_paths: bool, unreadable: Sequence[str] = ()) -> DataFrame:
    """``quarantine`` rows (collection ``reports``, stage ``report``) for reports and files that failed,
    and for the files whose name is not UTF-8 (``unreadable``, escaped names: never read)."""
    path, reason = F.col("file"), F.col("reason")
    if hash_paths:
        path = F.expr(stable_id_sql(f"'{NAME}'", "file"))
        reason = F.regexp_replace("reason", PATH_PATTERN, HIDDEN)
    failed = built.where(F.col("status") == "quarantined").select(
        "file", F.coalesce("reason", F.lit("unusable")).alias("reason")
    )
    if unreadable:
        named = built.sparkSession.createDataFrame(
            [(f, NOT_UTF8) for f in unreadable], "file string, reason string"
        )
        failed = failed.unionByName(named)
    return (
        failed.select(path.alias("path"), reason.alias("reason"))
        .select(
            F.expr(stable_id_sql(f"'{NAME}'", "path", "'report'", "reason")).alias("quarantine_id"),
            F.lit(NAME).alias("collection"),
            "path",
            F.lit("report").alias("stage"),
            "reason",
            F.lit(False).alias("is_image"),
            F.lit(_now()).alias("first_seen_at"),
        )
        .dropDuplicates(["quarantine_id"])
        .select(*QUARANTINE_SCHEMA.fieldNames())
    )


def annotation_rows(reports: DataFrame) -> DataFrame:
    """The ``annotations`` rows of usable reports: one per mark (or one without geometry)."""
    finding = F.col("finding")
    return reports.select("*", F.explode("findings").alias("finding")).select(
        F.expr(
            stable_id_sql("image_id", f"'{SOURCE}'", "report_id", "CAST(finding.`index` AS STRING)")
        ).alias("annotation_id"),
        "image_id",
        "collection",
        finding["label"].alias("label"),
        finding["subtype"].alias("subtype"),
        finding["descriptors"].alias("descriptors"),
        finding["geometry_kind"].alias("geometry_kind"),
        finding["geometry"].alias("geometry"),
        finding["mask_png"].alias("mask_png"),
        F.lit(SOURCE).alias("source"),
        "reporter",
        F.lit(_now()).alias("created_at"),
        "report_id",
        "reported_at",
        "text",
    )


def existing_report_ids(spark: SparkSession, path: str) -> DataFrame | None:
    """The report ids already in ``annotations`` (expert rows), or ``None`` when there are none."""
    if not table_exists(spark, path):
        return None
    table = read_table(spark, path)
    if "report_id" not in table.columns:
        return None
    return table.where(F.col("source") == SOURCE).select("report_id").distinct()


def ingest_reports(
    spark: SparkSession, settings: Settings, root: Path | str, secret: bytes, files: list[str] | None = None
) -> CollectionSummary:
    """Read every file below ``root`` (or the ``files`` given) into ``annotations`` (the reports job; a
    stream's micro-batch).

    Args:
        spark: the session.
        settings: lakehouse, privacy (``keep_report_text``, ``hash_source_paths``).
        root: the reports folder; made absolute here (executors open its files).
        secret: the pseudonym key (reporters are pseudonymised with it).
        files: only these paths relative to ``root`` (a stream's micro-batch); every file by default.

    Returns:
        The accounting: ``seen`` reports (and files that did not parse, one each) = ``ingested`` +
        ``already_present`` + ``quarantined``; ``labels`` counts this run's new reports.
    """
    root = Path(root).resolve()
    verify_secret(spark, settings, secret)
    lake = settings.lakehouse
    metadata = {"job": "reports", "config": settings.public_dict()}
    listed = walk(root) if files is None else sorted(files)
    summary = CollectionSummary(split_strategy="")
    # A name that is not UTF-8 cannot be handed to the JVM: the file is quarantined by its escaped name.
    unreadable = sorted(shown for shown in map(printable_path, listed) if shown is not None)
    files = [f for f in listed if printable_path(f) is None]
    if not listed:
        return summary
    slots = max(1, min(len(files), 2 * spark.sparkContext.defaultParallelism))
    listing = spark.createDataFrame([(f,) for f in files], "file string").repartition(slots, "file")
    parsed = parse_files(listing, str(root), secret, settings.privacy.keep_report_text)
    built = build_reports(resolve_images(parsed, known_images(spark, settings))).persist(
        StorageLevel.MEMORY_AND_DISK
    )

    annotations_path = lake.table("annotations")
    ok = built.where(F.col("status") == "ok")
    first = Window.partitionBy("report_id").orderBy("file", "line")
    unique = ok.withColumn("_n", F.row_number().over(first)).where("_n = 1").drop("_n")
    present = existing_report_ids(spark, annotations_path)
    new = unique if present is None else unique.join(present, "report_id", "left_anti")
    new = new.persist(StorageLevel.MEMORY_AND_DISK)

    counts = built.groupBy("status").count().collect()
    by_status = {r["status"]: int(r["count"]) for r in counts}
    labels = {r["label"]: int(r["count"]) for r in new.groupBy("label").count().collect()}
    summary.seen = sum(by_status.values()) + len(unreadable)
    summary.quarantined = by_status.get("quarantined", 0) + len(unreadable)
    summary.ingested = sum(labels.values())
    summary.already_present = by_status.get("ok", 0) - summary.ingested
    summary.labels = {label: labels.get(label, 0) for label in LABELS}

    merge_into(
        spark,
        quarantine_rows(built, settings.privacy.hash_source_paths, unreadable),
        lake.table("quarantine"),
        ["quarantine_id"],
        metadata,
    )
    if summary.ingested:
        merge_into(spark, annotation_rows(new), annotations_path, ["annotation_id"], metadata)
    new.unpersist()
    built.unpersist()
    print(
        f"reports: {len(listed)} files, {summary.seen} reports seen: {summary.ingested} new, "
        f"{summary.already_present} already present, {summary.quarantined} quarantined",
        flush=True,
    )
    return summary


# --- Tasks out: the images most worth reading next, as a Label Studio import --------------------------

LABEL_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <Choices name="label" toName="image" choice="single" required="true">
    <Choice value="normal"/><Choice value="benign"/><Choice value="malignant"/>
  </Choices>
  <Choices name="birads" toName="image" choice="single">
    <Choice value="0"/><Choice value="1"/><Choice value="2"/><Choice value="3"/><Choice value="4"/>
    <Choice value="5"/><Choice value="6"/>
  </Choices>
  <Choices name="density" toName="image" choice="single">
    <Choice value="A"/><Choice value="B"/><Choice value="C"/><Choice value="D"/>
  </Choices>
  <RectangleLabels name="lesion_box" toName="image"><Label value="lesion"/></RectangleLabels>
  <EllipseLabels name="lesion_ellipse" toName="image"><Label value="lesion"/></EllipseLabels>
  <PolygonLabels name="lesion_outline" toName="image"><Label value="lesion"/></PolygonLabels>
</View>
"""
"""The labelling interface the exported tasks are meant for: :func:`label_studio_rows` reads its results."""


def reading_priority(spark: SparkSession, settings: Settings, images: DataFrame) -> DataFrame:
    """Each image's reason to be read next: model uncertainty and reader disagreement.

    ``uncertainty`` = 1 - 2 |p - 0.5| of the image's latest prediction (1 at p = 0.5, 0 when sure; 1
    without a prediction), ``disagreement`` = 1 - the Dawid–Skene consensus agreement (1 without any
    report: nobody has read it), ``reports`` = reports so far; ``priority`` = the larger of the two.

    Args:
        images: ``image_id`` and anything else to keep.

    Returns:
        ``images`` with ``uncertainty``, ``disagreement``, ``reports`` and ``priority``.
    """
    lake = settings.lakehouse
    out = images
    predictions_path = lake.table("predictions")
    if table_exists(spark, predictions_path):
        latest = Window.partitionBy("image_id").orderBy(F.col("scored_at").desc())
        scored = (
            read_table(spark, predictions_path)
            .withColumn("_n", F.row_number().over(latest))
            .where("_n = 1")
            .select("image_id", (1 - 2 * F.abs(F.col("p_positive") - 0.5)).alias("uncertainty"))
        )
        out = out.join(scored, "image_id", "left")
    else:
        out = out.withColumn("uncertainty", F.lit(None).cast("double"))
    consensus_path = lake.table("consensus")
    if table_exists(spark, consensus_path):
        table = read_table(spark, consensus_path).where(F.col("method") == "dawid_skene")
        newest = Window.partitionBy("image_id").orderBy(F.col("annotations_version").desc())
        agreed = (
            table.withColumn("_n", F.row_number().over(newest))
            .where("_n = 1")
            .select("image_id", (1 - F.col("agreement")).alias("disagreement"), "reports")
        )
        out = out.join(agreed, "image_id", "left")
    else:
        out = out.withColumn("disagreement", F.lit(None).cast("double")).withColumn(
            "reports", F.lit(None).cast("int")
        )
    out = out.fillna({"uncertainty": 1.0, "disagreement": 1.0, "reports": 0})
    return out.withColumn("priority", F.greatest("uncertainty", "disagreement"))


def export_tasks(
    spark: SparkSession, settings: Settings, out: Path | str, limit: int, modality: str | None = None
) -> int:
    """Write a Label Studio import file of the ``limit`` images most worth reading next.

    Images come from ``images`` and ``landing_images``, highest :func:`reading_priority` first (fewest
    reports, then ``image_id``, break ties). Each task carries its ``image_id``, ``modality`` and the
    normalised image as a PNG data URL (cropped, markers blacked out): never a path, a patient key or an
    original identifier. ``label_config.xml`` (:data:`LABEL_CONFIG`) is written beside ``out``.

    Returns:
        The number of tasks written.
    """
    import base64

    images = image_tables(spark, settings, lambda table: table.select("image_id", "modality"))
    if images is None:
        return 0
    if modality:
        images = images.where(F.col("modality") == modality)
    ranked = reading_priority(spark, settings, images.dropDuplicates(["image_id"]))
    chosen = ranked.orderBy(F.col("priority").desc(), F.col("reports").asc(), "image_id").limit(limit).cache()
    ids = F.broadcast(chosen.select("image_id"))
    pixels = image_tables(
        spark, settings, lambda table: table.join(ids, "image_id").select("image_id", "pixels")
    )
    pngs = {r["image_id"]: bytes(r["pixels"]) for r in pixels.collect()} if pixels is not None else {}
    tasks = []
    for row in chosen.collect():
        data = {
            "image": "data:image/png;base64," + base64.b64encode(pngs[row["image_id"]]).decode(),
            "image_id": row["image_id"],
            "modality": row["modality"],
            "priority": round(float(row["priority"]), 4),
            "reports": int(row["reports"]),
        }
        tasks.append({"data": data})
    chosen.unpersist()
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(tasks) + "\n")
    (target.parent / "label_config.xml").write_text(LABEL_CONFIG)
    return len(tasks)
