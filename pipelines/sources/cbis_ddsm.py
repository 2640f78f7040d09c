"""CBIS-DDSM: four case-description CSVs and the DICOM tree the TCIA downloader writes.

Each CSV row is one abnormality; rows sharing an ``image file path`` are findings of one full mammogram.
The DICOM tree is ``<Mass|Calc>-<Training|Test>_P_<id>_<LEFT|RIGHT>_<CC|MLO>[_<n>]/<uid>/<uid>/<file>.dcm``
(the folder with ``_<n>`` holds abnormality n's crop and ROI mask). Real downloads often have other uid
folders than the CSV, so paths are reconciled on the top folder by walking the tree. CSV values carry
stray whitespace and newlines; the density column is ``breast_density`` in mass files and ``breast density``
in calc files. The ROI mask and the cropped lesion share a folder and their CSV columns are known to
name them the wrong way round, so both are kept as mask candidates and the decoder takes the binary one of
the image's size. Full mammograms are 16-bit DICOM, some MONOCHROME1, some with a VOI window, some in
compressed transfer syntaxes (decoded by pydicom's pixel-data plugins). Patient names, birth dates and
study dates inside the DICOMs are never read into records.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from pathlib import Path

from pipelines.sources.base import Decoded, Finding, Geometry, ImageRecord, Label, Rejection, Scan
from pipelines.sources.files import decode_dicom, walk

NAME = "cbis_ddsm"
MODALITY = "mammography"
PATHOLOGY: dict[str, Label] = {
    "MALIGNANT": "malignant",
    "BENIGN": "benign",
    "BENIGN_WITHOUT_CALLBACK": "benign",
}
_FOLDER = re.compile(r"^(Mass|Calc)-(Training|Test)_(P_\d+)_(LEFT|RIGHT)_(CC|MLO)(_\d+)?$", re.I)
_DESCRIPTORS = (
    "abnormality type",
    "mass shape",
    "mass margins",
    "calc type",
    "calc distribution",
    "assessment",
    "subtlety",
)


def _clean(value: str | None) -> str:
    return " ".join((value or "").split())


def _case_folder(path: str) -> str | None:
    """``Mass-Training_P_00001_LEFT_CC[_1]``: the part of a path that says which image or abnormality."""
    return next((part for part in path.split("/") if _FOLDER.match(part)), None)


def _folder_parts(folder: str) -> re.Match[str]:
    """The parts of a case folder's name (every folder the tree indexes has them)."""
    match = _FOLDER.match(folder)
    if match is None:
        raise ValueError(f"not a case folder: {folder!r}")
    return match


def _top_folder(csv_path: str) -> str:
    return _clean(csv_path).replace("\\", "/").strip("/").split("/")[0]


class _Tree:
    """The DICOM files of the download, indexed by their case folder (``Mass-Training_P_00001_LEFT_CC``)."""

    def __init__(self, files: list[str]) -> None:
        self.by_folder: dict[str, list[str]] = defaultdict(list)
        self.other: list[str] = []
        for path in files:
            folder = _case_folder(path)
            if folder and path.lower().endswith(".dcm"):
                self.by_folder[folder].append(path)
            else:
                self.other.append(path)

    def resolve(self, csv_path: str) -> str | None:
        """The file a CSV path names: exact when present, else by folder and file name, else the only file."""
        wanted = _clean(csv_path).replace("\\", "/").strip("/")
        candidates = self.by_folder.get(_top_folder(wanted), [])
        exact = [c for c in candidates if c.endswith(wanted)]
        if exact:
            return exact[0]
        named = [c for c in candidates if c.rsplit("/", 1)[-1] == wanted.rsplit("/", 1)[-1]]
        if len(named) == 1:
            return named[0]
        return candidates[0] if len(candidates) == 1 else None


def _rows(root: Path, files: list[str]) -> list[tuple[str, int, dict[str, str]]]:
    rows = []
    for name in files:
        if re.search(r"(mass|calc)_case_description.*\.csv$", name, re.I):
            with (root / name).open(newline="", errors="replace") as handle:
                for number, row in enumerate(csv.DictReader(handle), start=2):
                    rows.append((name, number, {_clean(k).lower(): _clean(v) for k, v in row.items() if k}))
    return rows


def _finding(row: dict[str, str], tree: _Tree) -> Finding:
    pathology = row["pathology"].upper()
    descriptors = tuple((key.replace(" ", "_"), row[key]) for key in _DESCRIPTORS if row.get(key))
    mask = tree.resolve(row.get("roi mask file path", ""))
    crop = tree.resolve(row.get("cropped image file path", ""))
    siblings = tree.by_folder.get(_case_folder(mask) or "", []) if mask else []
    others = tuple(dict.fromkeys(p for p in (crop, *sorted(siblings)) if p and p != mask))
    geometry = Geometry(kind="mask", mask_path=mask, mask_candidates=others) if mask else None
    return Finding(label=PATHOLOGY[pathology], subtype=pathology, descriptors=descriptors, geometry=geometry)


def scan(root: Path) -> Scan:
    root = Path(root)
    result = Scan()
    files = walk(root)
    tree = _Tree(files)
    rows = _rows(root, files)
    per_image: dict[str, list[Finding]] = defaultdict(list)
    context: dict[str, dict[str, str]] = {}
    problems: dict[str, list[str]] = defaultdict(list)
    for csv_name, number, row in rows:
        where = f"{csv_name}:{number}"
        image = tree.resolve(row.get("image file path", ""))
        if image is None:
            missing = _clean(row.get("image file path")).replace("\\", "/").strip("/") or where
            result.rejections.append(
                Rejection(missing, "scan", f"named by {where} but not found", is_image=False)
            )
            continue
        pathology = row.get("pathology", "").upper()
        if pathology not in PATHOLOGY:
            problems[image].append(f"{where}: unknown pathology {pathology or '(empty)'!r}")
            continue
        per_image[image].append(_finding(row, tree))
        context.setdefault(image, row)
    full_images = {
        p for folder, paths in tree.by_folder.items() if not _folder_parts(folder)[6] for p in paths
    }
    result.auxiliary = len(files) - len(full_images)
    for path in sorted(full_images):
        findings = per_image.get(path)
        if not findings:
            reason = "; ".join(problems.get(path, [])) or "not described by any case-description CSV row"
            result.rejections.append(Rejection(path, "scan", reason))
            continue
        for problem in problems.get(path, []):
            result.rejections.append(Rejection(path.rsplit("/", 1)[0], "scan", problem, is_image=False))
        row = context[path]
        folder = _folder_parts(next(p for p in path.split("/") if _FOLDER.match(p)))
        density = row.get("breast_density") or row.get("breast density") or ""
        result.records.append(
            ImageRecord(
                collection=NAME,
                path=path,
                patient_ref=row.get("patient_id", folder[3]),
                findings=tuple(findings),
                view=(row.get("image view") or folder[5]).upper(),
                laterality="L"
                if (row.get("left or right breast") or folder[4]).upper().startswith("L")
                else "R",
                attributes=(("density", density), ("official_split", folder[2].lower())),
            )
        )
    return result


def decode(root: Path, record: ImageRecord) -> Decoded:
    return decode_dicom(Path(root) / record.path)
