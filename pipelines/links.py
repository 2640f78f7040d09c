"""Near-duplicate images across collections, found by perceptual hash.

CBIS-DDSM re-releases DDSM films: the same picture, decoded by another tool, under another patient id.
A 64-bit pHash of the normalised image survives that; two images whose hashes differ in at most
``max_hamming`` bits are linked. Candidate pairs come from banding (split the hash into
``max_hamming + 1`` bands: two hashes within that distance must agree on at least one band, by the
pigeonhole principle), so the comparison stays near-linear in the number of images.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from core.phash import hamming


@dataclass(frozen=True)
class HashedImage:
    image_id: str
    collection: str
    phash: int
    view: str | None = None


def _bands(value: int, count: int) -> list[tuple[int, int]]:
    unsigned = value & 0xFFFFFFFFFFFFFFFF
    width = -(-64 // count)
    return [(band, (unsigned >> (band * width)) & ((1 << width) - 1)) for band in range(count)]


def find_links(images: Iterable[HashedImage], max_hamming: int) -> list[tuple[str, str]]:
    """Pairs of image ids from different collections whose pHashes are within ``max_hamming`` bits.

    Within one collection, similar hashes are common (two views of one patient, symmetrical breasts) and
    patients already keep their images together, so only cross-collection pairs are links. A re-release
    keeps its view, so pairs whose known views differ (CC against MLO) are not links: an 8x8 pHash alone
    matches unrelated mammograms of similar shape now and then.
    """
    images = list(images)
    buckets: dict[tuple[int, int], list[HashedImage]] = defaultdict(list)
    for image in images:
        for band in _bands(image.phash, max_hamming + 1):
            buckets[band].append(image)
    pairs: set[tuple[str, str]] = set()
    for bucket in buckets.values():
        for i, a in enumerate(bucket):
            for b in bucket[i + 1 :]:
                if (
                    a.collection != b.collection
                    and (a.view is None or b.view is None or a.view == b.view)
                    and hamming(a.phash, b.phash) <= max_hamming
                ):
                    pairs.add((min(a.image_id, b.image_id), max(a.image_id, b.image_id)))
    return sorted(pairs)
