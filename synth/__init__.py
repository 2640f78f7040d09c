"""A synthetic corpus in the exact on-disk layouts of the four public breast-cancer imaging collections.

No real data ships with oncolake, so :func:`generate` writes look-alikes that exercise the same readers:

- ``BreaKHis_v1/`` (BreaKHis v1): 700x460 RGB PNG H&E tiles in ``<class>/SOB/<subtype>/<slide>/<mag>X/``;
  benign tiles show few small regular nuclei around glands, malignant ones crowded pleomorphic dark nuclei
  (:mod:`synth.breakhis`, :mod:`synth.histology`);
- ``all-mias/`` (mini-MIAS): binary PGMs and ``Info.txt`` with bottom-left-origin circles
  (:mod:`synth.mias`);
- ``DDSM/``: lossless-JPEG views, ``.ics`` headers and ``.OVERLAY`` chain-code outlines
  (:mod:`synth.ddsm`);
- ``CBIS-DDSM/``: case-description CSVs plus the TCIA DICOM tree with full images, crops and ROI masks
  (:mod:`synth.cbis_ddsm`);
- ``reports/`` (with ``reports.json``): a crowd of 12 readers' expert reports on those images, in JSON
  Lines and CSV, with a few malformed ones planted (:func:`synth.crowd.write_reports`).

Mammograms (:mod:`synth.mammogram`) show a breast with density-dependent tissue texture, a pectoral
muscle on MLO views, smooth round masses (benign), spiculated masses or fine clustered calcifications
(malignant), placed where each collection's metadata says.  Real quirks are reproduced (listed in each
module: BreaKHis slide ids shared by two subtypes, MIAS rows without coordinates and 4-digit reference
numbers, DDSM LJPEG headers with swapped dimensions, CBIS-DDSM UID folders that differ from the CSV,
whitespace in CSV values, MONOCHROME1 and compressed DICOMs), and a few bad inputs are planted per
collection (:mod:`synth.quirks`).  Everything the readers should find is summarised in ``manifest.json``.

Mammograms are written downscaled (``downscale``, default 16, or 8 for the full corpus) and all metadata
(sizes, coordinates, resolution) describes the files as written.  BreaKHis keeps its real 700x460 unless a
``downscale`` is given explicitly, in which case tiles shrink by its square root (histology has no large
dimensions to spare).  When the corpus is large (``full`` or ``images >= 200``) one image per collection
keeps the real full size so readers see real dimensions.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from synth import breakhis, cbis_ddsm, ddsm, mias
from synth.crowd import REPORTS, write_reports
from synth.report import Progress, split

FULL_IMAGES = 12_000
# The full corpus: the paper's collection sizes (BreaKHis 2,000, MIAS 2,000, DDSM 4,000, CBIS-DDSM 4,000).
FULL_SHARES = {"breakhis": 1.0, "mias": 1.0, "ddsm": 2.0, "cbis_ddsm": 2.0}
# Smaller corpora are drawn for patients rather than images, so that the default corpus (640 images) gives
# every default task's 25% test split at least 10 patients per class: BreaKHis 200 images (1.5 per slide:
# 44 benign, 89 malignant slides), MIAS 200 (100 patients, two breasts each, about 44 of them normal),
# DDSM 120 (30 four-view cases), CBIS-DDSM 120 (60 patients, two views each).
SHARES = {"breakhis": 5.0, "mias": 5.0, "ddsm": 3.0, "cbis_ddsm": 3.0}
FULL_SIZE_FROM = 200
REISSUED_EVERY = 10  # one CBIS-DDSM patient in this many re-releases a DDSM case


def generate(
    out: Path,
    images: int = 640,
    full: bool = False,
    downscale: float | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Write the four collections under ``out`` plus ``out/manifest.json``; returns the manifest.

    ``images`` good images in total (12,000 with ``full``) are split by :data:`SHARES` (BreaKHis 5/16,
    MIAS 5/16, DDSM 3/16, CBIS-DDSM 3/16; with ``full``, :data:`FULL_SHARES`: 1/6, 1/6, 1/3, 1/3); planted
    bad inputs come on top.  The same ``seed`` gives byte-identical files.  The
    manifest maps each collection (``breakhis``, ``mias``, ``ddsm``, ``cbis_ddsm``) to ``root``, ``images``
    (good image files), ``labels`` (good images per label), ``patients`` (with a good image),
    ``auxiliary`` (metadata, crops and masks on disk), ``planted`` and ``quirks`` (``path`` relative to the
    root and ``kind``), ``links`` (``path`` of a CBIS-DDSM image and the ``ddsm`` path of the film it
    re-releases, each relative to its own collection root; empty elsewhere) and ``downscale``.  Refuses to
    write over an existing collection folder.
    """
    out = Path(out)
    say = progress or (lambda _line: None)
    total = FULL_IMAGES if full else images
    factor = float(downscale or (8.0 if full else 16.0))
    histology_factor = math.sqrt(downscale) if downscale and downscale > 1 else 1.0
    histology_size = (round(breakhis.SIZE[0] / histology_factor), round(breakhis.SIZE[1] / histology_factor))
    keep_full = 1 if full or total >= FULL_SIZE_FROM else 0
    shares = FULL_SHARES if full else SHARES
    counts = dict(zip(shares, split(total, list(shares.values())), strict=True))
    rngs = dict(
        zip(SHARES, (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)), strict=True)
    )
    roots = {"breakhis": breakhis.ROOT, "mias": mias.ROOT, "ddsm": ddsm.ROOT, "cbis_ddsm": cbis_ddsm.ROOT}
    existing = [name for name in roots.values() if (out / name).exists()]
    if existing:
        raise FileExistsError(
            f"{out} already holds {', '.join(existing)}; remove them or pick another folder"
        )
    for name in roots.values():
        (out / name).mkdir(parents=True)

    films: list[ddsm.Film] = []
    reissues = max(1, counts["cbis_ddsm"] // (2 * REISSUED_EVERY))
    reports = {
        "breakhis": breakhis.generate(
            out / breakhis.ROOT,
            counts["breakhis"],
            histology_size,
            keep_full,
            rngs["breakhis"],
            say,
            breakhis.IMAGES_PER_SLIDE if full else breakhis.SMALL_IMAGES_PER_SLIDE,
        ),
        "mias": mias.generate(out / mias.ROOT, counts["mias"], factor, keep_full, rngs["mias"], say),
        "ddsm": ddsm.generate(
            out / ddsm.ROOT, counts["ddsm"], factor, keep_full, rngs["ddsm"], say, films, 2 * reissues
        ),
        "cbis_ddsm": cbis_ddsm.generate(
            out / cbis_ddsm.ROOT, counts["cbis_ddsm"], factor, keep_full, rngs["cbis_ddsm"], say, films
        ),
    }
    manifest = {name: report.to_dict(out) for name, report in reports.items()}
    crowd = write_reports(
        out,
        {name: r.truth for name, r in reports.items()},
        {name: r.root for name, r in reports.items()},
        seed,
    )
    readers = len(crowd["readers"])
    say(f"{REPORTS}: {crowd['reports']} expert reports from {readers} readers in {out / REPORTS}")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    say(f"manifest: {sum(entry['images'] for entry in manifest.values())} images in {out}")
    return manifest
