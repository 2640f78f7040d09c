"""Patient-level splits: stratified, deterministic, incremental, and leak-checked across linked images."""

from __future__ import annotations

from collections import Counter

import pytest

from pipelines.links import HashedImage, find_links, hamming
from pipelines.split import ImageMeta, SplitLeak, assign_splits, check_no_leak, moved_by_official

FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}


def _corpus(patients: int, collection: str = "mias", views: int = 4) -> list[ImageMeta]:
    labels = ["normal", "benign", "malignant"]
    return [
        ImageMeta(f"{collection}-{p}-{v}", collection, f"pk{p}", labels[p % 3] if v == 0 else "normal")
        for p in range(patients)
        for v in range(views)
    ]


def _with(images: list[ImageMeta], splits: dict[str, str]) -> list[ImageMeta]:
    return [
        ImageMeta(i.image_id, i.collection, i.patient_key, i.label, splits.get(i.image_id, i.split))
        for i in images
    ]


def test_every_patient_lands_in_exactly_one_split_with_stratified_shares() -> None:
    images = _corpus(150)
    splits = assign_splits(images, [], FRACTIONS, seed=1)
    assert set(splits) == {i.image_id for i in images}
    per_patient: dict[str, set[str]] = {}
    for image in images:
        per_patient.setdefault(image.patient_key, set()).add(splits[image.image_id])
    assert all(len(s) == 1 for s in per_patient.values())
    # Stratified: each label's 50 patients are dealt 30/10/10.
    for label in ("normal", "benign", "malignant"):
        patients = {i.patient_key for i in images if i.label == label and i.image_id.endswith("-0")}
        shares = Counter(next(iter(per_patient[p])) for p in patients)
        assert shares == {"train": 30, "val": 10, "test": 10}, (label, shares)
    check_no_leak(_with(images, splits), [])


def test_assignment_is_deterministic_and_seed_dependent() -> None:
    images = _corpus(60)
    assert assign_splits(images, [], FRACTIONS, seed=3) == assign_splits(
        list(reversed(images)), [], FRACTIONS, 3
    )
    assert assign_splits(images, [], FRACTIONS, seed=3) != assign_splits(images, [], FRACTIONS, seed=4)


def test_stored_splits_are_never_reshuffled_and_new_images_join_their_patient() -> None:
    images = _corpus(30)
    first = assign_splits(images, [], FRACTIONS, seed=0)
    stored = _with(images, first)
    newcomer = ImageMeta("mias-late", "mias", "pk7", "benign")
    new_patient = ImageMeta("mias-new", "mias", "pk-new", "malignant")
    second = assign_splits([*stored, newcomer, new_patient], [], FRACTIONS, seed=99)
    assert set(second) == {"mias-late", "mias-new"}
    assert second["mias-late"] == first["mias-7-0"]


def test_linked_images_of_two_collections_share_one_split() -> None:
    ddsm = _corpus(40, "ddsm")
    cbis = _corpus(40, "cbis_ddsm")
    links = [(f"ddsm-{p}-0", f"cbis_ddsm-{p}-1") for p in range(0, 40, 3)]
    splits = assign_splits([*ddsm, *cbis], links, FRACTIONS, seed=0)
    for a, b in links:
        assert splits[a] == splits[b]
    check_no_leak(_with([*ddsm, *cbis], splits), links)


def test_leak_check_names_the_patient_and_the_linked_group() -> None:
    images = _corpus(3)
    splits = {i.image_id: "train" for i in images} | {"mias-1-2": "test"}
    with pytest.raises(SplitLeak, match="patient mias/pk1 spans splits"):
        check_no_leak(_with(images, splits), [])
    other = [ImageMeta("cbis-0", "cbis_ddsm", "pkX", "benign", "test")]
    with pytest.raises(SplitLeak, match="linked group"):
        check_no_leak(
            [*_with(images, {i.image_id: "train" for i in images}), *other], [("mias-0-0", "cbis-0")]
        )


def test_a_new_link_between_groups_already_split_apart_is_refused() -> None:
    images = [
        ImageMeta("a", "ddsm", "p1", "benign", "train"),
        ImageMeta("b", "cbis_ddsm", "p2", "benign", "test"),
    ]
    with pytest.raises(SplitLeak, match="already spans"):
        assign_splits(images, [("a", "b")], FRACTIONS, seed=0)


def test_links_join_only_near_identical_hashes_across_collections() -> None:
    base = 0x0F0F_1234_ABCD_5678
    images = [
        HashedImage("ddsm-1", "ddsm", base),
        HashedImage("cbis-1", "cbis_ddsm", base ^ 0b101),  # 2 bits apart: the same film
        HashedImage("cbis-2", "cbis_ddsm", base ^ 0xFFFF_FFFF),  # 32 bits apart: another film
        HashedImage("ddsm-2", "ddsm", base ^ 0b1),  # same collection: patients already group these
        HashedImage("mias-1", "mias", -1),  # negative (signed int64) hashes work too
        HashedImage("cbis-mlo", "cbis_ddsm", base, view="MLO"),  # same hash, other view: not a re-release
        HashedImage("ddsm-cc", "ddsm", base ^ 0b11, view="CC"),
    ]
    links = find_links(images, max_hamming=6)
    assert ("cbis-mlo", "ddsm-cc") not in links
    assert [pair for pair in links if "cbis-mlo" not in pair and "ddsm-cc" not in pair] == [
        ("cbis-1", "ddsm-1"),
        ("cbis-1", "ddsm-2"),
    ]
    assert hamming(-1, 0) == 64


def test_an_official_division_is_honoured_and_the_patient_still_wins() -> None:
    fractions = {"train": 0.55, "val": 0.2, "test": 0.25}
    images = []
    for p in range(40):
        division = "test" if p % 5 == 0 else "training"
        images.append(
            ImageMeta(f"c-{p}", "cbis_ddsm", f"p{p}", "benign" if p % 2 else "malignant", official=division)
        )
    # p1 also has an abnormality filed under the official test set: the patient goes to test whole.
    images.append(ImageMeta("c-1-calc", "cbis_ddsm", "p1", "benign", official="test"))
    # A DDSM film that CBIS-DDSM p5 (official test) re-releases: linked, so it follows to test.
    images.append(ImageMeta("d-5", "ddsm", "case5", "benign"))
    splits = assign_splits(images, [("d-5", "c-5")], fractions, 0, frozenset({"cbis_ddsm"}))
    tested = {i.image_id for i in images if i.official == "test"}
    assert all(splits[i] == "test" for i in tested)  # every official test image is in test
    assert splits["c-1"] == "test" and splits["d-5"] == "test"  # moved with their group
    rest = [splits[i.image_id] for i in images if i.patient_key not in {"p1"} and i.official == "training"]
    assert set(rest) == {"train", "val"}  # the official training set is dealt between train and val
    placed = [
        ImageMeta(i.image_id, i.collection, i.patient_key, i.label, splits[i.image_id], i.official)
        for i in images
    ]
    assert moved_by_official(placed, frozenset({"cbis_ddsm"})) == {"cbis_ddsm": 1}  # c-1
    check_no_leak(placed, [("d-5", "c-5")])
    # Without the strategy the division is ignored: dealt by stratum as before.
    plain = assign_splits(images, [("d-5", "c-5")], fractions, 0)
    assert any(plain[i] != "test" for i in tested)
