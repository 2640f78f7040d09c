"""The accounting a job prints and writes: every file seen is ingested, already present or quarantined;
and the tile job's counts per collection, split and label."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipelines.sources.base import LABELS


@dataclass
class CollectionSummary:
    """One collection's counts for one run; ``seen == ingested + already_present + quarantined + erased``."""

    seen: int = 0
    ingested: int = 0
    already_present: int = 0
    quarantined: int = 0
    erased: int = 0
    """Files of patients the ``erasures`` table names: not read (pipelines.erasure.skip_erased)."""
    auxiliary: int = 0
    rejected_rows: int = 0
    labels: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LABELS, 0))
    split_strategy: str = "patient"
    """``split.strategy`` for the collection: what drew the splits of this run's new images."""
    moved_to_test: int = 0
    """With ``official``: this run's new images of the collection's own training set that went to
    ``test`` with their group (the same patient's test-set image, or a linked re-release)."""

    def balanced(self) -> bool:
        return self.seen == self.ingested + self.already_present + self.quarantined + self.erased


def count_outcome(summary: CollectionSummary, status: str, image_id: str | None, known: set[str]) -> bool:
    """Count one decoded file: quarantined, already present (its content is in ``known``: in the table
    before, or met earlier in this run) or ingested, in which case its id joins ``known``.

    Returns:
        Whether the file is a new image (the one file kept for its content).
    """
    if status == "quarantined":
        summary.quarantined += 1
        return False
    if image_id in known:
        summary.already_present += 1
        return False
    summary.ingested += 1
    known.add(str(image_id))
    return True


class SystemicFailure(RuntimeError):
    """Nearly all of a collection's files failed for one reason that is not the files' own (not found
    on the executors, permission denied, a codec missing on the workers): the job stops, writing nothing,
    instead of quarantining a whole collection file by file."""


SYSTEMIC_REASONS = {
    r"\[Errno 2\]|No such file or directory": (
        "the executors do not see the files: is the collection on a path every node mounts, given as an "
        "absolute path?"
    ),
    r"\[Errno 13\]|Permission denied": "the executors' user may not read the files: check their permissions",
    r"No module named|ImportError|ModuleNotFoundError|no (?:pixel data )?handler|plugin": (
        "a codec is missing on the workers: install the project's dependencies on every node"
    ),
}
"""Failure reasons (regular expressions) that say more about the cluster than about a file, with advice."""


def systemic_failure(
    outcome: Iterable[Mapping[str, object]], minimum: int = 10, share: float = 0.9
) -> str | None:
    """Why a run must stop: a collection of at least ``minimum`` decoded files of which ``share`` or more
    failed with one of :data:`SYSTEMIC_REASONS`; ``None`` when no collection did.

    Args:
        outcome: :func:`pipelines.ingest.outcomes` rows (``collection``, ``status``, ``reason``).
    """
    files: Counter[str] = Counter()
    failures: Counter[tuple[str, str]] = Counter()
    examples: dict[tuple[str, str], str] = {}
    for row in outcome:
        collection = str(row["collection"])
        files[collection] += 1
        if row["status"] != "quarantined":
            continue
        reason = str(row.get("reason") or "")
        for pattern in SYSTEMIC_REASONS:
            if re.search(pattern, reason):
                failures[(collection, pattern)] += 1
                examples.setdefault((collection, pattern), reason)
                break
    for (collection, pattern), count in failures.most_common():
        if files[collection] >= minimum and count >= share * files[collection]:
            return (
                f"{count} of {files[collection]} {collection} files failed for one reason, e.g. "
                f"{examples[(collection, pattern)][:300]!r}: {SYSTEMIC_REASONS[pattern]}. "
                "Nothing was written."
            )
    return None


def render_table(collections: Mapping[str, CollectionSummary]) -> str:
    """A fixed-width table of the summary, one line per collection and a total."""
    columns = ["seen", "ingested", "already_present", "quarantined", "auxiliary", "rejected_rows"]
    if any(summary.erased for summary in collections.values()):
        columns.insert(4, "erased")
    header = (
        f"{'collection':12}" + "".join(f"{c:>17}" for c in columns) + "".join(f"{lb:>11}" for lb in LABELS)
    )
    lines = [header, "-" * len(header)]
    total = CollectionSummary()
    for name, summary in collections.items():
        values = asdict(summary)
        lines.append(
            f"{name:12}"
            + "".join(f"{values[c]:>17}" for c in columns)
            + "".join(f"{summary.labels.get(lb, 0):>11}" for lb in LABELS)
        )
        for c in columns:
            setattr(total, c, getattr(total, c) + values[c])
        for lb in LABELS:
            total.labels[lb] += summary.labels.get(lb, 0)
    lines.append("-" * len(header))
    values = asdict(total)
    lines.append(
        f"{'total':12}"
        + "".join(f"{values[c]:>17}" for c in columns)
        + "".join(f"{total.labels[lb]:>11}" for lb in LABELS)
    )
    return "\n".join(lines)


def unbalanced(collections: Mapping[str, CollectionSummary]) -> list[str]:
    """The collections whose accounting does not balance (a job that finds any exits non-zero)."""
    return [name for name, summary in collections.items() if not summary.balanced()]


def write_payload(path: Path, payload: Mapping[str, object]) -> None:
    """``payload`` as indented JSON with sorted keys, the folder created if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def write_json(path: Path, collections: Mapping[str, CollectionSummary], **extra: object) -> None:
    """``{"collections": {name: {...}}}`` plus any extra top-level keys."""
    write_payload(path, {"collections": {name: asdict(s) for name, s in collections.items()}, **extra})


@dataclass(frozen=True)
class TileSummary:
    """The tiles table's counts: ``rows`` of (collection, split, label, tiles), sorted; an unlabelled
    tile's label is ``(none)``."""

    rows: list[tuple[str, str, str, int]]

    def render(self) -> str:
        """A fixed-width table, one line per row."""
        lines = [f"{'collection':12}{'split':>8}{'label':>12}{'tiles':>9}"]
        lines += [f"{c:12}{split:>8}{label:>12}{count:>9}" for c, split, label, count in self.rows]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, dict[str, dict[str, dict[str, int]]]]:
        """``{"tiles": {collection: {split: {label: tiles}}}}``, what ``--summary-json`` writes."""
        tiles: dict[str, dict[str, dict[str, int]]] = {}
        for collection, split, label, count in self.rows:
            tiles.setdefault(collection, {}).setdefault(split, {})[label] = count
        return {"tiles": tiles}
