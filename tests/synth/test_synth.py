"""The synthetic corpus: exact layouts, decodable files, metadata that matches the pixels, honest manifest."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage

import synth
from synth import mias
from synth.ddsm import chain_code
from synth.histology import draw_histology
from synth.mammogram import draw_mammogram

SEED = 7
IMAGES = 48
BREAKHIS = re.compile(
    r"histology_slides/breast/(benign|malignant)/SOB/"
    r"(adenosis|fibroadenoma|phyllodes_tumor|tubular_adenoma|ductal_carcinoma|lobular_carcinoma|"
    r"mucinous_carcinoma|papillary_carcinoma)/SOB_([BM])_(A|F|PT|TA|DC|LC|MC|PC)_(\d{2}-\d+[A-Z]*)/"
    r"(40|100|200|400)X/SOB_\3_\4-\5-\6-\d{3}\.png"
)
DDSM = re.compile(
    r"cases/(normals|benigns|benign_without_callbacks|cancers)/"
    r"(normal|benign|benign_without_callback|cancer)_\d{2}/case(\d{4})/"
    r"([ABC])_\3_1\.(?:(LEFT|RIGHT)_(CC|MLO)\.(LJPEG|OVERLAY)|ics)"
)
CBIS_FOLDER = re.compile(r"(Mass|Calc)-(Training|Test)_(P_\d{5})_(LEFT|RIGHT)_(CC|MLO)(?:_(\d))?")
UID = r"1\.3\.6\.1\.4\.1\.9590\.100\.1\.2\.\d+"
CBIS_PATH = re.compile(rf"({CBIS_FOLDER.pattern})/{UID}/{UID}/00000[01]\.dcm")
MIAS_ROW = re.compile(
    r"(mdb\d{3,}) ([FGD]) "
    r"(?:NORM|(CALC|CIRC|SPIC|MISC|ARCH|ASYM) ([BM])(?: (\d+) (\d+) (\d+)| \*NOTE \d+\*)?)"
)
# Freeman chain code: 0 = north (up), clockwise; (dx, dy) with y growing downwards.
STEPS = {0: (0, -1), 1: (1, -1), 2: (1, 0), 3: (1, 1), 4: (0, 1), 5: (-1, 1), 6: (-1, 0), 7: (-1, -1)}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("corpus")
    lines: list[str] = []
    manifest = synth.generate(out, images=IMAGES, downscale=16, seed=SEED, progress=lines.append)
    assert lines, "progress was never called"
    return out, manifest


def files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def planted(manifest: dict, collection: str) -> dict[str, str]:
    return {entry["path"]: entry["kind"] for entry in manifest[collection]["planted"]}


def quirks(manifest: dict, collection: str, kind: str) -> list[str]:
    return [entry["path"] for entry in manifest[collection]["quirks"] if entry["kind"] == kind]


def brighter(image: np.ndarray, inside: np.ndarray, width: int) -> bool:
    """Whether a region is clearly brighter, on average, than a ring of ``width`` pixels around it."""
    ring = ndimage.binary_dilation(inside, iterations=width) & ~inside
    return bool(image[inside].mean() > image[ring].mean() + 0.02 * (image.max() - image.min()))


def bright_dots(image: np.ndarray, inside: np.ndarray) -> bool:
    """Whether the brightest pixels inside a region stand clearly above the tissue ring around it."""
    ring = ndimage.binary_dilation(inside, iterations=6) & ~inside
    top = np.sort(image[inside])[-3:].mean()
    return bool(top > np.percentile(image[ring], 99) + 0.03 * (image.max() - image.min()))


def test_manifest_on_disk_and_returned(corpus: tuple[Path, dict]) -> None:
    out, manifest = corpus
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert set(manifest) == {"breakhis", "mias", "ddsm", "cbis_ddsm"}
    assert {name: entry["root"] for name, entry in manifest.items()} == {
        "breakhis": "BreaKHis_v1",
        "mias": "all-mias",
        "ddsm": "DDSM",
        "cbis_ddsm": "CBIS-DDSM",
    }
    counts = {name: entry["images"] for name, entry in manifest.items()}
    assert counts == {"breakhis": 15, "mias": 15, "ddsm": 9, "cbis_ddsm": 9}
    assert sum(counts.values()) == IMAGES
    for entry in manifest.values():
        assert sum(entry["labels"].values()) == entry["images"]
        assert 3 <= len(entry["planted"]) <= 5
        assert 0 < entry["patients"] <= entry["images"]
    assert manifest["cbis_ddsm"]["labels"]["normal"] == 0
    assert manifest["breakhis"]["labels"]["normal"] == 0


def test_manifest_counts_match_files(corpus: tuple[Path, dict]) -> None:
    """Every file is a good image, a planted one or auxiliary, and the manifest says how many of each."""
    out, manifest = corpus
    for entry in manifest.values():
        root = out / entry["root"]
        on_disk = set(files(root))
        bad_on_disk = {path for path in planted(manifest, _name(manifest, entry)) if path in on_disk}
        assert len(on_disk) == entry["images"] + len(bad_on_disk) + entry["auxiliary"]
        for quirk in entry["quirks"]:
            assert (root / quirk["path"]).exists()
    missing = {kind for path, kind in {**planted(manifest, "mias"), **planted(manifest, "cbis_ddsm")}.items()}
    assert "missing_file" in missing


def _name(manifest: dict, entry: dict) -> str:
    return next(name for name, candidate in manifest.items() if candidate is entry)


def test_breakhis(corpus: tuple[Path, dict]) -> None:
    out, manifest = corpus
    root = out / "BreaKHis_v1"
    bad = planted(manifest, "breakhis")
    assert sorted(bad.values()) == ["empty", "not_png", "truncated"]
    tokens: dict[str, set[str]] = {}
    labels = {"benign": 0, "malignant": 0}
    for path in files(root):
        match = BREAKHIS.fullmatch(path)
        assert match, path
        assert match[3] == match[1][0].upper()
        tokens.setdefault(match[5], set()).add(match[2])
        if path in bad:
            continue
        with Image.open(root / path) as image:
            assert image.format == "PNG" and image.mode == "RGB"
            assert image.size == (175, 115)  # 700x460 shrunk by sqrt(16)
            pixels = np.asarray(image)
        assert pixels[..., 1].mean() < pixels[..., 0].mean()  # eosin pink / hematoxylin purple, not grey
        labels[match[1]] += 1
    assert labels == {k: v for k, v in manifest["breakhis"]["labels"].items() if k != "normal"}
    assert manifest["breakhis"]["patients"] == len(tokens)
    by_number: dict[str, set[str]] = {}
    for token, subtypes in tokens.items():
        by_number.setdefault(re.sub(r"[A-Z]+$", "", token), set()).update(subtypes)
    assert any(len(subtypes) == 2 for subtypes in by_number.values()), "no slide id shared by two subtypes"
    assert len(quirks(manifest, "breakhis", "shared_slide_id")) == 2

    for path, kind in bad.items():
        data = (root / path).read_bytes()
        if kind == "empty":
            assert data == b""
        elif kind == "not_png":
            assert data and not data.startswith(b"\x89PNG")
        else:
            assert data.startswith(b"\x89PNG")
            with pytest.raises(OSError), Image.open(root / path) as image:
                image.load()


def test_histology_classes_differ() -> None:
    """Malignant tiles carry more, larger and darker nuclei; magnification makes nuclei bigger."""
    rng = np.random.default_rng(0)

    def nuclear_fraction(malignant: bool, magnification: int) -> float:
        tile = draw_histology(230, 350, rng, malignant=malignant, magnification=magnification).astype(float)
        return float(((tile[..., 0] < 150) & (tile[..., 2] > tile[..., 1])).mean())

    benign = [nuclear_fraction(False, 100) for _ in range(8)]
    malignant = [nuclear_fraction(True, 100) for _ in range(8)]
    assert np.mean(malignant) > np.mean(benign) + 0.05

    def blob_size(magnification: int) -> float:
        tile = draw_histology(230, 350, rng, malignant=False, magnification=magnification)
        dark = tile[..., 0] < 150
        _, count = ndimage.label(dark)
        return dark.sum() / max(count, 1)

    assert blob_size(400) > 4 * blob_size(40)


def test_mias(corpus: tuple[Path, dict]) -> None:
    out, manifest = corpus
    root = out / "all-mias"
    bad = planted(manifest, "mias")
    assert sorted(bad.values()) == ["empty", "missing_file", "truncated", "unknown_class", "unlisted"]
    lines = (root / "Info.txt").read_text().splitlines()
    header = [line for line in lines if not line.startswith("mdb")]
    assert header and lines[: len(header)] == header, "prose header lines come first"
    rows = [line for line in lines if line.startswith("mdb")]
    listed = {row.split()[0] for row in rows}
    pgms = {path for path in files(root) if path.endswith(".pgm")}
    assert all(re.fullmatch(r"mdb\d{3,}\.pgm", path) for path in pgms)
    assert files(root) == sorted([*pgms, "Info.txt"])

    unknown = [row for row in rows if not MIAS_ROW.fullmatch(row.rstrip())]
    assert [f"{row.split()[0]}.pgm" for row in unknown] == [
        path for path, kind in bad.items() if kind == "unknown_class"
    ]
    missing = next(path for path, kind in bad.items() if kind == "missing_file")
    assert missing[:-4] in listed and missing not in pgms
    unlisted = next(path for path, kind in bad.items() if kind == "unlisted")
    assert unlisted in pgms and unlisted[:-4] not in listed
    assert any(row.endswith("*NOTE 3*") for row in rows)

    good = sorted(pgms - set(bad))
    assert len(good) == manifest["mias"]["images"]
    patients = {(int(path[3:-4]) + 1) // 2 for path in good}
    assert len(patients) == manifest["mias"]["patients"]
    checked = 0
    for path in good:
        data = (root / path).read_bytes()
        assert data.startswith(b"P5\n64 64\n255\n")
        with Image.open(root / path) as image:
            assert image.mode == "L" and image.size == (64, 64)
            pixels = np.asarray(image).astype(float)
        number = int(path[3:-4])
        chest_wall = pixels[:, :4].mean() if number % 2 else pixels[:, -4:].mean()
        far_side = pixels[:, -4:].mean() if number % 2 else pixels[:, :4].mean()
        assert chest_wall > far_side + 40, (
            f"{path}: breast not against the {'left' if number % 2 else 'right'}"
        )
        for row in rows:
            match = MIAS_ROW.fullmatch(row.rstrip())
            if match and match[1] == path[:-4] and match[5] and match[3] != "CALC":
                x, y, radius = int(match[5]), int(match[6]), int(match[7])
                yy, xx = np.mgrid[0:64, 0:64]
                inside = np.hypot(xx - x, yy - (64 - y)) <= radius * 0.5  # origin bottom-left
                assert brighter(pixels, inside, max(2, radius)), (
                    f"{row}: no mass at its bottom-left-origin circle"
                )
                checked += 1
    assert checked >= 1


def test_mias_four_digit_refnums_and_full_size(tmp_path: Path) -> None:
    report = mias.generate(tmp_path, 1000, 64.0, 1, np.random.default_rng(0), lambda _: None)
    names = {path.name for path in tmp_path.glob("*.pgm")}
    assert "mdb1000.pgm" in names and "mdb999.pgm" in names
    assert any(line.startswith("mdb1000 ") for line in (tmp_path / "Info.txt").read_text().splitlines())
    full = [quirk["path"] for quirk in report.quirks if quirk["kind"] == "full_size"]
    assert len(full) == 1
    with Image.open(tmp_path / full[0]) as image:
        assert image.size == (1024, 1024)
    assert report.images == 1000


def chain_points(line: str) -> np.ndarray:
    """Decode ``col row code code ... #`` into the outline's pixel positions."""
    parts = line.split()
    assert parts[-1] == "#"
    x, y = int(parts[0]), int(parts[1])
    points = [(x, y)]
    for code in parts[2:-1]:
        dx, dy = STEPS[int(code)]
        x, y = x + dx, y + dy
        points.append((x, y))
    return np.array(points)


def test_chain_code_directions() -> None:
    """0 is north and codes go clockwise, with y growing downwards (image rows)."""
    square = np.array([[10, 10], [14, 10], [14, 14], [10, 14]], dtype=float)
    x, y, codes = chain_code(square, 100, 100)
    assert (x, y) == (10, 10)
    assert codes == [2] * 4 + [4] * 4 + [6] * 4 + [0] * 4
    diamond = np.array([[20, 10], [23, 13], [20, 16], [17, 13]], dtype=float)
    assert chain_code(diamond, 100, 100)[2] == [3] * 3 + [5] * 3 + [7] * 3 + [1] * 3
    points = chain_points(f"{x} {y} {' '.join(map(str, codes))} #")
    assert (points.min(axis=0) == [10, 10]).all() and (points.max(axis=0) == [14, 14]).all()


def parse_ics(path: Path) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    fields, views = {}, {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts and parts[0] in ("LEFT_CC", "LEFT_MLO", "RIGHT_CC", "RIGHT_MLO"):
            views[parts[0]] = {**dict(zip(parts[1:-1:2], parts[2:-1:2], strict=True)), "overlay": parts[-1]}
        elif parts:
            fields[parts[0]] = " ".join(parts[1:])
    return fields, views


def test_ddsm(corpus: tuple[Path, dict]) -> None:
    out, manifest = corpus
    root = out / "DDSM"
    bad = planted(manifest, "ddsm")
    assert sorted(bad.values()) == ["empty", "size_mismatch", "truncated"]
    swapped = quirks(manifest, "ddsm", "swapped_dimensions")
    assert len(swapped) == 1 and swapped[0] not in bad
    paths = files(root)
    for path in paths:
        match = DDSM.fullmatch(path)
        assert match, path
        assert {"normals": "A", "cancers": "C"}.get(match[1], "B") == match[4]
        assert match[2] == match[1].rstrip("s").replace("benign_without_callback", "benign_without_callback")

    labels = {"normal": 0, "benign": 0, "malignant": 0}
    lesions_checked = 0
    for ics in [root / path for path in paths if path.endswith(".ics")]:
        fields, views = parse_ics(ics)
        assert fields["ics_version"] == "1.0"
        assert fields["filename"] == ics.name[: -len("_1.ics")].replace("_", "-") + "-1"
        assert re.fullmatch(r"\d+ \d+ \d+", fields["DATE_OF_STUDY"]) and fields["PATIENT_AGE"].isdigit()
        assert fields["DIGITIZER"] in ("DBA 21", "HOWTEK", "LUMISYS LASER")
        assert 1 <= int(fields["DENSITY"]) <= 4
        assert views, ics
        for view, declared in views.items():
            ljpeg = ics.with_name(f"{ics.name[:-4]}.{view}.LJPEG")
            relative = ljpeg.relative_to(root).as_posix()
            overlay = ljpeg.with_suffix(".OVERLAY")
            assert overlay.exists() == (declared["overlay"] == "OVERLAY")
            if relative in bad:
                continue
            height, width = int(declared["LINES"]), int(declared["PIXELS_PER_LINE"])
            bits = int(declared["BITS_PER_PIXEL"])
            assert bits == (16 if fields["DIGITIZER"] == "DBA 21" else 12)
            pixels = imagecodecs.ljpeg_decode(ljpeg.read_bytes())
            assert pixels.dtype == np.uint16 and int(pixels.max()) < 2**bits
            if relative in swapped:
                assert pixels.shape == (width, height)
                pixels = pixels.reshape(height, width)
            assert pixels.shape == (height, width)
            label = "normal"
            if overlay.exists():
                pathology, lesions_checked = check_overlay(overlay, pixels.astype(float), lesions_checked)
                label = "malignant" if pathology == "MALIGNANT" else "benign"
            labels[label] += 1
    assert labels == manifest["ddsm"]["labels"]
    assert lesions_checked >= 2

    for path, kind in bad.items():
        data = (root / path).read_bytes()
        if kind == "empty":
            assert data == b""
        elif kind == "truncated":
            with pytest.raises(imagecodecs.LjpegError):
                imagecodecs.ljpeg_decode(data)
        else:
            _, views = parse_ics(next((root / path).parent.glob("*.ics")))
            declared = views[path.split(".")[-2]]
            shape = imagecodecs.ljpeg_decode(data).shape
            expected = (int(declared["LINES"]), int(declared["PIXELS_PER_LINE"]))
            assert (
                shape != expected
                and shape != expected[::-1]
                and shape[0] * shape[1] != expected[0] * expected[1]
            )


def check_overlay(overlay: Path, pixels: np.ndarray, checked: int) -> tuple[str, int]:
    """Parse one .OVERLAY, check each outline is a closed chain around a visible lesion."""
    lines = overlay.read_text().splitlines()
    total = int(lines[0].split()[1])
    assert lines[0] == f"TOTAL_ABNORMALITIES {total}"
    pathologies = set()
    for number in range(1, total + 1):
        start = lines.index(f"ABNORMALITY {number}")
        block = lines[start : start + 8]
        assert re.fullmatch(
            r"LESION_TYPE (MASS SHAPE \S+ MARGINS \S+|CALCIFICATION TYPE \S+ DISTRIBUTION \S+)", block[1]
        )
        assert re.fullmatch(r"ASSESSMENT [0-5]", block[2]) and re.fullmatch(r"SUBTLETY [1-5]", block[3])
        pathology = block[4].split()[1]
        assert pathology in ("MALIGNANT", "BENIGN", "BENIGN_WITHOUT_CALLBACK")
        pathologies.add(pathology)
        assert block[5:7] == ["TOTAL_OUTLINES 1", "BOUNDARY"]
        points = chain_points(block[7])
        assert (points[0] == points[-1]).all(), "boundary is not closed"
        canvas = Image.new("1", pixels.shape[::-1], 0)
        ImageDraw.Draw(canvas).polygon([tuple(p) for p in points.tolist()], fill=1)
        inside = np.asarray(canvas, dtype=bool)
        if block[1].startswith("LESION_TYPE MASS") and block[3] != "SUBTLETY 1":
            assert brighter(pixels, inside, 4), f"{overlay.name}: mass not inside its outline"
            checked += 1
        elif block[1].startswith("LESION_TYPE CALC"):
            assert bright_dots(pixels, inside), f"{overlay.name}: no calcifications inside the outline"
            checked += 1
    assert len(pathologies) == 1
    return pathologies.pop(), checked


def read_cbis_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_cbis_ddsm(corpus: tuple[Path, dict]) -> None:
    out, manifest = corpus
    root = out / "CBIS-DDSM"
    tree = root / "CBIS-DDSM"
    bad = planted(manifest, "cbis_ddsm")
    assert sorted(bad.values()) == [
        "empty",
        "missing_file",
        "no_pixel_data",
        "truncated",
        "unknown_pathology",
    ]
    headers = {}
    rows: list[dict[str, str]] = []
    for kind in ("mass", "calc"):
        for split in ("train", "test"):
            path = root / f"{kind}_case_description_{split}_set.csv"
            headers[kind] = path.read_text().splitlines()[0]
            rows += [{**row, "csv": path.name} for row in read_cbis_csv(path)]
    assert headers["mass"] == (
        "patient_id,breast_density,left or right breast,image view,abnormality id,abnormality type,"
        "mass shape,mass margins,assessment,pathology,subtlety,image file path,cropped image file path,"
        "ROI mask file path"
    )
    assert headers["calc"].startswith("patient_id,breast density,left or right breast,")
    assert "calc type,calc distribution" in headers["calc"]
    assert any(row["ROI mask file path"].endswith("\n") for row in rows)
    assert all(path.startswith("CBIS-DDSM/") for path in files(root) if path.endswith(".dcm"))

    on_disk = {path.relative_to(tree).as_posix() for path in tree.rglob("*.dcm")}
    by_image: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        prefix = "Mass" if row["csv"].startswith("mass") else "Calc"
        assert row["patient_id"].startswith("P_") and row["abnormality type"] == prefix.lower()
        for column in ("image file path", "cropped image file path", "ROI mask file path"):
            match = CBIS_PATH.fullmatch(row[column].strip())
            assert match, row[column]
            expected = f"{prefix}-{'Training' if 'train' in row['csv'] else 'Test'}_{row['patient_id']}_"
            assert match[1].startswith(f"{expected}{row['left or right breast']}_{row['image view']}")
        by_image.setdefault(row["image file path"].strip(), []).append(row)
    assert any(len(found) == 2 for found in by_image.values()), "no image with two abnormalities"
    assert {row["pathology"] for row in rows} <= {
        "MALIGNANT",
        "BENIGN",
        "BENIGN_WITHOUT_CALLBACK",
        "INDETERMINATE",
    }

    mismatched = 0
    syntaxes, photometrics, good, labels = set(), set(), 0, {"benign": 0, "malignant": 0}
    for csv_path, image_rows in by_image.items():
        top = csv_path.split("/")[0]
        found = sorted(path for path in on_disk if path.split("/")[0] == top)
        planted_here = {bad.get(f"CBIS-DDSM/{path}") for path in [csv_path, *found]} - {None}
        if "missing_file" in planted_here:
            assert not found and not (tree / top).exists()
            continue
        assert len(found) == 1, "walking the top folder finds exactly the full image"
        mismatched += found[0] != csv_path
        if planted_here:
            check_planted_dicom(tree / found[0], planted_here.pop(), image_rows)
            continue
        ds = pydicom.dcmread(tree / found[0])
        pixels = ds.pixel_array.astype(float)
        assert ds.Modality == "MG" and ds.PatientID == image_rows[0]["patient_id"]
        assert ds.PatientName and ds.PatientBirthDate and ds.StudyDate and len(ds.PixelSpacing) == 2
        assert ds.BitsAllocated == ds.BitsStored == 16
        assert ds.ImageLaterality == image_rows[0]["left or right breast"][0]
        syntaxes.add(ds.file_meta.TransferSyntaxUID)
        photometrics.add(ds.PhotometricInterpretation)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            pixels = 65535 - pixels
        swapped = f"CBIS-DDSM/{found[0]}" in quirks(manifest, "cbis_ddsm", "crop_mask_swapped")
        mask_name, crop_name = ("000000.dcm", "000001.dcm") if swapped else ("000001.dcm", "000000.dcm")
        for row in image_rows:
            mask_path = next(
                path
                for path in on_disk
                if path.split("/")[0] == row["ROI mask file path"].strip().split("/")[0]
                and path.endswith(mask_name)
            )
            mask = pydicom.dcmread(tree / mask_path).pixel_array
            assert mask.shape == pixels.shape and mask.dtype == np.uint8
            assert set(np.unique(mask)) == {0, 255}
            crop = pydicom.dcmread(tree / mask_path.replace(mask_name, crop_name)).pixel_array
            assert crop.shape[0] < pixels.shape[0] / 2 and crop.shape[1] < pixels.shape[1] / 2
            if row["abnormality type"] == "mass":
                assert brighter(pixels, mask == 255, 4), f"{csv_path}: mass not under its ROI mask"
            else:
                assert bright_dots(pixels, mask == 255), f"{csv_path}: no calcifications under the ROI mask"
        labels["malignant" if any(r["pathology"] == "MALIGNANT" for r in image_rows) else "benign"] += 1
        good += 1
    assert good == manifest["cbis_ddsm"]["images"]
    assert labels == {k: v for k, v in manifest["cbis_ddsm"]["labels"].items() if k != "normal"}
    assert mismatched >= 1 and len(quirks(manifest, "cbis_ddsm", "uid_mismatch")) == mismatched
    assert pydicom.uid.RLELossless in syntaxes and pydicom.uid.JPEG2000Lossless in syntaxes
    assert photometrics == {"MONOCHROME1", "MONOCHROME2"}


def check_planted_dicom(path: Path, kind: str, rows: list[dict[str, str]]) -> None:
    data = path.read_bytes()
    if kind == "empty":
        assert data == b""
    elif kind == "truncated":
        assert data[128:132] == b"DICM"
        with pytest.raises(Exception):  # noqa: B017 - pydicom raises several types for cut files
            _ = pydicom.dcmread(io.BytesIO(data)).pixel_array
    elif kind == "no_pixel_data":
        ds = pydicom.dcmread(io.BytesIO(data))
        assert "PixelData" not in ds and ds.Rows > 0
    else:
        assert kind == "unknown_pathology"
        assert pydicom.dcmread(io.BytesIO(data)).pixel_array.size > 0
        assert {row["pathology"] for row in rows} == {"INDETERMINATE"}


def test_cbis_ddsm_re_releases_ddsm_films(corpus: tuple[Path, dict]) -> None:
    out, manifest = corpus
    links = manifest["cbis_ddsm"]["links"]
    assert len(links) >= 2  # one patient's CC and MLO
    for link in links:
        dicom = pydicom.dcmread(out / "CBIS-DDSM" / link["path"])
        film = out / "DDSM" / link["ddsm"]
        ljpeg = imagecodecs.ljpeg_decode(film.read_bytes())
        view = film.name.split(".")[1]  # RIGHT_MLO
        ics = next(film.parent.glob("*.ics")).read_text().split()
        bits = int(ics[ics.index(view) + ics[ics.index(view) :].index("BITS_PER_PIXEL") + 1])
        shown = dicom.pixel_array
        if dicom.PhotometricInterpretation == "MONOCHROME1":
            shown = 65535 - shown
        assert np.array_equal(shown >> (16 - bits), ljpeg), link
        assert link["path"].split("/")[1].endswith(view), link
    assert all(not entry["links"] for name, entry in manifest.items() if name != "cbis_ddsm")


def test_deterministic(tmp_path: Path, corpus: tuple[Path, dict]) -> None:
    out, manifest = corpus
    again = synth.generate(tmp_path / "again", images=IMAGES, downscale=16, seed=SEED)
    assert again == manifest
    first, second = files(out), files(tmp_path / "again")
    assert first == second
    for path in first[:: max(1, len(first) // 25)] + [
        p for p in first if p.endswith((".csv", ".txt", ".ics"))
    ]:
        assert (out / path).read_bytes() == (tmp_path / "again" / path).read_bytes(), path
    other = synth.generate(tmp_path / "other", images=IMAGES, downscale=16, seed=SEED + 1)
    assert (tmp_path / "other" / "all-mias" / "Info.txt").read_text() != (
        out / "all-mias" / "Info.txt"
    ).read_text()
    assert other["mias"]["images"] == manifest["mias"]["images"]


def test_refuses_to_overwrite(corpus: tuple[Path, dict]) -> None:
    out, _ = corpus
    with pytest.raises(FileExistsError):
        synth.generate(out, images=4)


def test_mammogram_lesions_and_orientation() -> None:
    """Lesions sit inside the breast, right breasts mirror left ones, malignant kinds are flagged."""
    rng = np.random.default_rng(1)
    for left in (True, False):
        image, lesions = draw_mammogram(
            300, 200, rng, left=left, mlo=True, density=0.5, lesions=[("round", 4), ("malignant_calc", 4)]
        )
        assert image.dtype == np.float32 and image.min() >= 0 and image.max() <= 1
        wall, edge = (image[:, :5], image[:, -5:]) if left else (image[:, -5:], image[:, :5])
        assert wall.mean() > edge.mean() + 0.15
        assert [lesion.malignant for lesion in lesions] == [False, True]
        for lesion in lesions:
            mask = lesion.mask(300, 200)
            assert mask[round(lesion.y), round(lesion.x)]
            assert lesion.radius >= 4


def test_crowd_reports_beside_the_corpus(corpus: tuple[Path, dict]) -> None:
    """12 readers of known kinds, one file each (JSON Lines 1-8, CSV 9-12), every good report naming an
    image of the corpus, the planted bad reports and files listed."""
    import hashlib

    from synth.crowd import PLANTED_FILES, PLANTED_REPORTS

    out, manifest = corpus
    crowd = json.loads((out / "reports.json").read_text())
    kinds = [r["kind"] for r in crowd["readers"]]
    assert kinds.count("expert") == 3 and kinds.count("average") == 6 and kinds.count("spammer") == 2
    assert set(crowd["truth"].values()) <= {"normal", "benign", "malignant"}
    assert len(crowd["truth"]) == sum(entry["images"] for entry in manifest.values())
    hashes = {
        hashlib.sha256(
            (out / manifest[key.split("/", 1)[0]]["root"] / key.split("/", 1)[1]).read_bytes()
        ).hexdigest()
        for key in crowd["truth"]
    }
    rows: list[dict] = []
    for name in crowd["files"]:
        path = out / "reports" / name
        if name.endswith(".jsonl"):
            rows += [json.loads(line) for line in path.read_text().splitlines()]
        else:
            rows += list(csv.DictReader(io.StringIO(path.read_text(), newline="")))
    assert len(rows) == crowd["reports"] + len(PLANTED_REPORTS)
    good = [r for r in rows if not str(r.get("report_id", "")).startswith("planted-")]
    marked = 0
    for row in good:
        if row.get("collection"):
            assert f"{row['collection']}/{row['path']}" in crowd["truth"]
        else:
            digest = row.get("sha256") or row["image_id"]
            assert any(h.startswith(digest) for h in hashes)
        marked += bool(row.get("marks"))
    assert marked > 0
    assert {p["kind"] for p in crowd["planted"]} == set(PLANTED_REPORTS) | set(PLANTED_FILES)
