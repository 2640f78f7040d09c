"""The corpus ``oncolake synth`` and the demo work with: written once, then read back from its manifest.

:func:`ensure_corpus` writes the four collections (:func:`synth.generate`) unless ``out`` already holds
a corpus, and the landing folder of new unlabelled images (:func:`synth.landing.generate`, itself a no-op
when written before); :func:`collection_roots` reads where each collection lies from ``manifest.json``,
which is what ``oncolake ingest --source`` needs; :func:`summary_lines` describes the corpus per collection.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def ensure_corpus(
    out: Path,
    *,
    images: int,
    full: bool,
    downscale: float | None,
    seed: int,
    landing: int,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """The corpus under ``out`` (written first unless its ``manifest.json`` exists); returns the manifest.

    ``landing`` new unlabelled images go to ``out/landing`` (with seed ``seed + 1``) when it is not 0.
    """
    manifest = out / "manifest.json"
    if manifest.exists():
        progress(f"{out} already holds a corpus (delete it to regenerate)")
    else:
        import synth

        synth.generate(out, images=images, full=full, downscale=downscale, seed=seed, progress=progress)
    if landing:
        from synth import landing as landing_folder

        written = landing_folder.generate(out / "landing", landing, seed + 1)
        progress(f"{written['images']} new unlabelled images in {out / 'landing'}")
    return json.loads(manifest.read_text())


def collection_roots(out: Path) -> dict[str, Path]:
    """Each collection of the corpus under ``out`` and the folder it was written to, from its manifest."""
    manifest = json.loads((out / "manifest.json").read_text())
    return {name: out / entry["root"] for name, entry in manifest.items() if "root" in entry}


def summary_lines(out: Path, manifest: dict[str, Any]) -> list[str]:
    """One line per collection: good images, planted bad files and the folder."""
    return [
        f"  {name:10} {entry['images']:6} images {len(entry['planted']):3} planted bad files  "
        f"{out / entry['root']}"
        for name, entry in manifest.items()
        if isinstance(entry, dict) and "images" in entry
    ]
