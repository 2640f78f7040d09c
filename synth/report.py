"""Bookkeeping shared by the collection generators: what was written, so tests and readers can check it.

Every collection module returns a :class:`CollectionReport`; :func:`synth.generate` turns the four of them
into ``manifest.json``.  Paths are relative to the collection root and always use forward slashes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

Progress = Callable[[str], None]


@dataclass
class CollectionReport:
    """Counts and notable files of one generated collection."""

    root: Path
    downscale: float
    images: int = 0
    auxiliary: int = 0
    labels: Counter[str] = field(default_factory=Counter)
    patients: set[str] = field(default_factory=set)
    planted: list[dict[str, str]] = field(default_factory=list)
    quirks: list[dict[str, str]] = field(default_factory=list)
    links: list[dict[str, str]] = field(default_factory=list)
    truth: list[dict[str, Any]] = field(default_factory=list)
    """Per good image: ``path``, ``label``, ``marks`` (lesion circles ``[x, y, radius]`` in the file's
    pixels, origin top-left) and ``shape`` (rows, columns) where known: what the synthetic crowd reads
    (:mod:`synth.crowd`); not in the manifest."""

    def rel(self, path: Path) -> str:
        """``path`` relative to the collection root, the form every manifest entry uses."""
        return path.relative_to(self.root).as_posix()

    def good(
        self,
        label: str,
        patient: str,
        path: Path | None = None,
        lesions: Iterable[Any] = (),
        shape: tuple[int, int] | None = None,
    ) -> None:
        """Count one image that a correct reader must ingest with ``label``; with its ``path``, remember
        it, its ``lesions`` (objects with ``x``, ``y``, ``radius`` in the file's pixels) and its decoded
        ``shape`` (rows, columns) in :attr:`truth`."""
        self.images += 1
        self.labels[label] += 1
        self.patients.add(patient)
        if path is not None:
            marks = [[float(lesion.x), float(lesion.y), float(lesion.radius)] for lesion in lesions]
            entry = {"path": self.rel(path), "label": label, "marks": marks}
            self.truth.append({**entry, "shape": list(shape)} if shape else entry)

    def plant(self, path: Path, kind: str) -> None:
        """Record a deliberately bad input (the file may not exist, e.g. ``missing_file``)."""
        self.planted.append({"path": self.rel(path), "kind": kind})

    def quirk(self, path: Path, kind: str, note: str | None = None) -> None:
        """Record a real-world oddity that a correct reader must cope with (the file is still good)."""
        entry = {"path": self.rel(path), "kind": kind}
        if note:
            entry["note"] = note
        self.quirks.append(entry)

    def link(self, path: Path, ddsm: str) -> None:
        """Record that the good image at ``path`` re-releases the DDSM film ``ddsm`` (relative to DDSM/)."""
        self.links.append({"path": self.rel(path), "ddsm": ddsm})

    def to_dict(self, out: Path) -> dict[str, Any]:
        """The manifest entry for this collection; ``root`` is relative to the corpus directory ``out``."""
        return {
            "root": self.root.relative_to(out).as_posix(),
            "images": self.images,
            "planted": self.planted,
            "auxiliary": self.auxiliary,
            "labels": {label: self.labels[label] for label in ("normal", "benign", "malignant")},
            "patients": len(self.patients),
            "downscale": self.downscale,
            "quirks": self.quirks,
            "links": self.links,
        }


def split(total: int, weights: list[float]) -> list[int]:
    """Split ``total`` into integer parts proportional to ``weights`` (largest remainder, deterministic)."""
    raw = [total * w / sum(weights) for w in weights]
    parts = [int(r) for r in raw]
    by_remainder = sorted(range(len(raw)), key=lambda i: (parts[i] - raw[i], i))
    for i in by_remainder[: total - sum(parts)]:
        parts[i] += 1
    return parts


def shuffled(shares: dict[str, float], total: int, rng: np.random.Generator) -> list[str]:
    """``total`` keys of ``shares`` in exactly those proportions, in random order.

    Exact proportions keep even a tiny test corpus balanced, which independent random draws would not.
    """
    values = [
        key
        for key, count in zip(shares, split(total, list(shares.values())), strict=True)
        for _ in range(count)
    ]
    return [values[i] for i in rng.permutation(total)]
