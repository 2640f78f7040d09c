"""Hostile files: decompression bombs are refused before anything is allocated, corrupt headers and
names that are not UTF-8 are quarantined with their reason, and an ingest over them neither crashes nor
loses a file.

The decoders are tried one by one (no Spark); then a mini-MIAS download with such files planted is
ingested for real and every file is accounted for.
"""

from __future__ import annotations

import os
import resource
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pyspark.sql import SparkSession

from benchmarks.faults import png_bomb
from conf import Settings
from pipelines import ingest
from pipelines.collections import ingest_collections
from pipelines.io import read_table
from pipelines.pseudonym import DEMO_SECRET
from pipelines.reports import ingest_reports
from pipelines.sources import ddsm, mias
from pipelines.sources.base import NOT_UTF8, DecodeError, ImageRecord, Scan, printable_path
from pipelines.sources.files import decode_dicom, decode_raster, pgm_size, set_pixel_limit
from pipelines.summary import systemic_failure

LIMIT = 60_000_000


@pytest.fixture(autouse=True)
def _default_limit() -> Iterator[None]:
    set_pixel_limit(LIMIT)
    yield
    set_pixel_limit(LIMIT)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        # Below Pillow's own bomb limit (89 MP, it raises only above twice that) and above ours.
        ("ours.png", png_bomb(9000, 9000), "above the limit"),
        ("pillows.png", png_bomb(60000, 60000), "decompression bomb, far above the limit"),
        ("huge.pgm", b"P5\n90000 90000\n255\n" + b"\0" * 64, "above the limit"),
        ("wide16.pgm", b"P5\n20000 20000\n65535\n" + b"\0" * 64, "above the limit"),
        ("zero.pgm", b"P5\n4 4\n0\n" + b"\0" * 16, "maxval 0 outside"),
        ("deep.pgm", b"P5\n4 4\n70000\n" + b"\0" * 32, "maxval 70000 outside"),
        ("words.pgm", b"P5\nfour four\n255\n" + b"\0" * 16, "not a readable image"),
        ("maxword.pgm", b"P5\n4 4\nlots\n" + b"\0" * 16, "not a number"),
        ("empty.png", b"", "empty file"),
        ("random.png", bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), "not a"),
    ],
)
def test_raster_bombs_and_broken_headers_are_refused_without_allocating(
    tmp_path: Path, name: str, data: bytes, reason: str
) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    before = _peak_mb()
    with pytest.raises(DecodeError, match=reason):
        decode_raster(path)
    assert _peak_mb() - before < 200  # nothing near the declared gigabytes was allocated


def test_a_truncated_pgm_and_a_garbage_header_do_not_break_the_scan(tmp_path: Path) -> None:
    good = tmp_path / "good.pgm"
    good.write_bytes(b"P5\n8 6\n255\n" + bytes(48))
    truncated = tmp_path / "cut.pgm"
    truncated.write_bytes(good.read_bytes()[:30])
    garbage = tmp_path / "garbage.pgm"
    garbage.write_bytes(b"P5\nwide tall\n255\n")
    assert pgm_size(good) == (6, 8) and pgm_size(garbage) is None
    with pytest.raises(DecodeError):
        decode_raster(truncated)


def test_the_limit_applies_to_tiff_and_to_every_dicom_before_its_pixels(tmp_path: Path) -> None:
    import pydicom
    from pydicom.data import get_testdata_file

    tiff = tmp_path / "slide.tif"
    Image.fromarray(np.zeros((120, 100), np.uint8)).save(tiff)
    source = Path(str(get_testdata_file("CT_small.dcm")))  # 128 x 128
    set_pixel_limit(10_000)
    with pytest.raises(DecodeError, match="120 x 100 = 12,000 pixels"):
        decode_raster(tiff)
    with pytest.raises(DecodeError, match="DICOM header declares 128 x 128"):
        decode_dicom(source)
    set_pixel_limit(LIMIT)
    dataset = pydicom.dcmread(source)
    dataset.Rows, dataset.Columns = 60000, 60000  # a few kilobytes of pixel data claiming 3.6 GP
    bomb = tmp_path / "bomb.dcm"
    dataset.save_as(bomb)
    before = _peak_mb()
    with pytest.raises(DecodeError, match="60000 x 60000"):
        decode_dicom(bomb)
    assert _peak_mb() - before < 200
    del dataset.PixelData
    bare = tmp_path / "bare.dcm"
    dataset.save_as(bare)
    with pytest.raises(DecodeError, match="without pixel data"):
        decode_dicom(bare)


def test_a_lossless_jpeg_is_refused_on_its_own_frame_header(tmp_path: Path) -> None:
    # The .ics says 100 x 80; the stream's frame header (SOF3) says 60000 x 60000: the codec would
    # allocate what the stream says.
    stream = b"\xff\xd8\xff\xc3\x00\x0b\x0c" + struct.pack(">HH", 60000, 60000) + b"\x01\x01\x11\x00"
    (tmp_path / "A_0001_1.LEFT_CC.LJPEG").write_bytes(stream + b"\0" * 64)
    record = ImageRecord(
        collection="ddsm",
        path="A_0001_1.LEFT_CC.LJPEG",
        patient_ref="p",
        findings=(),
        declared_height=100,
        declared_width=80,
        declared_bit_depth=12,
    )
    assert ddsm.ljpeg_frame(stream) == (60000, 60000, 1)
    with pytest.raises(DecodeError, match="frame header declares 60000 x 60000"):
        ddsm.decode(tmp_path, record)
    (tmp_path / "A_0001_1.LEFT_CC.LJPEG").write_bytes(b"\xff\xd8" + b"\0" * 64)
    with pytest.raises(DecodeError, match="without a frame header"):
        ddsm.decode(tmp_path, record)


def test_names_that_are_not_utf8_become_rejections_with_escaped_names() -> None:
    bad = os.fsdecode(b"mdb\xff01.pgm")
    assert printable_path("mdb001.pgm") is None and printable_path(bad) == "mdb\\xff01.pgm"
    record = ImageRecord(collection="mias", path=bad, patient_ref="p", findings=())
    scan = Scan([record, ImageRecord("mias", "ok.pgm", "q", ())], [], 0).with_readable_names()
    assert [r.path for r in scan.records] == ["ok.pgm"]
    assert [(r.path, r.reason) for r in scan.rejections] == [("mdb\\xff01.pgm", NOT_UTF8)]


def test_an_ingest_over_hostile_files_quarantines_them_and_loses_nothing(
    spark: SparkSession, settings: Settings, corpus_roots: dict[str, str], tmp_path: Path
) -> None:
    root = tmp_path / "all-mias"
    shutil.copytree(corpus_roots["mias"], root)
    pgms = sorted(root.rglob("*.pgm"))
    pgms[0].write_bytes(b"P5\n90000 90000\n255\n" + b"\0" * 64)  # listed in Info.txt: a bomb now
    pgms[1].write_bytes(b"P5\n1024 1024\n0\n" + b"\0" * 64)  # maxval 0
    pgms[2].write_bytes(b"P5\n10\n")  # a header cut short
    odd = os.fsencode(pgms[3].parent) + b"/mdb\xe9t\xe9.pgm"  # Latin-1 bytes, not UTF-8
    with open(odd, "wb") as handle:
        handle.write(pgms[4].read_bytes())
    lake = settings.lakehouse.model_copy(update={"root": str(tmp_path / "lake")})
    local = settings.model_copy(update={"lakehouse": lake})

    summary = ingest_collections(spark, local, {"mias": str(root)}, DEMO_SECRET)["mias"]
    assert summary.seen == summary.ingested + summary.already_present + summary.quarantined
    quarantine = {r["path"]: r["reason"] for r in read_table(spark, lake.table("quarantine")).collect()}
    rel = {p: p.relative_to(root).as_posix() for p in pgms[:3]}
    assert "above the limit" in quarantine[rel[pgms[0]]]
    assert "maxval 0" in quarantine[rel[pgms[1]]]
    assert rel[pgms[2]] in quarantine
    escaped = [path for path in quarantine if "\\xe9" in path]
    assert len(escaped) == 1 and NOT_UTF8 in quarantine[escaped[0]]


def test_systemic_failures_are_told_from_bad_files() -> None:
    def rows(reasons: list[str | None]) -> list[dict[str, object]]:
        return [{"collection": "mias", "status": "quarantined" if r else "ok", "reason": r} for r in reasons]

    missing = "[Errno 2] No such file or directory: '/data/mias/mdb001.pgm'"
    assert "executors do not see the files" in (systemic_failure(rows([missing] * 20)) or "")
    assert "codec is missing" in (
        systemic_failure(rows(["unexpected failure: ModuleNotFoundError: No module named 'x'"] * 12)) or ""
    )
    assert systemic_failure(rows([missing] * 9)) is None  # too few files to judge
    assert systemic_failure(rows([missing] * 8 + [None] * 4)) is None  # a third decoded: the files' own
    assert systemic_failure(rows(["truncated file"] * 30)) is None  # broken files, not a broken cluster


def test_executors_that_cannot_see_the_files_stop_the_run(
    spark: SparkSession, settings: Settings, corpus_roots: dict[str, str], tmp_path: Path
) -> None:
    # The driver scans the collection; the executors look for it elsewhere (a path only the driver
    # mounts): every file fails with the same reason, and the run must say so, not quarantine them all.
    root = Path(corpus_roots["mias"])
    scans = {"mias": mias.scan(root)}
    elsewhere = tmp_path / "not-mounted"
    elsewhere.mkdir()
    decoded = ingest.decode_new(spark, settings, scans, {"mias": str(elsewhere)}, None, DEMO_SECRET)
    outcome = ingest.outcomes(decoded)
    decoded.unpersist()
    assert len(outcome) == len(scans["mias"].records)
    assert "executors do not see the files" in (systemic_failure(outcome) or "")


def test_a_reports_file_whose_name_is_not_utf8_is_quarantined_by_its_escaped_name(
    spark: SparkSession, settings: Settings, tmp_path: Path
) -> None:
    folder = tmp_path / "reports"
    folder.mkdir()
    line = '{"report_id": "r1", "reporter": "a", "image_id": "0123", "label": "benign"}\n'
    (folder / "ok.jsonl").write_text(line)
    with open(os.fsencode(folder) + b"/lecteur-\xe9.jsonl", "wb") as handle:
        handle.write(line.replace("r1", "r2").encode())
    lake = settings.lakehouse.model_copy(update={"root": str(tmp_path / "lake")})
    local = settings.model_copy(update={"lakehouse": lake})
    summary = ingest_reports(spark, local, folder, DEMO_SECRET)
    assert summary.seen == summary.ingested + summary.already_present + summary.quarantined == 2
    quarantine = {r["path"]: r["reason"] for r in read_table(spark, lake.table("quarantine")).collect()}
    assert quarantine["lecteur-\\xe9.jsonl"] == NOT_UTF8


def test_metadata_that_names_no_file_or_a_file_no_metadata_names_is_quarantined(
    corpus_roots: dict[str, str], tmp_path: Path
) -> None:
    """Found by benchmarks/faults.py: a DDSM view the .ics lists without its film, an LJPEG whose name fits
    no view, an .ics size that is not a number, and a MIAS row whose reference is a path, were skipped
    (or stopped the scan) instead of being quarantined."""
    ddsm_root = tmp_path / "DDSM"
    shutil.copytree(corpus_roots["ddsm"], ddsm_root)
    films = sorted(ddsm_root.rglob("*.LJPEG"))
    gone = films[0]
    gone.unlink()
    stray = films[4].with_name("scanner-copy.LJPEG")
    shutil.copy(films[4], stray)
    ics = next(films[8].parent.glob("*.ics"))
    view = films[8].name.split(".")[1]
    ics.write_text(
        "\n".join(
            line.replace(" LINES ", " LINES lots ") if line.startswith(view) else line
            for line in ics.read_text().splitlines()
        )
    )
    scan = ddsm.scan(ddsm_root)
    reasons = {r.path: r.reason for r in scan.rejections}
    assert reasons[str(gone.relative_to(ddsm_root))] == "listed in the .ics header but the file is missing"
    assert "name is not <case>.<VIEW>.LJPEG" in reasons[str(stray.relative_to(ddsm_root))]
    assert reasons[str(films[8].relative_to(ddsm_root))] == f"the .ics header has no size for {view}"

    mias_root = tmp_path / "all-mias"
    shutil.copytree(corpus_roots["mias"], mias_root)
    info = mias_root / "Info.txt"
    info.write_text(info.read_text() + "../../etc/passwd G NORM\n/abs/mdb001 F CALC B 1 1 1\n")
    rows = {r.path for r in mias.scan(mias_root).rejections if not r.is_image}
    assert {"Info.txt: ../../etc/passwd G NORM", "Info.txt: /abs/mdb001 F CALC B 1 1 1"} <= rows
