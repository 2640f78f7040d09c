"""Planted bad inputs shared by every collection: the failures real downloads actually produce.

Interrupted downloads and full disks leave 0-byte files and files cut short; a reader must quarantine them
with a reason instead of crashing or silently skipping them.  Collection-specific bad inputs (a CSV row
whose file is missing, an LJPEG whose size contradicts its .ics, ...) live in the collection modules.
"""

from __future__ import annotations

from pathlib import Path

from synth.report import CollectionReport


def plant_empty(report: CollectionReport, path: Path) -> None:
    """Write a 0-byte file where an image is expected."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    report.plant(path, "empty")


def plant_truncated(report: CollectionReport, path: Path, data: bytes) -> None:
    """Write the first half of a valid encoded image: the header parses, the pixel data runs out."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) // 2])
    report.plant(path, "truncated")
