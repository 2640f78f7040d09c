"""Patient-level train/val/test splits that never leak, never reshuffle, and keep re-released images together.

The unit of splitting is a *group*: a patient, merged with every other patient one of whose images is a
near-duplicate of one of theirs (CBIS-DDSM re-releases DDSM films under new patient ids). A group keeps
the split it was first given; new groups are dealt out per stratum (collection and group label) in a
keyed-hash order to whichever split is furthest below its target share, so the result is deterministic,
stratified and incremental. Only image metadata (a few columns, no pixels) is handled here, on the driver.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from core.ids import stable_id
from pipelines.sources.base import SEVERITY

SPLITS = ("train", "val", "test")
SPLIT_STRATEGY = "split_strategy"
"""The images' ``attributes`` key naming the strategy that drew their split (``patient``, ``official``)."""


class SplitLeak(RuntimeError):
    """A patient or a linked group of images spans two splits."""


@dataclass(frozen=True)
class ImageMeta:
    """What splitting needs to know about one image."""

    image_id: str
    collection: str
    patient_key: str
    label: str
    split: str | None = None
    official: str | None = None
    """The collection's own division (``training`` / ``test``), where it ships one (CBIS-DDSM)."""


class _Groups:
    """Union-find over patients."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, node: str) -> str:
        self.parent.setdefault(node, node)
        while self.parent[node] != node:
            self.parent[node] = self.parent[self.parent[node]]
            node = self.parent[node]
        return node

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def patient_node(image: ImageMeta) -> str:
    """Patients are keyed per collection: the same pseudonym in two collections is two people."""
    return f"{image.collection}/{image.patient_key}"


def group_patients(images: Iterable[ImageMeta], links: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Map every patient node to its group id, joining patients whose images are linked."""
    images = list(images)
    by_id = {i.image_id: i for i in images}
    groups = _Groups()
    for image in images:
        groups.find(patient_node(image))
    for a, b in links:
        if a in by_id and b in by_id:
            groups.union(patient_node(by_id[a]), patient_node(by_id[b]))
    return {node: groups.find(node) for node in groups.parent}


def _order_key(seed: int, group: str) -> str:
    return stable_id(seed, group, length=None)


def assign_splits(
    images: Iterable[ImageMeta],
    links: Iterable[tuple[str, str]],
    fractions: Mapping[str, float],
    seed: int,
    official: frozenset[str] = frozenset(),
) -> dict[str, str]:
    """Give every image without a split the split of its group, dealing out new groups by stratum.

    With ``official`` collections (``split.strategy: official``) their own division is honoured, group by
    group, and the patient-level guarantee still wins: a new group holding an image of an official
    collection's test set goes to ``test`` whole (the collection's test images are never trained on; its
    other images, e.g. the same patient's other abnormality filed under training, or a DDSM film it
    re-releases, move with it: :func:`moved_by_official` counts them); a group holding official training
    images only is dealt between ``train`` and ``val``. Groups with no official image are dealt as usual.

    Args:
        images: all images of the lakehouse, with their stored split or ``None`` for new ones.
        links: pairs of image ids that are the same picture.
        fractions: target share of groups per split (train/val/test).
        seed: changes the dealing order of new groups.
        official: the collections whose own train/test division is honoured.

    Returns:
        ``image_id -> split`` for the images that had none.

    Raises:
        SplitLeak: when stored splits already disagree inside one group (a new link joined two groups).
    """
    images = list(images)
    group_of = group_patients(images, links)
    members: dict[str, list[ImageMeta]] = defaultdict(list)
    for image in images:
        members[group_of[patient_node(image)]].append(image)

    stored: dict[str, str] = {}
    for group, group_images in members.items():
        splits = {i.split for i in group_images if i.split}
        if len(splits) > 1:
            raise SplitLeak(f"group {group} already spans splits {sorted(splits)}")
        if splits:
            stored[group] = splits.pop()

    def stratum(group: str) -> tuple[str, str]:
        group_images = members[group]
        collection = min(i.collection for i in group_images)
        label = max((i.label for i in group_images), key=SEVERITY.__getitem__)
        return collection, label

    counts: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: dict.fromkeys(SPLITS, 0))
    for group, split in stored.items():
        counts[stratum(group)][split] += 1
    new_groups = sorted((g for g in members if g not in stored), key=lambda g: _order_key(seed, g))
    assigned: dict[str, str] = {}
    for group in new_groups:
        tally = counts[stratum(group)]
        divisions = {i.official for i in members[group] if i.collection in official and i.official}
        if "test" in divisions:
            split = "test"
        else:
            # The split furthest below its target share; ties go to the earlier split in SPLITS. A group
            # of an official training set is dealt between train and val only.
            allowed = ("train", "val") if divisions else SPLITS
            total = sum(tally[s] for s in allowed) + 1
            share = sum(fractions[s] for s in allowed)
            split = max(allowed, key=lambda s: (fractions[s] / share * total - tally[s], -SPLITS.index(s)))
        tally[split] += 1
        assigned[group] = split

    decided = {**stored, **assigned}
    return {image.image_id: decided[group_of[patient_node(image)]] for image in images if image.split is None}


def moved_by_official(images: Iterable[ImageMeta], official: frozenset[str]) -> dict[str, int]:
    """Per official collection, its images of the collection's own training set that are in ``test``:
    their group (the same patient's test-set image, or a linked re-release) took them there."""
    moved: dict[str, int] = defaultdict(int)
    for i in images:
        if i.collection in official and i.official == "training" and i.split == "test":
            moved[i.collection] += 1
    return dict(moved)


def check_no_leak(images: Iterable[ImageMeta], links: Iterable[tuple[str, str]]) -> None:
    """Fail if any patient, or any group of linked images, has images in two splits.

    Raises:
        SplitLeak: naming the offending patient or group (by pseudonym) and the splits.
    """
    images = list(images)
    missing = [i.image_id for i in images if i.split not in SPLITS]
    if missing:
        raise SplitLeak(f"{len(missing)} images have no split, e.g. {missing[:3]}")
    group_of = group_patients(images, links)
    per_patient: dict[str, set[str]] = defaultdict(set)
    per_group: dict[str, set[str]] = defaultdict(set)
    for image in images:
        node = patient_node(image)
        per_patient[node].add(str(image.split))
        per_group[group_of[node]].add(str(image.split))
    for kind, table in (("patient", per_patient), ("linked group", per_group)):
        for key, splits in table.items():
            if len(splits) > 1:
                raise SplitLeak(f"{kind} {key} spans splits {sorted(splits)}")
