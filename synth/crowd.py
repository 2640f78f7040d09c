"""A synthetic crowd of readers with known confusion matrices, and the reports they send.

The default crowd (:func:`default_crowd`) is 12 readers: 3 experts (about 0.92 correct), 6 average
readers (about 0.72), 2 near-random spammers (answers drawn without looking) and 1 reader biased toward
"malignant". Each image is read by 3 to 7 of them (:func:`simulate`). Because every reader's confusion
matrix is known, the figures of an aggregation can be checked against the truth and against the
Bayes-optimal posterior (:func:`bayes_posteriors`), which knows the matrices and the class priors.

A confusion matrix here is ``{true: {said: probability}}``; each row sums to 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Confusion = dict[str, dict[str, float]]


@dataclass(frozen=True)
class Reader:
    """One reader: an id in the sender's system, a kind, and a confusion matrix per label set."""

    reader_id: str
    kind: str  # expert | average | spammer | biased
    confusion: Mapping[tuple[str, ...], Confusion]

    def matrix(self, classes: Sequence[str]) -> Confusion:
        return dict(self.confusion[tuple(classes)])


def _noisy_diagonal(classes: Sequence[str], accuracy: float, rng: np.random.Generator) -> Confusion:
    """Rows with about ``accuracy`` on the diagonal and the rest spread unevenly over the other labels."""
    matrix: Confusion = {}
    for true in classes:
        correct = float(np.clip(accuracy + rng.normal(0, 0.03), 0.05, 0.99))
        others = [c for c in classes if c != true]
        spread = rng.dirichlet(np.full(len(others), 4.0)) * (1 - correct)
        matrix[true] = {true: correct, **{c: float(s) for c, s in zip(others, spread, strict=True)}}
    return matrix


def _spammer(classes: Sequence[str], rng: np.random.Generator) -> Confusion:
    """The same answer distribution whatever the image: an accuracy at chance."""
    answers = rng.dirichlet(np.full(len(classes), 20.0))
    return {true: {c: float(a) for c, a in zip(classes, answers, strict=True)} for true in classes}


def _biased(classes: Sequence[str], toward: str, rng: np.random.Generator) -> Confusion:
    """A fair reader (about 0.8) who moves 40 % of every other answer to ``toward``."""
    matrix = _noisy_diagonal(classes, 0.8, rng)
    for true, row in matrix.items():
        if true == toward:
            continue
        moved = {c: p * 0.4 for c, p in row.items() if c != toward}
        matrix[true] = {c: (p - moved.get(c, 0.0)) for c, p in row.items()}
        matrix[true][toward] = row[toward] + sum(moved.values())
    return matrix


LABEL_SETS: tuple[tuple[str, ...], ...] = (("normal", "benign", "malignant"), ("benign", "malignant"))
"""Mammography's labels and histology's (which has no normal class)."""


def default_crowd(
    seed: int = 0,
    *,
    experts: int = 3,
    average: int = 6,
    spammers: int = 2,
    biased: int = 1,
    label_sets: Sequence[tuple[str, ...]] = LABEL_SETS,
) -> list[Reader]:
    """The default crowd (module docstring), deterministic for a seed."""
    rng = np.random.default_rng(seed)
    kinds = ["expert"] * experts + ["average"] * average + ["spammer"] * spammers + ["biased"] * biased
    readers = []
    for number, kind in enumerate(kinds, start=1):
        confusion: dict[tuple[str, ...], Confusion] = {}
        for classes in label_sets:
            if kind == "expert":
                confusion[classes] = _noisy_diagonal(classes, 0.92, rng)
            elif kind == "average":
                confusion[classes] = _noisy_diagonal(classes, 0.72, rng)
            elif kind == "spammer":
                confusion[classes] = _spammer(classes, rng)
            else:
                confusion[classes] = _biased(classes, "malignant", rng)
        readers.append(Reader(f"reader-{number:02d}", kind, confusion))
    return readers


@dataclass(frozen=True)
class Reading:
    """One reader's answer on one image."""

    image: str
    reader_id: str
    label: str


def simulate(
    truth: Mapping[str, str],
    classes: Sequence[str],
    readers: Sequence[Reader],
    seed: int = 0,
    reads: tuple[int, int] = (3, 7),
) -> list[Reading]:
    """Each image read by ``reads[0]``..``reads[1]`` distinct readers, each answering from their matrix.

    Args:
        truth: image key -> true label (among ``classes``).
        classes: the label set of these images.
        readers: the crowd.
        seed: the draw.
        reads: the fewest and most readers per image (inclusive).
    """
    rng = np.random.default_rng(seed)
    readings = []
    low, high = reads[0], min(reads[1], len(readers))
    for image in sorted(truth):
        chosen = rng.choice(len(readers), size=int(rng.integers(low, high + 1)), replace=False)
        for index in sorted(chosen):
            row = readers[index].matrix(classes)[truth[image]]
            said = str(rng.choice(list(classes), p=np.array([row[c] for c in classes]) / sum(row.values())))
            readings.append(Reading(image, readers[index].reader_id, said))
    return readings


def bayes_posteriors(
    readings: Sequence[Reading],
    classes: Sequence[str],
    readers: Sequence[Reader],
    priors: Mapping[str, float],
) -> dict[str, dict[str, float]]:
    """The posterior of each image's label given the true matrices and priors: the best any aggregation
    of these readings can do."""
    matrices = {r.reader_id: r.matrix(classes) for r in readers}
    log_post: dict[str, np.ndarray] = {}
    log_prior = np.log(np.array([max(priors[c], 1e-12) for c in classes]))
    for reading in readings:
        terms = np.log([max(matrices[reading.reader_id][true][reading.label], 1e-12) for true in classes])
        log_post[reading.image] = log_post.get(reading.image, log_prior.copy()) + terms
    out = {}
    for image, values in log_post.items():
        weights = np.exp(values - values.max())
        weights /= weights.sum()
        out[image] = {c: float(w) for c, w in zip(classes, weights, strict=True)}
    return out
