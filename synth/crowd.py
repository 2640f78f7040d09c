"""A synthetic crowd of readers with known confusion matrices, and the reports they send.

The default crowd (:func:`default_crowd`) is 12 readers: 3 experts (about 0.92 correct), 6 average
readers (about 0.72), 2 near-random spammers (answers drawn without looking) and 1 reader biased toward
"malignant". Each image is read by 3 to 7 of them (:func:`simulate`). Because every reader's confusion
matrix is known, the figures of an aggregation can be checked against the truth and against the
Bayes-optimal posterior (:func:`bayes_posteriors`), which knows the matrices and the class priors.

A confusion matrix here is ``{true: {said: probability}}``; each row sums to 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

Confusion = dict[str, dict[str, float]]


@dataclass(frozen=True)
class Reader:
    """One reader: an id in the sender's system, a kind, and a confusion matrix per label set."""

    reader_id: str
    kind: str  # expert | average | spammer | biased
    confusion: Mapping[tuple[str, ...], Confusion]

    def matrix(self, classes: Sequence[str]) -> Confusion:
        return dict(self.confusion[tuple(classes)])


def _noisy_diagonal(classes: Sequence[str], accuracy: float, rng: np.random.Generator) -> Confusion:
    """Rows with about ``accuracy`` on the diagonal and the rest spread unevenly over the other labels."""
    matrix: Confusion = {}
    for true in classes:
        correct = float(np.clip(accuracy + rng.normal(0, 0.03), 0.05, 0.99))
        others = [c for c in classes if c != true]
        spread = rng.dirichlet(np.full(len(others), 4.0)) * (1 - correct)
        matrix[true] = {true: correct, **{c: float(s) for c, s in zip(others, spread, strict=True)}}
    return matrix


def _spammer(classes: Sequence[str], rng: np.random.Generator) -> Confusion:
    """The same answer distribution whatever the image: an accuracy at chance."""
    answers = rng.dirichlet(np.full(len(classes), 20.0))
    return {true: {c: float(a) for c, a in zip(classes, answers, strict=True)} for true in classes}


def _biased(classes: Sequence[str], toward: str, rng: np.random.Generator) -> Confusion:
    """A fair reader (about 0.8) who moves 40 % of every other answer to ``toward``."""
    matrix = _noisy_diagonal(classes, 0.8, rng)
    for true, row in matrix.items():
        if true == toward:
            continue
        moved = {c: p * 0.4 for c, p in row.items() if c != toward}
        matrix[true] = {c: (p - moved.get(c, 0.0)) for c, p in row.items()}
        matrix[true][toward] = row[toward] + sum(moved.values())
    return matrix


LABEL_SETS: tuple[tuple[str, ...], ...] = (("normal", "benign", "malignant"), ("benign", "malignant"))
"""Mammography's labels and histology's (which has no normal class)."""


def default_crowd(
    seed: int = 0,
    *,
    experts: int = 3,
    average: int = 6,
    spammers: int = 2,
    biased: int = 1,
    label_sets: Sequence[tuple[str, ...]] = LABEL_SETS,
) -> list[Reader]:
    """The default crowd (module docstring), deterministic for a seed."""
    rng = np.random.default_rng(seed)
    kinds = ["expert"] * experts + ["average"] * average + ["spammer"] * spammers + ["biased"] * biased
    readers = []
    for number, kind in enumerate(kinds, start=1):
        confusion: dict[tuple[str, ...], Confusion] = {}
        for classes in label_sets:
            if kind == "expert":
                confusion[classes] = _noisy_diagonal(classes, 0.92, rng)
            elif kind == "average":
                confusion[classes] = _noisy_diagonal(classes, 0.72, rng)
            elif kind == "spammer":
                confusion[classes] = _spammer(classes, rng)
            else:
                confusion[classes] = _biased(classes, "malignant", rng)
        readers.append(Reader(f"reader-{number:02d}", kind, confusion))
    return readers


@dataclass(frozen=True)
class Reading:
    """One reader's answer on one image."""

    image: str
    reader_id: str
    label: str


def simulate(
    truth: Mapping[str, str],
    classes: Sequence[str],
    readers: Sequence[Reader],
    seed: int = 0,
    reads: tuple[int, int] = (3, 7),
) -> list[Reading]:
    """Each image read by ``reads[0]``..``reads[1]`` distinct readers, each answering from their matrix.

    Args:
        truth: image key -> true label (among ``classes``).
        classes: the label set of these images.
        readers: the crowd.
        seed: the draw.
        reads: the fewest and most readers per image (inclusive).
    """
    rng = np.random.default_rng(seed)
    readings = []
    low, high = reads[0], min(reads[1], len(readers))
    for image in sorted(truth):
        chosen = rng.choice(len(readers), size=int(rng.integers(low, high + 1)), replace=False)
        for index in sorted(chosen):
            row = readers[index].matrix(classes)[truth[image]]
            said = str(rng.choice(list(classes), p=np.array([row[c] for c in classes]) / sum(row.values())))
            readings.append(Reading(image, readers[index].reader_id, said))
    return readings


def bayes_posteriors(
    readings: Sequence[Reading],
    classes: Sequence[str],
    readers: Sequence[Reader],
    priors: Mapping[str, float],
) -> dict[str, dict[str, float]]:
    """The posterior of each image's label given the true matrices and priors: the best any aggregation
    of these readings can do."""
    matrices = {r.reader_id: r.matrix(classes) for r in readers}
    log_post: dict[str, np.ndarray] = {}
    log_prior = np.log(np.array([max(priors[c], 1e-12) for c in classes]))
    for reading in readings:
        terms = np.log([max(matrices[reading.reader_id][true][reading.label], 1e-12) for true in classes])
        log_post[reading.image] = log_post.get(reading.image, log_prior.copy()) + terms
    out = {}
    for image, values in log_post.items():
        weights = np.exp(values - values.max())
        weights /= weights.sum()
        out[image] = {c: float(w) for c, w in zip(classes, weights, strict=True)}
    return out


# --- The crowd's report files, beside a synthetic corpus -------------------------------------------------

REPORTS = "reports"
"""The reports folder's name under the corpus (``<out>/reports``); its manifest is ``<out>/reports.json``."""

MODALITY_CLASSES = {"mammography": LABEL_SETS[0], "histology": LABEL_SETS[1]}
COLLECTION_MODALITY = {
    "breakhis": "histology",
    "mias": "mammography",
    "ddsm": "mammography",
    "cbis_ddsm": "mammography",
}
PLANTED_REPORTS = (
    "unknown_image",
    "unknown_label",
    "histology_normal",
    "malformed_mark",
    "mark_outside",
    "bad_time",
    "no_reporter",
)
"""Bad report rows planted among the good ones (each quarantined with its reason)."""
PLANTED_FILES = ("broken_jsonl", "csv_without_label", "not_reports")
"""Whole files planted: a JSON Lines file with a line that does not parse, a CSV without the ``label``
column, and a file of another kind; each is quarantined whole."""
_BIRADS = {"normal": (1,), "benign": (2, 3), "malignant": (4, 5)}
_CSV_COLUMNS = (
    "report_id",
    "reporter",
    "image_id",
    "collection",
    "path",
    "sha256",
    "label",
    "birads",
    "density",
    "marks",
    "reported_at",
    "text",
)


def _content_hash(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _marks(entry: Mapping[str, Any], rng: np.random.Generator) -> list[dict[str, Any]]:
    """A reader's marks on the image's lesions: circles (or boxes) with positional noise, inside the image."""
    rows, cols = entry.get("shape") or (None, None)
    marks: list[dict[str, Any]] = []
    for x, y, radius in entry["marks"]:
        if rng.uniform() < 0.3:  # this lesion is not marked
            continue
        cx, cy = x + rng.normal(0, 0.1 * radius), y + rng.normal(0, 0.1 * radius)
        r = radius * float(rng.uniform(0.8, 1.25))
        if rows is not None:
            cx, cy = float(np.clip(cx, 0, cols - 1)), float(np.clip(cy, 0, rows - 1))
        if rng.uniform() < 0.25 and rows is not None:
            box = [max(0.0, cx - r), max(0.0, cy - r), min(cols - 1.0, cx + r), min(rows - 1.0, cy + r)]
            marks.append({"kind": "box", "x0": box[0], "y0": box[1], "x1": box[2], "y1": box[3]})
        else:
            marks.append({"kind": "circle", "x": round(cx, 1), "y": round(cy, 1), "radius": round(r, 1)})
    return marks


def write_reports(
    out: Path,
    truths: Mapping[str, Sequence[Mapping[str, Any]]],
    roots: Mapping[str, Path],
    seed: int = 0,
    readers: Sequence[Reader] | None = None,
) -> dict[str, Any]:
    """The default crowd's reports on a corpus: ``out/reports/`` and its manifest ``out/reports.json``.

    Each image is read by 3 to 7 readers (:func:`simulate`, per modality with its label set), who answer
    from their confusion matrices; a reader who says benign or malignant on an image with lesions marks
    most of them (circles or boxes in the file's pixels, with positional noise). One reader in 30 reports
    again on the same image later (a revised reading). Readers 1-8 send JSON Lines, 9-12 CSV, one file
    each; images are named by collection and path (most), by ``image_id`` or by ``sha256`` (the file's
    content hash). :data:`PLANTED_REPORTS` rows and :data:`PLANTED_FILES` are added.

    Args:
        out: the corpus folder.
        truths: collection -> :attr:`synth.report.CollectionReport.truth`.
        roots: collection -> its root folder (to hash files for content-hash references).
        seed: the draw.
        readers: the crowd (default :func:`default_crowd` with ``seed``).

    Returns:
        The manifest: ``readers`` (id, kind, true confusion per modality), ``reports`` (good report rows),
        ``files``, ``planted`` (``file``, ``line`` or null for a whole file, ``kind``), ``truth``
        (``collection/path`` -> label) and ``revised`` (reports that revise an earlier one).
    """
    import csv
    import io
    import json
    from datetime import UTC, datetime, timedelta

    readers = list(readers or default_crowd(seed))
    rng = np.random.default_rng(seed + 7)
    folder = Path(out) / REPORTS
    folder.mkdir(parents=True, exist_ok=True)
    entries = {f"{c}/{e['path']}": (c, e) for c, items in truths.items() for e in items}
    by_reader: dict[str, list[dict[str, Any]]] = {r.reader_id: [] for r in readers}
    start = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
    revised = 0
    hashes: dict[str, str] = {}  # image -> its file's SHA-256, each file read once
    for modality, classes in MODALITY_CLASSES.items():
        keys = {k: e["label"] for k, (c, e) in entries.items() if COLLECTION_MODALITY[c] == modality}
        if not keys:
            continue
        readings = simulate(keys, classes, readers, seed=seed + len(classes))
        for reading in readings:
            collection, entry = entries[reading.image]
            when = start + timedelta(minutes=int(rng.integers(0, 60 * 24 * 200)))
            answers = [reading.label]
            if rng.uniform() < 1 / 30:  # a revised reading, later
                row = next(r for r in readers if r.reader_id == reading.reader_id).matrix(classes)
                row = row[entry["label"]]
                answers.append(str(rng.choice(list(classes), p=np.array([row[c] for c in classes]))))
                revised += 1
            for number, label in enumerate(answers):
                report: dict[str, Any] = {"reporter": reading.reader_id}
                pick = rng.uniform()
                if pick < 0.7:
                    report.update(collection=collection, path=entry["path"])
                else:
                    key = reading.image
                    digest = hashes.get(key) or hashes.setdefault(
                        key, _content_hash(Path(roots[collection]) / entry["path"])
                    )
                    report.update({"image_id": digest[:32]} if pick < 0.85 else {"sha256": digest})
                report["label"] = label
                if modality == "mammography" and rng.uniform() < 0.8:
                    report["birads"] = int(rng.choice(_BIRADS[label]))
                if modality == "mammography" and rng.uniform() < 0.5:
                    report["density"] = str(rng.choice(["A", "B", "C", "D"]))
                if label != "normal" and entry["marks"]:
                    marks = _marks(entry, rng)
                    if marks:
                        report["marks"] = marks
                report["reported_at"] = (when + timedelta(days=30 * number)).isoformat()
                if rng.uniform() < 0.1:
                    report["text"] = "Seen with the prior study; see clinic notes."
                by_reader[reading.reader_id].append(report)

    good = sum(len(items) for items in by_reader.values())
    planted: list[dict[str, Any]] = []
    some_mammogram = next(k for k, (c, _) in entries.items() if COLLECTION_MODALITY[c] == "mammography")
    some_slide = next((k for k, (c, _) in entries.items() if c == "breakhis"), None)
    for kind in PLANTED_REPORTS:
        collection, entry = entries[
            some_slide if kind == "histology_normal" and some_slide else some_mammogram
        ]
        bad: dict[str, Any] = {
            "reporter": readers[0].reader_id,
            "collection": collection,
            "path": entry["path"],
            "label": "benign" if collection != "breakhis" else "malignant",
            "reported_at": (start + timedelta(days=1)).isoformat(),
        }
        if kind == "unknown_image":
            bad["path"] = "no/such/image.png"
        elif kind == "unknown_label":
            bad["label"] = "suspicious"
        elif kind == "histology_normal":
            bad["label"] = "normal"
        elif kind == "malformed_mark":
            bad["marks"] = [{"kind": "polygon", "points": [[10, 10], [20, 20]]}]
        elif kind == "mark_outside":
            bad["marks"] = [{"kind": "circle", "x": -40, "y": 12, "radius": 5}]
        elif kind == "bad_time":
            bad["reported_at"] = "last Tuesday"
        elif kind == "no_reporter":
            del bad["reporter"]
        bad["report_id"] = f"planted-{kind}"
        target = by_reader[readers[0].reader_id]
        target.insert(int(rng.integers(0, len(target) + 1)), bad)
        planted.append({"kind": kind, "report_id": bad["report_id"], "file": f"{readers[0].reader_id}.jsonl"})

    files: list[str] = []
    serial = 0
    for number, reader in enumerate(readers, start=1):
        rows = by_reader[reader.reader_id]
        for row in rows:
            if "report_id" not in row and rng.uniform() < 0.9:  # the rest: the content hash is the id
                serial += 1
                row["report_id"] = f"rpt-{seed}-{serial:07d}"
        if number <= 8:
            name = f"{reader.reader_id}.jsonl"
            text = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)
        else:
            name = f"{reader.reader_id}.csv"
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=_CSV_COLUMNS, lineterminator="\r\n")
            writer.writeheader()
            for row in rows:
                writer.writerow({**row, "marks": json.dumps(row["marks"]) if "marks" in row else ""})
            text = buffer.getvalue()
        (folder / name).write_text(text, encoding="utf-8")
        files.append(name)

    broken = [json.dumps(row, sort_keys=True) for row in by_reader[readers[1].reader_id][:3]]
    broken.insert(2, broken[1][: len(broken[1]) // 2])  # a line cut short: the file does not parse
    (folder / "late-batch.jsonl").write_text("\n".join(broken) + "\n", encoding="utf-8")
    (folder / "no-label.csv").write_text(
        "reporter,path,collection,reported_at\nreader-02,x.png,mias,2026-01-01\n"
    )
    (folder / "notes.txt").write_text("reading session notes\n")
    planted += [
        {"kind": "broken_jsonl", "file": "late-batch.jsonl", "line": 3},
        {"kind": "csv_without_label", "file": "no-label.csv", "line": 1},
        {"kind": "not_reports", "file": "notes.txt", "line": None},
    ]
    manifest = {
        "readers": [
            {
                "reader": r.reader_id,
                "kind": r.kind,
                "confusion": {m: r.matrix(c) for m, c in MODALITY_CLASSES.items()},
            }
            for r in readers
        ],
        "reports": good,
        "revised": revised,
        "files": files,
        "planted": planted,
        "truth": {key: entry["label"] for key, (_, entry) in sorted(entries.items())},
    }
    (Path(out) / f"{REPORTS}.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest
