"""Hostile and broken input, every reader: a generated matrix of faults, each job run for real on it.

    python -m benchmarks.faults [--out DIR] [--readers mias,cbis_ddsm,...] [--json FILE]

A small synthetic corpus (the four collections, a landing folder, the experts' reports folder) is written
once; each reader's folder is then copied twice: as it is (the baseline) and with every fault of that
reader's matrix planted in it, each fault on its own file (or metadata row). The jobs run as a user runs
them, one process per reader and run (``oncolake ingest --source NAME=DIR``, ``oncolake land DIR``,
``oncolake reports DIR``), into one lakehouse for the baselines and one for the faulted copies. As root
the faulted runs drop the capabilities that let root read any file (``setpriv`` without
``CAP_DAC_OVERRIDE`` / ``CAP_DAC_READ_SEARCH``), so a file with mode 000 is unreadable to them as it would
be to a service account.

Faults (per reader; see ``MATRIX``): truncations at 10/50/90% of the file, random bytes under the right
name, empty files, headers declaring huge sizes (PNG, PGM, DICOM, the lossless JPEG's SOF3, the .ics),
PGM maxval 0 and 70000, PGM headers of words, DICOM without pixel data or with an unknown transfer
syntax, metadata with a byte-order mark, CRLF line ends, blank lines and trailing spaces, CSV rows with a
stray quote, ``NA`` / ``N/A`` / empty cells, duplicated rows, rows naming absent files, ``../`` and
absolute paths, quoted paths holding a newline, symlinks out of the root (to a file and to a folder),
symlink loops, unreadable files, names that are not UTF-8.

Figures, per reader: fault kinds tried; crashes (a job that exits non-zero or prints a traceback);
files lost (``seen - ingested - already_present - quarantined - erased`` in the job's own summary, plus
good files of the baseline missing from the faulted run without a fault of their own); reads outside the
root (a canary image outside each root, which links and metadata point to: its content must not be in
any table); faults not accounted for (the fault's file neither quarantined nor ingested); and the peak
memory of the jobs' Python workers (the decoders), which must stay under 1 GB on the bombs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: the repository's packages come first
    sys.path.insert(0, str(REPO))

from benchmarks.common import PeakMemory  # noqa: E402

READERS = ("breakhis", "mias", "ddsm", "cbis_ddsm", "landing", "reports")
GB = 1 << 30


@dataclass
class Fault:
    """One planted fault: its kind, the file (relative to the root) it lives in, and what must happen."""

    kind: str
    target: str  # the file (or the metadata file) the fault is in, relative to the reader's root
    expect: str  # "quarantined": the target is quarantined; "ingested": it is read as a good file;
    # "refused": nothing is read through it (links and paths out of the root, loops); "accounted": either


@dataclass
class ReaderResult:
    reader: str
    kinds: int
    faults: int
    exit_code: int
    traceback: bool
    seen: int = 0
    accounted: int = 0
    lost: int = 0
    good_missing: int = 0
    outside_reads: int = 0
    unaccounted: list[str] = field(default_factory=list)
    worker_peak_mb: float = 0.0
    seconds: float = 0.0


# --- byte-level helpers -------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int) -> bytes:
    """A valid PNG header declaring ``width`` x ``height`` 8-bit grey pixels, with one row of data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (width + 1))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def truncate(path: Path, fraction: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * fraction))])


def random_bytes(path: Path, rng: random.Random) -> None:
    size = max(256, path.stat().st_size)
    path.write_bytes(bytes(rng.getrandbits(8) for _ in range(min(size, 65536))))


def rel(path: Path, root: Path) -> str:
    return str(path.relative_to(root))


def link_out(root: Path, where: Path, canary: Path, name: str) -> str:
    """A symlink inside the root (beside ``where``) pointing at the canary outside it."""
    link = where.parent / name
    link.symlink_to(canary)
    return rel(link, root)


def link_loop(root: Path, where: Path) -> str:
    """A folder symlink that points at its own parent: walking it naively never ends."""
    link = where.parent / "loop"
    link.symlink_to(where.parent, target_is_directory=True)
    return rel(link, root)


def not_utf8(root: Path, source: Path) -> str:
    """A copy of ``source`` under a name that is not valid UTF-8 (Latin-1 bytes), beside it."""
    raw = os.fsencode(source.parent) + b"/caf\xe9-" + os.fsencode(source.name)
    with open(raw, "wb") as out:
        out.write(source.read_bytes())
    return os.fsdecode(raw)[len(str(root)) + 1 :]


def unreadable(path: Path) -> None:
    path.chmod(0o000)


# --- the matrix, per reader -----------------------------------------------------------------------------

Planter = Callable[[Path, Path, random.Random], list[Fault]]


def _images(root: Path, pattern: str, planted: set[str]) -> list[Path]:
    return [p for p in sorted(root.rglob(pattern)) if p.is_file() and rel(p, root) not in planted]


def _file_faults(
    root: Path, files: list[Path], canary: Path, rng: random.Random, bomb: bytes | None
) -> list[Fault]:
    """The faults every image format gets, one file each (``files`` holds enough good files)."""
    faults = []
    pick = iter(files)
    for fraction in (0.1, 0.5, 0.9):
        path = next(pick)
        truncate(path, fraction)
        faults.append(Fault(f"truncated at {int(fraction * 100)}%", rel(path, root), "quarantined"))
    path = next(pick)
    random_bytes(path, rng)
    faults.append(Fault("random bytes", rel(path, root), "quarantined"))
    path = next(pick)
    path.write_bytes(b"")
    faults.append(Fault("empty file", rel(path, root), "quarantined"))
    if bomb is not None:
        path = next(pick)
        path.write_bytes(bomb)
        faults.append(Fault("header declares a huge size", rel(path, root), "quarantined"))
    path = next(pick)
    unreadable(path)
    faults.append(Fault("unreadable (mode 000)", rel(path, root), "quarantined"))
    source = next(pick)
    faults.append(Fault("name not UTF-8", not_utf8(root, source), "quarantined"))
    where = next(pick)
    faults.append(
        Fault(
            "symlink to a file outside the root", link_out(root, where, canary, f"x{where.name}"), "refused"
        )
    )
    faults.append(Fault("symlink loop", link_loop(root, where), "refused"))
    outside_dir = where.parent / "elsewhere"
    outside_dir.symlink_to(canary.parent, target_is_directory=True)
    faults.append(Fault("symlink to a folder outside the root", rel(outside_dir, root), "refused"))
    return faults


def plant_breakhis(root: Path, canary: Path, rng: random.Random, planted: set[str]) -> list[Fault]:
    files = _images(root, "*.png", planted)
    faults = _file_faults(root, files[:12], canary, rng, png_bomb(60000, 60000))
    path = files[12]
    path.write_bytes(png_bomb(9000, 9000))  # below Pillow's own limit, above ours
    faults.append(Fault("header declares a size above our limit only", rel(path, root), "quarantined"))
    path = files[13]
    path.write_bytes(b"\xff\xd8\xff\xe0" + bytes(rng.getrandbits(8) for _ in range(4000)))
    faults.append(Fault("a JPEG's bytes under a .png name", rel(path, root), "quarantined"))
    copy = files[14].with_name(files[14].name.replace(".png", "-copy.png"))
    shutil.copy(files[15], copy)
    faults.append(Fault("the same image under a second name", rel(copy, root), "accounted"))
    stray = files[16].parent / "scanner-notes.png"
    shutil.copy(files[16], stray)
    faults.append(Fault("a file whose name is not a BreaKHis name", rel(stray, root), "accounted"))
    return faults


def pgm(width: int, height: int, maxval: int | str, body: bytes = b"\0" * 64) -> bytes:
    return f"P5\n{width} {height}\n{maxval}\n".encode() + body


def plant_mias(root: Path, canary: Path, rng: random.Random, planted: set[str]) -> list[Fault]:
    files = _images(root, "*.pgm", planted)
    info = root / "Info.txt"
    lines = info.read_text().splitlines()
    faults = _file_faults(root, files[:9], canary, rng, pgm(90000, 90000, 255))
    for path, data, kind in (
        (files[9], pgm(4, 4, 0, b"\0" * 16), "PGM maxval 0"),
        (files[10], pgm(4, 4, 70000, b"\0" * 32), "PGM maxval 70000"),
        (files[11], b"P5\nfour four\n255\n" + b"\0" * 16, "PGM header of words"),
    ):
        path.write_bytes(data)
        faults.append(Fault(kind, rel(path, root), "quarantined"))
    ref = files[12].stem
    row = next(line for line in lines if line.startswith(ref))
    lines.insert(lines.index(row), row)  # duplicated row
    faults.append(Fault("duplicated Info.txt row", rel(files[12], root), "ingested"))
    lines.append("mdb990 G NORM")  # a row naming an absent file
    faults.append(Fault("Info.txt row naming an absent file", "mdb990.pgm", "quarantined"))
    lines.append("mdb991 NA N/A  ")  # NA cells
    shutil.copy(files[13], root / "mdb991.pgm")
    faults.append(Fault("Info.txt row of NA / N/A cells", "mdb991.pgm", "accounted"))
    lines.append("../outside/canary G NORM")  # a reference escaping the root
    faults.append(Fault("Info.txt reference with ../", "Info.txt: ../outside/canary G NORM", "quarantined"))
    lines.append(f"{canary.with_suffix('')} G NORM")  # an absolute reference
    faults.append(
        Fault("Info.txt absolute reference", f"Info.txt: {canary.with_suffix('')} G NORM", "quarantined")
    )
    # BOM, CRLF line ends, blank lines and trailing spaces: the good rows still read.
    text = "\ufeff" + "\r\n".join(line + "   " if i % 3 == 0 else line for i, line in enumerate(lines))
    info.write_text(text.replace("\r\nmdb0", "\r\n\r\nmdb0", 3) + "\r\n\r\n")
    faults.append(
        Fault("Info.txt with BOM, CRLF, blank lines, trailing spaces", rel(files[14], root), "ingested")
    )
    return faults


def plant_ddsm(root: Path, canary: Path, rng: random.Random, planted: set[str]) -> list[Fault]:
    files = _images(root, "*.LJPEG", planted)
    bomb = None
    faults = _file_faults(root, files[:9], canary, rng, bomb)
    path = files[9]  # the stream's own frame header declares 60000 x 60000
    data = bytearray(path.read_bytes())
    at = data.find(b"\xff\xc3")
    data[at + 5 : at + 9] = struct.pack(">HH", 60000, 60000)
    path.write_bytes(bytes(data))
    faults.append(Fault("LJPEG frame header declares a huge size", rel(path, root), "quarantined"))
    path = files[10]
    data = path.read_bytes()
    path.write_bytes(data.replace(b"\xff\xc3", b"\xff\xc9", 1))  # no SOF3
    faults.append(Fault("LJPEG without a frame header", rel(path, root), "quarantined"))
    # .ics and .OVERLAY faults, each in a case of its own that no file fault touched.
    touched = {p.parent for p in files[:11]} | {files[-1].parent}
    free = [case for case in sorted({p.parent for p in files}) if case not in touched]
    overlay_cases = [case for case in free if any(case.glob("*.OVERLAY"))]
    plain_cases = [case for case in free if case not in overlay_cases[:2]]

    def view_file(case: Path, view: str) -> Path:
        return next(case.glob(f"*.{view}.LJPEG"))

    case = plain_cases[0]
    ics = next(case.glob("*.ics"))
    text = ics.read_text()
    line = next(line for line in text.splitlines() if " LINES " in line)
    view = line.split()[0]
    huge = f"{view} LINES 90000 PIXELS_PER_LINE 90000 BITS_PER_PIXEL 16 RESOLUTION 50 NON_OVERLAY"
    ics.write_text(text.replace(line, huge))
    faults.append(Fault(".ics declares a huge size", rel(view_file(case, view), root), "quarantined"))
    case = plain_cases[1]
    ics = next(case.glob("*.ics"))
    truncate(ics, 0.3)
    faults.append(Fault(".ics truncated", rel(next(case.glob("*.LJPEG")), root), "accounted"))
    case = plain_cases[2]
    ics = next(case.glob("*.ics"))
    lines = [line.replace("RESOLUTION 50", "RESOLUTION 43.5") + "  " for line in ics.read_text().splitlines()]
    ics.write_text("\ufeff\r\n" + "\r\n".join(lines) + "\r\n\r\n")
    target = rel(next(case.glob("*.LJPEG")), root)
    faults.append(
        Fault(".ics with BOM, CRLF, blank lines, trailing spaces, decimal resolution", target, "ingested")
    )
    case = plain_cases[3]
    ics = next(case.glob("*.ics"))
    text = ics.read_text()
    line = next(line for line in text.splitlines() if " LINES " in line)
    ics.write_text(text.replace(line, line.replace(" LINES ", " LINES lots ")))
    faults.append(
        Fault(".ics size that is not a number", rel(view_file(case, line.split()[0]), root), "accounted")
    )
    overlay = next(overlay_cases[0].glob("*.OVERLAY"))
    overlay.write_bytes(bytes(rng.getrandbits(8) for _ in range(2000)))
    target = rel(overlay.with_name(overlay.name.replace(".OVERLAY", ".LJPEG")), root)
    faults.append(Fault(".OVERLAY of random bytes", target, "accounted"))
    overlay = next(overlay_cases[1].glob("*.OVERLAY"))
    overlay.write_text(overlay.read_text().replace("BOUNDARY\n", "BOUNDARY\n999999 999999 ", 1))
    target = rel(overlay.with_name(overlay.name.replace(".OVERLAY", ".LJPEG")), root)
    faults.append(Fault(".OVERLAY boundary outside the image", target, "accounted"))
    absent = files[-1]
    absent.unlink()
    faults.append(Fault(".ics names a view whose LJPEG is absent", rel(absent, root), "quarantined"))
    return faults


def plant_cbis(root: Path, canary: Path, rng: random.Random, planted: set[str]) -> list[Fault]:
    import pydicom

    csvs = sorted(root.glob("*.csv"))
    train = next(p for p in csvs if "mass" in p.name and "train" in p.name)
    rows = train.read_text().splitlines()
    header, body = rows[0], rows[1:]
    # Only full mammograms listed in the CSV are images; pick among those.
    listed = [line.split(",")[11] for line in body if line.count(",") >= 13]
    full = [root / "CBIS-DDSM" / p for p in listed if (root / "CBIS-DDSM" / p).is_file()]
    full = [p for p in full if rel(p, root) not in planted]
    calc = sorted(
        root / "CBIS-DDSM" / line.split(",")[11]
        for p in csvs
        if "calc" in p.name and "train" in p.name
        for line in p.read_text().splitlines()[1:]
        if line.count(",") >= 13
    )
    files = [p for p in full if p.is_file()] + [
        p for p in calc if p.is_file() and rel(p, root) not in planted
    ]
    faults = _file_faults(root, files[:9], canary, rng, None)
    path = files[9]
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns = 60000, 60000
    ds.save_as(path)
    faults.append(Fault("DICOM header declares a huge size", rel(path, root), "quarantined"))
    path = files[10]
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    faults.append(Fault("DICOM without pixel data", rel(path, root), "quarantined"))
    path = files[11]
    uid = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID).encode()
    unknown = (b"1.2.3." + b"9" * len(uid))[: len(uid)]  # same length: the meta group's lengths hold
    path.write_bytes(path.read_bytes().replace(uid, unknown, 1))
    faults.append(Fault("DICOM with an unknown transfer syntax", rel(path, root), "quarantined"))

    # CSV faults, each on a row of its own.
    def row_of(path: Path) -> int:
        key = rel(path, root / "CBIS-DDSM")
        return next(i for i, line in enumerate(body) if f",{key}," in line)

    bad = {}
    last: list[str] = []  # the stray quote's row goes last: the CSV parser reads on to the next quote
    if len(files) > 13 and files[12] in full:
        i = row_of(files[12])
        cells = body[i].split(",")
        cells[9] = '"BENIGN'  # a stray quote
        last.append(",".join(cells))
        bad[i] = ""
        faults.append(Fault("CSV row with a stray quote", rel(files[12], root), "accounted"))
    if len(full) > 13:
        i = row_of(full[13])
        cells = body[i].split(",")
        cells[1], cells[9], cells[10] = "NA", "N/A", ""
        bad[i] = ",".join(cells)
        faults.append(Fault("CSV row with NA / N/A / empty cells", rel(full[13], root), "accounted"))
    if len(full) > 14:
        i = row_of(full[14])
        cells = body[i].split(",")
        cells[11] = (
            '"' + cells[11][:30] + "\n" + cells[11][30:] + '  "'
        )  # newline and spaces in a quoted path
        bad[i] = ",".join(cells)
        faults.append(
            Fault("CSV quoted path with a newline and trailing spaces", rel(full[14], root), "ingested")
        )
    for i, line in bad.items():
        body[i] = line
    template = next(line for line in body if line).split(",")
    extra = []
    absent = ",".join([*template[:11], "Mass-Training_P_09999_LEFT_CC/1.2/3.4/000000.dcm", *template[12:]])
    extra.append(absent)
    faults.append(
        Fault(
            "CSV row naming an absent file",
            "Mass-Training_P_09999_LEFT_CC/1.2/3.4/000000.dcm",
            "quarantined",
        )
    )
    escape = ",".join([*template[:11], "../../outside/canary.dcm", *template[12:]])
    extra.append(escape)
    faults.append(Fault("CSV path with ../", "../../outside/canary.dcm", "refused"))
    absolute = ",".join([*template[:11], str(canary), *template[12:]])
    extra.append(absolute)
    faults.append(Fault("CSV absolute path", str(canary), "refused"))
    extra.append(next(line for line in body[1:] if line))  # a duplicated row
    faults.append(Fault("duplicated CSV row", "", "accounted"))
    body = [line for line in body if line]
    train.write_text("\ufeff" + "\r\n".join([header, *body, *extra, *last]) + "\r\n")
    faults.append(Fault("CSV with a byte-order mark and CRLF", "", "accounted"))
    return faults


def plant_landing(root: Path, canary: Path, rng: random.Random, planted: set[str]) -> list[Fault]:
    import pydicom

    pngs = _images(root, "*.png", planted)
    pgms = _images(root, "*.pgm", planted)
    dcms = _images(root, "*.dcm", planted)
    faults = _file_faults(
        root, pngs[:9] if len(pngs) >= 9 else pngs + pgms, canary, rng, png_bomb(60000, 60000)
    )
    pgm_path = pgms[-1]
    pgm_path.write_bytes(pgm(4, 4, 0, b"\0" * 16))
    faults.append(Fault("PGM maxval 0", rel(pgm_path, root), "quarantined"))
    ds = pydicom.dcmread(dcms[0])
    ds.Rows, ds.Columns = 60000, 60000
    ds.save_as(dcms[0])
    faults.append(Fault("DICOM header declares a huge size", rel(dcms[0], root), "quarantined"))
    ds = pydicom.dcmread(dcms[1])
    del ds.PixelData
    ds.save_as(dcms[1])
    faults.append(Fault("DICOM without pixel data", rel(dcms[1], root), "quarantined"))
    truncate(dcms[2], 0.5)
    faults.append(Fault("DICOM truncated", rel(dcms[2], root), "quarantined"))
    odd = root / "mammography" / "scan.tiff"
    odd.write_bytes(b"II*\0" + bytes(200))
    faults.append(Fault("an unsupported file type", rel(odd, root), "quarantined"))
    return faults


def plant_reports(root: Path, canary: Path, rng: random.Random, planted: set[str]) -> list[Fault]:
    jsonls = sorted(root.glob("reader-0*.jsonl"))
    csvs = sorted(root.glob("reader-*.csv"))
    faults = []
    truncate(jsonls[0], 0.5)
    faults.append(Fault("JSON Lines cut mid-line", rel(jsonls[0], root), "accounted"))
    random_bytes(jsonls[1], rng)
    faults.append(Fault("random bytes", rel(jsonls[1], root), "quarantined"))
    jsonls[2].write_bytes(b"")
    faults.append(Fault("empty file", rel(jsonls[2], root), "accounted"))
    lines = jsonls[3].read_text().splitlines()
    jsonls[3].write_text("\n".join([lines[0], lines[0], "{not json", *lines[1:]]) + "\n")
    faults.append(Fault("duplicated report and a line that is not JSON", rel(jsonls[3], root), "accounted"))
    text = csvs[0].read_text()
    csvs[0].write_text("\ufeff" + text.replace("\n", "\r\n"))
    faults.append(Fault("CSV with a byte-order mark and CRLF", rel(csvs[0], root), "ingested"))
    rows = csvs[1].read_text().splitlines()
    cells = rows[1].split(",")
    cells[6] = '"malignant'
    rows[1] = ",".join(cells)
    csvs[1].write_text("\n".join(rows) + "\n")
    faults.append(Fault("CSV row with a stray quote", rel(csvs[1], root), "accounted"))
    rows = csvs[2].read_text().splitlines()
    cells = rows[1].split(",")
    cells[6], cells[7] = "N/A", "NA"
    rows[1] = ",".join(cells)
    csvs[2].write_text("\n".join(rows) + "\n")
    faults.append(Fault("CSV row with NA / N/A cells", rel(csvs[2], root), "accounted"))
    (root / "escape.jsonl").write_text(
        json.dumps(
            {"reporter": "r-x", "collection": "mias", "path": "../../outside/canary.pgm", "label": "normal"}
        )
        + "\n"
        + json.dumps({"reporter": "r-x", "collection": "mias", "path": str(canary), "label": "normal"})
        + "\n"
        + json.dumps({"reporter": "r-x", "image_id": "0" * 32, "label": "normal"})
        + "\n"
    )
    faults.append(Fault("reports naming ../, absolute and absent images", "escape.jsonl", "accounted"))
    lines = jsonls[7].read_text().splitlines()
    first = json.loads(lines[0])
    odd = [
        {**first, "report_id": "odd-1", "label": "maybe"},
        {**first, "report_id": "odd-2", "marks": [{"kind": "circle", "x": -5e9, "y": 1e12, "radius": -3}]},
        {**first, "report_id": "odd-3", "reported_at": "yesterday", "birads": "NA"},
    ]
    jsonls[7].write_text("\ufeff" + "\n".join([*lines, *(json.dumps(o) for o in odd)]) + "\n")
    faults.append(Fault("JSON Lines with a BOM", rel(jsonls[7], root), "ingested"))
    faults.append(
        Fault(
            "unknown label; marks far outside the image; bad time and NA", rel(jsonls[7], root), "accounted"
        )
    )
    export = root / "label-studio-export.json"
    export.write_text('[{"id": 1, "annotations": [{"result": [')
    faults.append(Fault("a Label Studio export cut short", rel(export, root), "quarantined"))
    faults.append(Fault("name not UTF-8", not_utf8(root, jsonls[4]), "quarantined"))
    unreadable(jsonls[5])
    faults.append(Fault("unreadable (mode 000)", rel(jsonls[5], root), "quarantined"))
    faults.append(
        Fault(
            "symlink to a file outside the root",
            link_out(root, jsonls[6], canary, "outside.jsonl"),
            "refused",
        )
    )
    faults.append(Fault("symlink loop", link_loop(root, jsonls[6]), "refused"))
    return faults


PLANTERS: dict[str, Any] = {
    "breakhis": plant_breakhis,
    "mias": plant_mias,
    "ddsm": plant_ddsm,
    "cbis_ddsm": plant_cbis,
    "landing": plant_landing,
    "reports": plant_reports,
}
CANARY_SUFFIX = {
    "breakhis": ".png",
    "mias": ".pgm",
    "ddsm": ".LJPEG",
    "cbis_ddsm": ".dcm",
    "landing": ".png",
    "reports": ".jsonl",
}


# --- running the jobs and judging them ------------------------------------------------------------------

ROOT_NAMES = {"breakhis": "BreaKHis_v1", "mias": "all-mias", "ddsm": "DDSM", "cbis_ddsm": "CBIS-DDSM"}
DROP_DAC = [
    "setpriv",
    "--bounding-set=-dac_override,-dac_read_search",
    "--inh-caps=-dac_override,-dac_read_search",
]
SECRET = "faults-benchmark-secret"


def is_worker(cmdline: str) -> bool:
    """A PySpark Python worker (the decoders run there)."""
    return "pyspark" in cmdline and ("daemon" in cmdline or "worker" in cmdline)


def job(argv: list[str], lakehouse: Path, log: Path) -> tuple[int, str]:
    """One job as its own process (capabilities to read any file dropped, as root); exit code and output."""
    prefix = DROP_DAC if os.geteuid() == 0 and shutil.which("setpriv") else []
    args = [
        *prefix,
        sys.executable,
        "-m",
        "jobs.cli",
        *argv,
        "--config",
        "tiny",
        "--set",
        f"lakehouse.root={lakehouse}",
    ]
    env = {**os.environ, "ONCOLAKE_PSEUDONYM_SECRET": SECRET, "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        code = subprocess.run(
            args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=1800
        ).returncode
    return code, log.read_text(errors="replace")


def run_reader(reader: str, root: Path, lakehouse: Path, logs: Path, name: str) -> tuple[int, str, dict]:
    summary = logs / f"{name}.json"
    if reader == "landing":
        argv = ["land", str(root)]
    elif reader == "reports":
        argv = ["reports", str(root)]
    else:
        argv = ["ingest", f"--source={reader}={root}"]
    code, printed = job([*argv, "--summary-json", str(summary)], lakehouse, logs / f"{name}.log")
    payload = json.loads(summary.read_text()) if summary.exists() else {"collections": {}}
    return code, printed, payload


def _escaped(target: str) -> str:
    try:
        target.encode("utf-8")
    except UnicodeEncodeError:
        return target.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return target


def judge(
    spark: Any,
    reader: str,
    faults: list[Fault],
    lake: Path,
    clean_lake: Path,
    canary: Path,
    result: ReaderResult,
    payload: dict,
) -> None:
    from pyspark.sql import functions as F

    from pipelines.decode import _file_hash
    from pipelines.io import read_table, table_exists
    from pipelines.pseudonym import pseudonymise
    from pipelines.reports import REPORTER_NAMESPACE

    collection = {"reports": "reports", "landing": "landing"}.get(reader, reader)
    summary = payload.get("collections", {}).get(collection, {})
    result.seen = summary.get("seen", 0)
    result.lost = result.seen - sum(
        summary.get(k, 0) for k in ("ingested", "already_present", "quarantined", "erased")
    )
    quarantine = read_table(spark, str(lake / "quarantine")).where(F.col("collection") == collection)
    quarantined = {r["path"] for r in quarantine.select("path").collect()}
    images_table = "landing_images" if reader == "landing" else "images"
    ingested: set[str] = set()
    clean: set[str] = set()
    if reader != "reports":
        frame = read_table(spark, str(lake / images_table)).where(F.col("collection") == collection)
        ingested = {r["source_path"] for r in frame.select("source_path").collect()}
        base = read_table(spark, str(clean_lake / images_table)).where(F.col("collection") == collection)
        clean = {r["source_path"] for r in base.select("source_path").collect()}
        hashes = {r["image_id"] for r in frame.select("image_id").collect()}
        result.outside_reads = int(_file_hash(canary) in hashes)
        targets = {f.target for f in faults}
        result.good_missing = len(clean - ingested - targets - quarantined)
    else:
        canary_reader = pseudonymise(SECRET.encode(), REPORTER_NAMESPACE, "canary-reader")
        notes = read_table(spark, str(lake / "annotations"))
        if table_exists(spark, str(lake / "annotations")) and "reporter" in notes.columns:
            result.outside_reads = notes.where(F.col("reporter") == canary_reader).count()
    for fault in faults:
        target = _escaped(fault.target)
        in_quarantine = target in quarantined or any(q.endswith(target) for q in quarantined if target)
        in_images = fault.target in ingested
        ok = {
            "quarantined": in_quarantine,
            "ingested": in_images or reader == "reports",
            "refused": True,  # judged by the canary (outside_reads) for all of them at once
            "accounted": in_quarantine or in_images or not fault.target or reader == "reports",
        }[fault.expect]
        if ok:
            result.accounted += 1
        else:
            result.unaccounted.append(f"{fault.kind} ({fault.expect}): {target}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/oncolake-faults"))
    parser.add_argument("--readers", default=",".join(READERS))
    parser.add_argument("--images", type=int, default=240, help="good images in the corpus (all collections)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    readers = [r for r in args.readers.split(",") if r]

    import synth
    import synth.landing
    from conf import load_settings
    from jobs.session import build_spark

    out = args.out
    shutil.rmtree(out, ignore_errors=True)
    corpus, logs = out / "corpus", out / "logs"
    logs.mkdir(parents=True)
    manifest = synth.generate(corpus, images=args.images, seed=7)
    synth.landing.generate(corpus / "landing", images=36, seed=7)
    clean_lake, fault_lake = out / "lake-clean", out / "lake-faulted"
    results: list[ReaderResult] = []
    rng = random.Random(7)
    plans: dict[str, tuple[list[Fault], Path, Path]] = {}
    for reader in readers:
        source = corpus / (ROOT_NAMES.get(reader) or reader)
        clean_root, fault_root = out / "clean" / source.name, out / "faulted" / source.name
        shutil.copytree(source, clean_root, symlinks=True)
        shutil.copytree(source, fault_root, symlinks=True)
        outside = out / "outside" / reader
        outside.mkdir(parents=True)
        canary = outside / f"canary{CANARY_SUFFIX[reader]}"
        sample = sorted(p for p in source.rglob(f"*{CANARY_SUFFIX[reader]}") if p.stat().st_size > 0)[0]
        if reader == "reports":
            canary.write_text(
                json.dumps({"reporter": "canary-reader", "image_id": "0" * 32, "label": "normal"}) + "\n"
            )
        else:
            shutil.copy(sample, canary)
            with canary.open("ab") as tail:  # its own content (hash), still decodable for most formats
                tail.write(b"\0canary")
        entry = manifest.get(reader) if isinstance(manifest.get(reader), dict) else {}
        planted = {p["path"] for p in entry.get("planted", [])}
        faults = PLANTERS[reader](fault_root, canary, rng, planted)
        plans[reader] = (faults, clean_root, canary)
    # Collections before the reports that name their images; each run in its own process.
    payloads: dict[str, dict] = {}
    for reader in readers:
        faults, clean_root, canary = plans[reader]
        fault_root = out / "faulted" / clean_root.name
        run_reader(reader, clean_root, clean_lake, logs, f"{reader}-clean")
        started = time.monotonic()
        with PeakMemory({"workers": is_worker}, every=0.2, pss=False) as memory:
            code, printed, payload = run_reader(reader, fault_root, fault_lake, logs, f"{reader}-faulted")
        result = ReaderResult(
            reader,
            kinds=len({f.kind for f in faults}),
            faults=len(faults),
            exit_code=code,
            traceback="Traceback (most recent call last)" in printed,
            seconds=round(time.monotonic() - started, 1),
        )
        result.worker_peak_mb = round(memory.peak_process["workers"] / (1 << 20), 1)
        results.append(result)
        payloads[reader] = payload
        print(
            f"faults: {reader}: {len(faults)} faults of {result.kinds} kinds, exit {code} "
            f"({result.seconds} s)",
            flush=True,
        )

    settings = load_settings("tiny", [f"lakehouse.root={fault_lake}", "spark.master=local[2]"])
    spark = build_spark(settings, "faults")
    for result in results:
        faults, _, canary = plans[result.reader]
        judge(spark, result.reader, faults, fault_lake, clean_lake, canary, result, payloads[result.reader])

    columns = ("kinds", "faults", "crashes", "seen", "lost", "good missing", "outside reads", "unaccounted")
    print(f"{'reader':10}" + "".join(f"{c:>15}" for c in (*columns, "worker peak MB")))
    for r in results:
        crash = int(r.exit_code != 0 or r.traceback)
        values = (
            r.kinds,
            r.faults,
            crash,
            r.seen,
            r.lost,
            r.good_missing,
            r.outside_reads,
            len(r.unaccounted),
        )
        print(f"{r.reader:10}" + "".join(f"{v:>15}" for v in (*values, r.worker_peak_mb)))
        for line in r.unaccounted:
            print(f"    unaccounted: {line}")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    bad = [
        r
        for r in results
        if r.exit_code
        or r.traceback
        or r.lost
        or r.good_missing
        or r.outside_reads
        or r.unaccounted
        or r.worker_peak_mb > 1024
    ]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
