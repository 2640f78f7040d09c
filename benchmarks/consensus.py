"""Dawid–Skene at scale: the Spark fit against crowd-kit's on the same reports, and Spark at 4x the reports.

    .venv/bin/python benchmarks/consensus.py [--reports 1000000] [--scale 4] [--readers 200] [--cores 2]
        [--tolerance 1e-5] [--max-iterations 100] [--seed 0]

Data. A crowd of ``--readers`` readers in the default crowd's proportions (:func:`synth.crowd.default_crowd`:
3 experts, 6 average readers, 2 spammers and 1 reader biased toward malignant in 12; its confusion matrices
over normal / benign / malignant) reads synthetic mammograms whose true classes are drawn with shares
0.5 / 0.3 / 0.2. Each image is read by 3 to 7 distinct readers drawn at random, each answering from their
confusion row for the true class: :func:`synth.crowd.simulate`'s model, drawn here with numpy in blocks
of images rather than one Python object per reading. ``--reports`` / 5 images (5 reads on average) make
the 1x data; ``--scale`` times as many images, read by the same crowd, the larger data, of which the 1x
data is the first part. The reports (``image_id, reporter, label`` strings) are written as Parquet files
with pyarrow into a temporary folder. Generating them is not timed.

Fits, in one run, with the same iteration limit and tolerance (crowd-kit's ``n_iter`` and ``tol``; both
start from the majority vote and stop on the same rule, see :mod:`pipelines.consensus`):

``crowd-kit``
    ``crowdkit.aggregation.DawidSkene.fit_predict_proba`` on the 1x reports read into a pandas frame
    (``task, worker, label``), in this process (pandas: one core, whatever ``--cores``). Timed from the
    call to its return; reading the frame is not timed.
``spark 1x`` and ``spark Nx``
    :func:`pipelines.consensus.dawid_skene` (what ``oncolake consensus`` runs) on ``spark.read.parquet`` of
    the files, on ``local[cores]`` with the local profile's settings (:func:`jobs.session.build_spark`).
    Each in a fresh child process, so each has its own JVM and the driver's memory of one run is not the
    heap another left grown. First an untimed warm-up (a fit of 2 iterations on the first 20,000
    reports: the JVM's first query plans, code generation and JIT, tens of seconds that a job pays once
    whatever its size); then the fit, timed from the call to its return: its first job reads the Parquet
    files, and the posteriors are materialised before it returns. The session's start is not timed.

Figures. Wall-clock seconds per fit, EM iterations, seconds per iteration (fit time / iterations, so
the fixed cost of a fit, its first job and the last E-step, is spread over the iterations); the ratio
Spark Nx / Spark 1x (target at 4x: at most 4.5) and crowd-kit 1x / Spark 1x; the largest difference
between Spark's and crowd-kit's posteriors on the 1x data (target < 1e-3) and the accuracy against the
truth of the majority vote (ties to the first class, normal), of Spark's and of crowd-kit's Dawid–Skene.
Memory: the driver JVM's peak resident memory (RSS; sampled with :class:`common.PeakMemory` every 0.2 s
during the fit; on ``local[*]`` it is the only JVM, executor included, so it also holds the reports'
checkpoint and the shuffles) for 1x and Nx and their ratio (target: flat), and the peak RSS of each
Python process during its fit (the Spark drivers' and crowd-kit's), sampled the same way.

The last line is one JSON object. Machines are noisy: run it on a quiet one, and read the ratios.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from common import PeakMemory, is_jvm

from synth.crowd import default_crowd

CLASSES = ("normal", "benign", "malignant")
SHARES = (0.5, 0.3, 0.2)
READS = (3, 7)
MB = 2**20
WARM_UP_REPORTS = 20_000
"""The Spark fits' untimed warm-up: a fit of 2 iterations on this many of the reports."""


# --- Data ----------------------------------------------------------------------------------------------


def crowd_matrices(readers: int, seed: int) -> tuple[list[str], list[str], np.ndarray]:
    """``readers`` readers in the default crowd's proportions: ids, kinds and their confusion matrices as
    one array ``[reader, true class, label said]`` (rows normalised), in :data:`CLASSES` order."""
    experts, spammers, biased = round(readers * 3 / 12), round(readers * 2 / 12), max(1, round(readers / 12))
    average = readers - experts - spammers - biased
    crowd = default_crowd(
        seed, experts=experts, average=average, spammers=spammers, biased=biased, label_sets=(CLASSES,)
    )
    matrices = np.array([[[r.matrix(CLASSES)[t][s] for s in CLASSES] for t in CLASSES] for r in crowd])
    matrices /= matrices.sum(axis=2, keepdims=True)
    return [r.reader_id for r in crowd], [r.kind for r in crowd], matrices


def draw_block(
    rng: np.random.Generator, first: int, images: int, cumulative: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Reports on images ``first`` .. ``first + images - 1``: each read by 3-7 distinct readers drawn at
    random, each answering from their confusion row for the true class.

    Returns:
        The images' true classes, and per report the image number, reader index and label index.
    """
    readers, k = cumulative.shape[0], cumulative.shape[2]
    low, high = READS[0], min(READS[1], readers)
    truth = rng.choice(k, size=images, p=SHARES)
    reads = rng.integers(low, high + 1, size=images)
    keys = rng.random((images, readers), dtype=np.float32)
    # The ``high`` readers of smallest key, in key order: the first ``reads`` are a uniform draw of distinct
    # readers.
    top = np.argpartition(keys, high - 1, axis=1)[:, :high]
    top = np.take_along_axis(top, np.argsort(np.take_along_axis(keys, top, axis=1), axis=1), axis=1)
    reader = top[np.arange(high)[None, :] < reads[:, None]]  # row-major: image by image
    image = np.repeat(np.arange(first, first + images), reads)
    rows = cumulative[reader, np.repeat(truth, reads)]  # each report's cumulative confusion row
    said = np.minimum((rng.random(len(reader))[:, None] > rows).sum(axis=1), k - 1)
    return truth, image, reader, said


def image_name(number: int) -> str:
    return f"img-{number:09d}"


def write_reports(
    folder: Path, images: int, scale: int, reader_ids: list[str], matrices: np.ndarray, seed: int
) -> tuple[list[Path], np.ndarray, np.ndarray, list[int]]:
    """``scale`` parts of ``images`` images each, as Parquet files (``image_id, reporter, label``) under
    ``folder/part-<i>``; the 1x data is part 0.

    Returns:
        The parts' folders, the 1x images' true classes and their majority-vote counts ``[image, class]``,
        and the reports per part.
    """
    rng = np.random.default_rng(seed + 1)
    cumulative = np.cumsum(matrices, axis=2)
    block = max(1_000, 10_000_000 // len(reader_ids))  # the random keys of a block: ~40 MB
    readers_arrow, labels_arrow = pa.array(reader_ids), pa.array(CLASSES)
    truth_1x = np.zeros(images, dtype=np.int8)
    votes_1x = np.zeros((images, len(CLASSES)), dtype=np.int32)
    parts, reports = [], []
    for part in range(scale):
        path = folder / f"part-{part}"
        path.mkdir(parents=True)
        parts.append(path)
        reports.append(0)
        for start in range(0, images, block):
            count = min(block, images - start)
            first = part * images + start
            truth, image, reader, said = draw_block(rng, first, count, cumulative)
            names = pa.array([image_name(i) for i in range(first, first + count)])
            table = pa.table(
                {
                    "image_id": names.take(pa.array(image - first)),
                    "reporter": readers_arrow.take(pa.array(reader)),
                    "label": labels_arrow.take(pa.array(said)),
                }
            )
            pq.write_table(table, path / f"reports-{start // block:05d}.parquet")
            reports[-1] += len(image)
            if part == 0:
                truth_1x[start : start + count] = truth
                np.add.at(votes_1x, (image, said), 1)  # part 0: image numbers from 0
    return parts, truth_1x, votes_1x, reports


# --- Measuring ----------------------------------------------------------------------------------------


class OwnPeak:
    """The peak RSS of this process while the block runs, sampled every ``every`` seconds."""

    def __init__(self, every: float = 0.2) -> None:
        self.peak = 0
        self._every, self._stop = every, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._process = psutil.Process()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(self._every)

    def __enter__(self) -> OwnPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def index_of(image_ids: pd.Index) -> np.ndarray:
    """Image numbers from ``img-<number>`` ids."""
    return image_ids.str.slice(4).astype(np.int64).to_numpy()


def accuracy(posteriors: pd.DataFrame, truth: np.ndarray) -> float:
    """Share of images whose most probable class (columns in :data:`CLASSES` order) is the true one."""
    return float(np.mean(posteriors.to_numpy().argmax(axis=1) == truth[index_of(posteriors.index)]))


def crowdkit_fit(folder: Path, max_iterations: int, tolerance: float) -> dict:
    from crowdkit.aggregation import DawidSkene

    data = pq.read_table(folder).to_pandas()
    data = data.rename(columns={"image_id": "task", "reporter": "worker"})[["task", "worker", "label"]]
    model = DawidSkene(n_iter=max_iterations, tol=tolerance)
    with OwnPeak() as own:
        started = time.perf_counter()
        probas = model.fit_predict_proba(data)
        seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "iterations": len(model.loss_history_),
        "elbo": float(model.loss_history_[-1]),
        "python_peak_rss": own.peak,
        "posteriors": probas[list(CLASSES)],
    }


def spark_fit(args: argparse.Namespace) -> None:
    """The child process: one Spark fit, its figures written as JSON to ``args.result``."""
    from conf import load_settings
    from jobs.session import build_spark
    from pipelines.consensus import dawid_skene, posterior_column

    work = Path(args.result).parent
    overrides = [f"spark.master=local[{args.cores}]", f"lakehouse.root={work / 'lake'}"]
    spark = build_spark(load_settings("local", overrides), "bench-consensus")
    try:
        reports = spark.read.parquet(*args.spark_run)
        started = time.perf_counter()  # untimed warm-up: the JVM's first plans, code generation and JIT
        dawid_skene(reports.limit(WARM_UP_REPORTS), CLASSES, 2, args.tolerance)
        warm_up = time.perf_counter() - started
        with PeakMemory({"jvm": is_jvm}, every=0.2) as jvm, OwnPeak() as own:
            before = jvm_rss()
            started = time.perf_counter()
            fitted = dawid_skene(reports, CLASSES, args.max_iterations, args.tolerance)
            seconds = time.perf_counter() - started
        result = {
            "seconds": seconds,
            "warm_up_seconds": warm_up,
            "iterations": fitted.iterations,
            "converged": fitted.converged,
            "elbo": fitted.elbo[-1] if fitted.elbo else None,
            "reports": sum(fitted.reports_per_reader.values()),
            "driver_jvm_rss_before": before,
            "driver_jvm_peak_rss": jvm.peak["jvm"],
            "python_peak_rss": own.peak,
        }
        if args.posteriors:
            columns = ["image_id", *(posterior_column(k) for k in CLASSES)]
            fitted.posteriors.select(*columns).write.parquet(args.posteriors)
    finally:
        spark.stop()
    Path(args.result).write_text(json.dumps(result))


def jvm_rss() -> int:
    """The RSS of this process's JVM children now."""
    total = 0
    for process in psutil.Process().children(recursive=True):
        try:
            if is_jvm(" ".join(process.cmdline())):
                total += process.memory_info().rss
        except psutil.Error:
            continue
    return total


def run_spark(
    folders: list[Path], work: Path, name: str, args: argparse.Namespace, posteriors: Path | None = None
) -> dict:
    """One Spark fit in a fresh child process (and JVM); its figures."""
    result = work / f"{name}.json"
    command = [sys.executable, __file__, "--spark-run", *map(str, folders), "--result", str(result)]
    command += ["--cores", str(args.cores), "--max-iterations", str(args.max_iterations)]
    command += ["--tolerance", repr(args.tolerance)]
    if posteriors is not None:
        command += ["--posteriors", str(posteriors)]
    subprocess.run(command, check=True)
    return json.loads(result.read_text())


def spark_posteriors(path: Path) -> pd.DataFrame:
    frame = pq.read_table(path).to_pandas().set_index("image_id")
    return frame.rename(columns=lambda c: c.removeprefix("p_"))[list(CLASSES)]


# --- The run --------------------------------------------------------------------------------------------


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--reports", type=int, default=1_000_000, help="reports of the 1x data (about)")
    parser.add_argument("--scale", type=int, default=4, help="the larger data: this many times the images")
    parser.add_argument("--readers", type=int, default=200, help="readers in the crowd")
    parser.add_argument("--cores", type=int, default=2, help="Spark's local[cores]")
    parser.add_argument("--tolerance", type=float, default=1e-5, help="EM stops below this ELBO gain")
    parser.add_argument("--max-iterations", type=int, default=100, help="EM iterations at most")
    parser.add_argument("--seed", type=int, default=0, help="the crowd's and the reports' draw")
    parser.add_argument("--spark-run", nargs="+", help=argparse.SUPPRESS)  # the child: these folders
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--posteriors", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.spark_run:
        spark_fit(args)
        return
    if args.readers < READS[1]:
        parser.error(f"--readers must be at least {READS[1]} (each image is read by up to {READS[1]})")
    if args.scale < 2:
        parser.error("--scale must be at least 2")

    work = Path(tempfile.mkdtemp(prefix="oncolake-bench-consensus-"))
    try:
        started = time.perf_counter()
        reader_ids, kinds, matrices = crowd_matrices(args.readers, args.seed)
        images = max(1, round(args.reports / np.mean(READS)))
        parts, truth, votes, reports = write_reports(
            work / "reports", images, args.scale, reader_ids, matrices, args.seed
        )
        reports_nx = sum(reports)
        mix = {kind: kinds.count(kind) for kind in dict.fromkeys(kinds)}
        print(
            f"data: {args.readers} readers {mix}; 1x {images:,} images, {reports[0]:,} reports; "
            f"{args.scale}x {images * args.scale:,} images, {reports_nx:,} reports; "
            f"written in {time.perf_counter() - started:.0f} s",
            flush=True,
        )

        print("crowd-kit 1x ...", flush=True)
        theirs = crowdkit_fit(parts[0], args.max_iterations, args.tolerance)
        print(f"crowd-kit 1x: {theirs['seconds']:.1f} s, {theirs['iterations']} iterations", flush=True)
        fits = {}
        for name, folders in (("1x", parts[:1]), (f"{args.scale}x", parts)):
            print(f"spark {name} ...", flush=True)
            posteriors = work / "posteriors-1x" if name == "1x" else None
            fits[name] = run_spark(folders, work, f"spark-{name}", args, posteriors)
            print(
                f"spark {name}: {fits[name]['seconds']:.1f} s, {fits[name]['iterations']} iterations",
                flush=True,
            )
        ours = spark_posteriors(work / "posteriors-1x")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    scale = f"{args.scale}x"
    small, large = fits["1x"], fits[scale]
    aligned = ours.loc[theirs["posteriors"].index]
    difference = float(np.abs(aligned.to_numpy() - theirs["posteriors"].to_numpy()).max())
    vote = float(np.mean(votes.argmax(axis=1) == truth))
    per_iteration = {
        "spark_1x": small["seconds"] / small["iterations"],
        f"spark_{args.scale}x": large["seconds"] / large["iterations"],
        "crowdkit_1x": theirs["seconds"] / theirs["iterations"],
    }
    result = {
        "reports_1x": reports[0],
        f"reports_{args.scale}x": reports_nx,
        "images": images,
        f"images_{args.scale}x": images * args.scale,
        "readers": args.readers,
        "cores": args.cores,
        "tolerance": args.tolerance,
        "max_iterations": args.max_iterations,
        "spark_1x_s": round(small["seconds"], 2),
        f"spark_{args.scale}x_s": round(large["seconds"], 2),
        f"ratio_{args.scale}x_vs_1x": round(large["seconds"] / small["seconds"], 3),
        f"ratio_{args.scale}x_vs_1x_per_iteration": round(
            per_iteration[f"spark_{args.scale}x"] / per_iteration["spark_1x"], 3
        ),
        "spark_warm_up_s": {
            "1x": round(small["warm_up_seconds"], 1),
            scale: round(large["warm_up_seconds"], 1),
        },
        "crowdkit_1x_s": round(theirs["seconds"], 2),
        "spark_vs_crowdkit": round(theirs["seconds"] / small["seconds"], 3),
        "spark_vs_crowdkit_per_iteration": round(per_iteration["crowdkit_1x"] / per_iteration["spark_1x"], 3),
        "iterations": {
            "spark_1x": small["iterations"],
            f"spark_{args.scale}x": large["iterations"],
            "crowdkit_1x": theirs["iterations"],
        },
        "converged": {"spark_1x": small["converged"], f"spark_{args.scale}x": large["converged"]},
        "seconds_per_iteration": {k: round(v, 3) for k, v in per_iteration.items()},
        "max_posterior_difference": difference,
        "posteriors_agree_1e-3": difference < 1e-3,
        "elbo_difference_1x": abs(small["elbo"] - theirs["elbo"]) if small["elbo"] is not None else None,
        "accuracy_1x": {
            "majority_vote": round(vote, 4),
            "ds_spark": round(accuracy(aligned, truth), 4),
            "ds_crowdkit": round(accuracy(theirs["posteriors"], truth), 4),
        },
        "driver_jvm_peak_rss_mb": {
            "1x": round(small["driver_jvm_peak_rss"] / MB),
            f"{args.scale}x": round(large["driver_jvm_peak_rss"] / MB),
        },
        "driver_jvm_rss_before_fit_mb": {
            "1x": round(small["driver_jvm_rss_before"] / MB),
            f"{args.scale}x": round(large["driver_jvm_rss_before"] / MB),
        },
        f"driver_jvm_peak_ratio_{args.scale}x_vs_1x": round(
            large["driver_jvm_peak_rss"] / max(small["driver_jvm_peak_rss"], 1), 3
        ),
        "python_peak_rss_mb": {
            "spark_driver_1x": round(small["python_peak_rss"] / MB),
            f"spark_driver_{args.scale}x": round(large["python_peak_rss"] / MB),
            "crowdkit_1x": round(theirs["python_peak_rss"] / MB),
        },
    }

    print()
    print(
        f"{'fit':14} {'reports':>11} {'seconds':>9} {'iterations':>10} {'s/iteration':>11} {'peak RSS':>16}"
    )
    rows = (
        ("crowd-kit 1x", reports[0], theirs, "python", theirs["python_peak_rss"]),
        ("spark 1x", reports[0], small, "JVM", small["driver_jvm_peak_rss"]),
        (f"spark {scale}", reports_nx, large, "JVM", large["driver_jvm_peak_rss"]),
    )
    for name, count, fit, what, rss in rows:
        print(
            f"{name:14} {count:>11,} {fit['seconds']:>9.1f} {fit['iterations']:>10} "
            f"{fit['seconds'] / fit['iterations']:>11.3f} {what:>7} {rss / MB:>5.0f} MB"
        )
    print()
    print(
        f"spark {scale} / spark 1x: {result[f'ratio_{scale}_vs_1x']:.2f} (target <= 4.5); per iteration "
        f"{result[f'ratio_{scale}_vs_1x_per_iteration']:.2f}"
    )
    print(
        f"crowd-kit / spark (1x): {result['spark_vs_crowdkit']:.2f}; per iteration "
        f"{result['spark_vs_crowdkit_per_iteration']:.2f}"
    )
    print(
        f"driver JVM peak RSS {scale} / 1x: {result[f'driver_jvm_peak_ratio_{scale}_vs_1x']:.2f} "
        "(target: flat)"
    )
    print(f"max |posterior spark - crowd-kit| (1x): {difference:.2e} (target < 1e-3)")
    print(
        "accuracy (1x): majority vote {majority_vote:.4f}, DS spark {ds_spark:.4f}, "
        "DS crowd-kit {ds_crowdkit:.4f}".format(**result["accuracy_1x"])
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
